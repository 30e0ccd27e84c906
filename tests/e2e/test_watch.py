"""scripts/watch against the fan-out job on the standalone cluster: one real frame."""

from __future__ import annotations

import re
import time

import pytest

from ops import submit as ops_submit
from ops import watch
from ops.kafka_io import consume_all, produce
from udfs.generator import generate_events

pytestmark = pytest.mark.e2e


def _largest_count(frame: str) -> int:
    """The largest records total (last two columns of a vertex row) or notify counter in a frame."""
    lines = frame.splitlines()
    rules = [i for i, line in enumerate(lines) if line and set(line) == {"-"}]
    counts = []
    for line in lines[rules[0] + 1 : rules[1]]:
        if line.startswith("    "):  # "notify: name value  name value", continued without "notify:"
            pairs = line.split()[1:] if line.split()[0] == "notify:" else line.split()
            counts += pairs[1::2]
        else:
            counts += line.split()[-2:]
    return max((int(c.replace(",", "")) for c in counts if c[0].isdigit()), default=0)


def _counts_shown(frame: str) -> bool:
    return _largest_count(frame) > 0 and re.search(r"events_in [1-9]", frame) is not None


def test_watch_frame_shows_the_fanout_vertices_with_counts(kafka, topic, flink_cluster):
    names = {k: topic(k) for k in ("events", "rules", "outcomes", "dlq", "metrics")}
    prefix = topic("ch")
    kafka.create_topics([f"{prefix}.{ch}" for ch in ("email", "sms", "push")])
    sets = (
        f"kafka.bootstrap={kafka.bootstrap}",
        f"kafka.group_id=g-{names['events']}",
        f"kafka.transactional_id_prefix=tx-{names['events']}",
        *(f"topics.{k}={v}" for k, v in names.items()),
        f"topics.channel_prefix={prefix}.",
        "job.checkpoint_interval_ms=500",
    )
    done = ops_submit.submit(flink_cluster, "fanout", parallelism=1, name="watch-test", sets=sets)
    try:
        ops_submit.wait_state(flink_cluster, done.job_id, {"RUNNING"})
        now = int(time.time() * 1000)
        events = list(generate_events(300, seed=11, rate_per_s=100, start_ms=now - 3000, late_rate=0.0))
        produce(kafka.bootstrap, names["events"], events)
        assert consume_all(kafka.bootstrap, names["outcomes"], expect=1, timeout_s=90), "no outcome arrived"

        # The JobManager refreshes its metric store every few seconds, and one refresh can carry
        # the fan-in's counters before the route's (CI saw outcomes 217 next to events_in 0):
        # poll until every count this test asserts on has shown up.
        deadline = time.monotonic() + 60
        frame = watch.frame(flink_cluster, done.job_id)
        while time.monotonic() < deadline and not _counts_shown(frame):
            time.sleep(2)
            frame = watch.frame(flink_cluster, done.job_id)

        assert frame.startswith("watch-test  RUNNING  up ")
        assert done.job_id in frame.splitlines()[0]
        for vertex in ("route: validate + decide + plan", "deliver-email", "fan-in"):
            assert vertex in frame, frame
        assert _largest_count(frame) > 0, frame
        assert re.search(r"events_in [1-9]", frame), frame
    finally:
        ops_submit.cancel(flink_cluster, done.job_id)
    assert ops_submit.wait_state(flink_cluster, done.job_id, {"CANCELED"}) == "CANCELED"
