"""A tiny smoke run of the benchmark harness's pure-Python parts (no JVM, no Kafka).

`scripts/bench micro` drives the operators' functions on generated window batches, and the
process-tree accounting counts process mode's Python workers (great-grandchildren of the
TaskManager). The benchmarks themselves are scripts, not tests: nothing here times anything.
"""

from __future__ import annotations

import subprocess
import time

from ops import micro
from ops.benchrun import _cpu_ticks_since, _descendants, _tree_cpu_ticks


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
