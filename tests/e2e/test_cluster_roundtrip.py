"""The round-trip job submitted with `flink run -py` to a real standalone cluster."""

from __future__ import annotations

import json

import pytest

from ops.kafka_io import consume_all, produce
from ops.paths import ROOT

pytestmark = pytest.mark.e2e


def test_round_trip_via_flink_run(kafka, topic, flink_cluster):
    events, out = topic("events"), topic("roundtrip")
    n = 60
    produce(
        kafka.bootstrap,
        events,
        [json.dumps({"user_id": f"u-{i % 3}", "event_id": f"e-{i}"}).encode() for i in range(n)],
    )
    result = flink_cluster.run(
        "run",
        "-py",
        str(ROOT / "jobs" / "roundtrip.py"),
        "-pyfs",
        f"{ROOT / 'jobs'},{ROOT / 'udfs'}",
        "--set",
        f"kafka.bootstrap={kafka.bootstrap}",
        "--set",
        "kafka.bounded=true",
        "--set",
        f"kafka.group_id=g-{out}",
        "--set",
        f"kafka.transactional_id_prefix=tx-{out}",
        "--set",
        f"topics.events={events}",
        "--set",
        f"topics.roundtrip={out}",
        "--set",
        "job.parallelism=2",
        "--set",
        "job.checkpoint_interval_ms=500",
        timeout_s=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Job has been submitted with JobID" in result.stdout
    records = [json.loads(v) for v in consume_all(kafka.bootstrap, out, expect=n)]
    assert sorted(r["event_id"] for r in records) == sorted(f"e-{i}" for i in range(n))
    jobs = flink_cluster.rest("/jobs/overview")["jobs"]
    assert any(j["state"] == "FINISHED" for j in jobs)
