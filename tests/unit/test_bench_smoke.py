"""A tiny smoke run of the benchmark harness's pure-Python parts (no JVM, no Kafka).

`scripts/bench micro` drives the operators' functions on generated window batches, and the
process-tree accounting counts process mode's Python workers (great-grandchildren of the
TaskManager). The benchmarks themselves are scripts, not tests: nothing here times anything.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from ops import micro
from ops.benchrun import (
    _cpu_ticks_since,
    _descendants,
    _tree_cpu_ticks,
    checkpoint_share,
    cpu_split,
    parse_proc_stat_cpu,
)


def test_micro_runs_every_stage_over_every_event():
    report = micro.run(events=600, window=100, profile=False)
    assert report["events"] == 600 and report["windows"] >= 6
    stages = report["us_per_event"]
    for name in ("router: route_batch", "branch: request JSON", "fan-in: results", "fan-in: outcome JSON"):
        assert stages[name] > 0, name
    assert report["us_per_event_total"] > 0


def test_process_tree_includes_grandchildren_and_their_cpu(tmp_path):
    # bash -> bash -> python (busy for 0.5 s of CPU), like TaskManager -> runner -> worker
    busy = tmp_path / "busy.py"
    busy.write_text("import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5:\n    pass\n")
    tree = subprocess.Popen(["bash", "-c", f"bash -c 'python3 {busy}; true'; true"])
    try:
        deadline = time.monotonic() + 10
        while len(_descendants(tree.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        before = _tree_cpu_ticks(tree.pid)
        assert len(before) >= 3  # the root and at least two levels below it
        time.sleep(0.3)
        assert _cpu_ticks_since(before, tree.pid) > 0  # the busy grandchild's CPU is counted
    finally:
        tree.wait(timeout=10)


def test_proc_stat_parse_counts_steal_as_busy_and_iowait_as_idle():
    text = "cpu  100 5 20 1000 7 1 2 30 0 0\ncpu0 50 0 10 500 3 0 1 15 0 0\nintr 1 2 3\n"
    assert parse_proc_stat_cpu(text) == {"busy": 158, "idle": 1007, "steal": 30}
    with pytest.raises(ValueError):
        parse_proc_stat_cpu("intr 1 2 3\n")


def test_cpu_split_per_role_machine_and_the_rest():
    # 10 s at 100 ticks/s: the TaskManager tree used 12 s of CPU (a worker started meanwhile
    # counts from 0), Kafka 3 s, the machine 19 s: 1.9 cores, 0.4 of them outside the roles
    before = {"taskmanager": {1: 1000, 2: 500}, "kafka": {3: 0}}
    after = {"taskmanager": {1: 1800, 2: 700, 4: 200}, "kafka": {3: 300}}
    split = cpu_split(before, after, {"busy": 0, "steal": 0}, {"busy": 1900, "steal": 50}, 10.0, 100)
    assert split["by_role"] == {"taskmanager": 1.2, "kafka": 0.3}
    assert split["machine"] == 1.9 and split["steal"] == 0.05
    assert split["other"] == 0.4
    assert cpu_split(before, after, {"busy": 0, "steal": 0}, {"busy": 0, "steal": 0}, 0.0, 100) == {}


def test_checkpoint_share_is_time_in_progress_over_the_span():
    history = [
        {"status": "COMPLETED", "trigger_timestamp": 10_000, "end_to_end_duration": 3_000},
        {"status": "IN_PROGRESS", "trigger_timestamp": 16_000, "end_to_end_duration": 100},
        {"status": "COMPLETED", "trigger_timestamp": 13_500, "end_to_end_duration": 4_500},
        {"status": "FAILED", "trigger_timestamp": 19_000, "end_to_end_duration": 900},
    ]
    # 3 s + 4.5 s in progress over 10.0 .. 18.0 s
    assert checkpoint_share(history) == 0.94
    assert checkpoint_share(history[:1]) is None
