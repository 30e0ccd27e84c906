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


def test_fanout_job_via_flink_run_is_a_second_job_on_the_same_taskmanager(kafka, topic, flink_cluster):
    """Runs after the round trip on the same session cluster: a second thread-mode job must work."""
    from udfs.generator import generate_events

    names = {k: topic(k) for k in ("events", "rules", "outcomes", "dlq", "metrics")}
    prefix = topic("ch")
    kafka.create_topics([f"{prefix}.{ch}" for ch in ("email", "sms", "push")])
    records = list(generate_events(300, seed=3, dup_rate=0.05, bad_rate=0.02, late_rate=0.0))
    produce(kafka.bootstrap, names["events"], records)
    sets = [
        f"kafka.bootstrap={kafka.bootstrap}",
        "kafka.bounded=true",
        f"kafka.group_id=g-{names['events']}",
        f"kafka.transactional_id_prefix=tx-{names['events']}",
        *(f"topics.{k}={v}" for k, v in names.items()),
        f"topics.channel_prefix={prefix}.",
        "job.parallelism=2",
        "job.checkpoint_interval_ms=500",
    ]
    args = ["run", "-py", str(ROOT / "jobs" / "fanout.py"), "-pyfs", f"{ROOT / 'jobs'},{ROOT / 'udfs'}"]
    for item in sets:
        args += ["--set", item]
    result = flink_cluster.run(*args, timeout_s=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    outcomes = [json.loads(v) for v in consume_all(kafka.bootstrap, names["outcomes"])]
    dlq = [json.loads(v) for v in consume_all(kafka.bootstrap, names["dlq"])]
    ids = [o["event_id"] for o in outcomes]
    assert len(ids) == len(set(ids)) > 250
    assert len(ids) + len(dlq) == len(set(records))
    vertices = {
        v["name"] for j in flink_cluster.rest("/jobs/overview")["jobs"] for v in _vertices(flink_cluster, j)
    }
    assert {"deliver-email", "deliver-sms", "deliver-push"} <= {n.split(" ")[0] for n in vertices}


def _vertices(cluster, job):
    return cluster.rest(f"/jobs/{job['jid']}").get("vertices", [])
