"""Operating the fan-out job on the standalone cluster: submit, watch (REST), cancel."""

from __future__ import annotations

import time

import pytest

from ops import submit as ops_submit
from ops.kafka_io import consume_all, produce
from udfs.generator import generate_events

pytestmark = pytest.mark.e2e


def test_submit_watch_and_cancel_the_fanout_job(kafka, topic, flink_cluster):
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
    done = ops_submit.submit(flink_cluster, "fanout", parallelism=1, name="operate-test", sets=sets)
    try:
        assert done.ui_url.startswith(flink_cluster.rest_url) and done.job_id in done.ui_url
        assert ops_submit.wait_state(flink_cluster, done.job_id, {"RUNNING"}) == "RUNNING"
        assert any(
            j["jid"] == done.job_id and j["name"] == "operate-test" for j in ops_submit.jobs(flink_cluster)
        )

        now = int(time.time() * 1000)
        events = list(generate_events(300, seed=9, rate_per_s=100, start_ms=now - 3000, late_rate=0.0))
        produce(kafka.bootstrap, names["events"], events)
        assert consume_all(kafka.bootstrap, names["outcomes"], expect=1, timeout_s=90), "no outcome arrived"

        status = ops_submit.status(flink_cluster, done.job_id)
        vertex_names = " | ".join(v["name"] for v in status["vertices"])
        for expected in (
            "route: validate + decide + plan",
            "deliver-email",
            "deliver-sms",
            "deliver-push",
            "fan-in",
        ):
            assert expected in vertex_names
        deadline = time.monotonic() + 30
        counted: dict[str, float] = {}
        while time.monotonic() < deadline and not any(v > 0 for v in counted.values()):
            counted = ops_submit.vertex_metrics(flink_cluster, done.job_id, "notify.events_in")
            time.sleep(1)
        assert any("route" in name and value > 0 for name, value in counted.items()), counted
        delivered = ops_submit.vertex_metrics(flink_cluster, done.job_id, "notify.delivered")
        assert any("deliver-" in name and value > 0 for name, value in delivered.items()), delivered
        email = next(
            v for v in flink_cluster.rest(f"/jobs/{done.job_id}")["vertices"] if "deliver-email" in v["name"]
        )
        ids = {m["id"] for m in flink_cluster.rest(f"/jobs/{done.job_id}/vertices/{email['id']}/metrics")}
        for metric in ("notify.batch_size", "notify.latency_ms", "notify.batches", "notify.retries"):
            assert any(i.endswith(metric) for i in ids), (metric, sorted(ids)[:20])
    finally:
        ops_submit.cancel(flink_cluster, done.job_id)
    assert ops_submit.wait_state(flink_cluster, done.job_id, {"CANCELED"}) == "CANCELED"
