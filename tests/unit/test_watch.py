"""scripts/watch rendering: REST JSON in, text out; no JVM.

``data/watch_rest.json`` was recorded from the fan-out job on the local cluster (p=2, provider
delivery on, right after a savepoint upgrade) and trimmed to four vertices.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from ops.proc import StackError
from ops.watch import Snapshot, pick_job, render, wanted_metrics

RECORDED = json.loads((Path(__file__).parent / "data" / "watch_rest.json").read_text())
EMAIL = "46424e4bb81d162b1e296745b66ad7f8"
ROUTE = "2d12ff57fd639656c7bde047ec882b4f"


def snapshot(**changes: Any) -> Snapshot:
    data = copy.deepcopy(RECORDED)
    data.update(changes)
    return Snapshot(**data, rest_url="http://127.0.0.1:8081")


def row(text: str, vertex_prefix: str) -> str:
    """The columns after the vertex name, single-spaced."""
    line = next(line for line in text.splitlines() if line.startswith(vertex_prefix))
    return " ".join(line[56:].split())


def notify_lines(text: str, vertex_prefix: str) -> str:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(vertex_prefix)) + 1
    block = []
    for line in lines[start:]:
        if not line.startswith("    "):
            break
        block.append(line.strip())
    return " ".join(block)


def test_header_shows_job_state_uptime_and_the_last_checkpoint():
    text = render(snapshot())
    first, second, third = text.splitlines()[:3]
    assert first.startswith("notify-fanout  RUNNING  up 44.4 s  job c11f4d5fbbc89889898107bd5b747362")
    assert first.endswith("http://127.0.0.1:8081/#/job/running/c11f4d5fbbc89889898107bd5b747362/overview")
    # now 1795901798275 - latest_ack 1795901798079 = 196 ms; 609 ms end to end; 2355941 bytes
    assert second == (
        "checkpoints  18 completed, 2 failed, 0 in progress; last #56 196 ms ago, took 609 ms, 2.2 MiB"
    )
    assert third == "restored from file:/work/main/.run/flink/savepoints/savepoint-4a8f0b-4f8edf04808f"


def test_one_row_per_vertex_with_rates_load_and_totals():
    text = render(snapshot())
    # p, in/s (sum), out/s (sum), busy (max subtask), backpressure (max), records in, records out
    assert row(text, "Source: events_in[1] -> Calc[2]") == "2 106.7 106.7 13% 0% 7,002 7,002"
    assert row(text, "route: validate + decide + plan") == "2 21.8 65.2 29% 0% 1,156 3,362"
    assert row(text, "deliver-email") == "2 19.5 58.3 66% 0% 1,027 3,081"
    assert row(text, "fan-in: branch status per event") == "2 63.2 142.8 47% 0% 3,281 6,782"


def test_long_vertex_names_are_cut_so_the_table_stays_aligned():
    lines = render(snapshot()).splitlines()
    route = next(line for line in lines if line.startswith("route: "))
    assert route.startswith("route: validate + decide + plan -> (Map, Map, _stream_k…  ")
    header = next(line for line in lines if line.startswith("vertex "))
    assert len(route) == len(header)


def test_notify_counters_and_gauges_of_a_delivery_vertex():
    text = render(snapshot())
    email = notify_lines(text, "deliver-email")
    for expected in (
        "delivered 8,008",
        "dead_lettered 0",
        "retries 0",
        "breaker_state closed",
        "in_flight 0",
        "provider_calls 1,207",
    ):
        assert expected in email
    assert "events_in 9,227" in notify_lines(text, "route: ")
    assert notify_lines(text, "fan-in: ") == "notify: outcomes 9,125"
    assert notify_lines(text, "Source: events_in") == ""
    table_width = len(next(line for line in text.splitlines() if line.startswith("vertex ")))
    assert all(len(line) <= table_width for line in text.splitlines() if line.startswith("    "))


def test_an_open_breaker_on_one_subtask_shows_and_counters_sum_over_chained_operators():
    snap = snapshot()
    metrics = snap.metrics[EMAIL]
    for m in metrics:
        if m["id"] == "deliver-email.notify.breaker_state":
            m.update({"sum": 1.0, "max": 1.0})  # subtask 0 closed, subtask 1 open
        if m["id"] == "deliver-email.notify.in_flight":
            m.update({"sum": 12.0, "max": 8.0})
    metrics.append({"id": "kafka__email.notify.retries", "sum": 5.0, "max": 5.0})
    email = notify_lines(render(snap), "deliver-email")
    assert "breaker_state open" in email
    assert "in_flight 12" in email
    assert "retries 5" in email


def test_missing_metrics_and_no_checkpoint_yet_render_placeholders():
    no_checkpoint = {"counts": {"completed": 0, "failed": 0, "in_progress": 1}}
    text = render(snapshot(metrics={}, checkpoints=no_checkpoint))
    assert "checkpoints  0 completed, 0 failed, 1 in progress; none completed yet" in text
    assert "restored from" not in text
    assert row(text, "deliver-email") == "2 - - - - 1,027 3,081"


def test_nan_load_metrics_render_as_unknown():
    snap = snapshot()
    for m in snap.metrics[ROUTE]:
        if m["id"] == "busyTimeMsPerSecond":
            m["max"] = float("nan")
    assert row(render(snap), "route: ").split()[3] == "-"


def test_a_finished_job_says_rates_are_gone():
    job = copy.deepcopy(RECORDED["job"])
    job.update({"state": "CANCELED", "duration": 3_725_000})
    text = render(snapshot(job=job, metrics={}))
    assert "CANCELED  up 1h 02m" in text
    assert "/#/job/completed/c11f4d5fbbc89889898107bd5b747362/overview" in text
    assert text.endswith("job is CANCELED: per-second figures are only reported while it runs")


def test_the_most_recent_running_job_is_picked():
    overview = [
        {"jid": "old", "state": "RUNNING", "start-time": 1},
        {"jid": "newest-but-done", "state": "CANCELED", "start-time": 9},
        {"jid": "new", "state": "RUNNING", "start-time": 5},
    ]
    assert pick_job(overview) == "new"
    with pytest.raises(StackError, match="no RUNNING job"):
        pick_job([{"jid": "x", "state": "FINISHED", "start-time": 1}])


def test_only_rates_loads_and_notify_metrics_are_requested():
    available = [
        "numRecordsInPerSecond",
        "numRecordsIn",
        "busyTimeMsPerSecond",
        "backPressuredTimeMsPerSecond",
        "idleTimeMsPerSecond",
        "numRecordsOutPerSecond",
        "deliver-email.numRecordsInPerSecond",
        "deliver-email.notify.delivered",
        "route__validate_+_decide_+_plan.notify.events_in",
        "Shuffle.Netty.Input.Buffers.inPoolUsage",
    ]
    assert wanted_metrics(available) == [
        "numRecordsInPerSecond",
        "busyTimeMsPerSecond",
        "backPressuredTimeMsPerSecond",
        "numRecordsOutPerSecond",
        "deliver-email.notify.delivered",
        "route__validate_+_decide_+_plan.notify.events_in",
    ]
