"""A TaskManager killed (SIGKILL) while deliveries are being retried and deferred.

The job recovers from its last checkpoint on a new TaskManager; batches that were pending
in keyed state are sent again with the same idempotency keys. The provider's ledger is the
oracle: every (event, channel) accepted exactly once, none lost; every event gets exactly
one committed outcome.
"""

from __future__ import annotations

import collections
import json
import time

import pytest
import yaml

from ops import submit as ops_submit
from ops.kafka_io import consume_all
from tests.pipeline.harness import LiveTraffic, ledger_pairs, wait_until

pytestmark = pytest.mark.e2e
CHANNELS = ("email", "sms", "push")
POLICY = {
    "request_timeout_s": 2.0,
    "retry": {"initial_interval": 0.1, "maximum_interval": 1.0, "maximum_attempts": 0},
    "breaker": {"minimum_number_of_calls": 5, "sliding_window_size": 10, "wait_duration_in_open_state": 1.0},
}


def test_killed_taskmanager_during_retries_loses_nothing_and_delivers_once(
    kafka, topic, flink_cluster, provider_sim, tmp_path
):
    names = {k: topic(k) for k in ("events", "rules", "outcomes", "dlq", "metrics")}
    prefix = topic("ch")
    kafka.create_topics([f"{prefix}.{ch}" for ch in CHANNELS])
    (tmp_path / "delivery.yaml").write_text(yaml.safe_dump({"defaults": POLICY}))
    sets = (
        f"kafka.bootstrap={kafka.bootstrap}",
        f"kafka.group_id=g-{names['events']}",
        f"kafka.transactional_id_prefix=tx-{names['events']}",
        *(f"topics.{k}={v}" for k, v in names.items()),
        f"topics.channel_prefix={prefix}.",
        "job.checkpoint_interval_ms=1000",
        "events.window_ms=500",
        "events.idle_timeout_ms=1000",
        f"delivery.provider_url=http://{provider_sim.host}:{provider_sim.port}",
        f"delivery.policies_file={tmp_path / 'delivery.yaml'}",
    )
    for ch in CHANNELS:
        provider_sim.set_behaviour(ch, {"error_rate": 0.3})
    provider_sim.set_outage("sms", True)  # sms batches pile up in state, deferred and retried
    traffic = LiveTraffic(kafka.bootstrap, names["events"])
    send, planned, sent = traffic.send, traffic.planned, traffic.sent

    job = ops_submit.submit(flink_cluster, "fanout", parallelism=1, name="delivery-failover", sets=sets)
    try:
        ops_submit.wait_state(flink_cluster, job.job_id, {"RUNNING"})
        for second in range(4):
            send(f"s{second}", 50)
            time.sleep(1.0)
        wait_until(
            lambda: provider_sim.ledger_count("email") >= 100, "email deliveries", 60, lambda: send("tick", 1)
        )
        checkpoints = flink_cluster.rest(f"/jobs/{job.job_id}/checkpoints")["counts"]["completed"]
        wait_until(
            lambda: (
                flink_cluster.rest(f"/jobs/{job.job_id}/checkpoints")["counts"]["completed"] > checkpoints
            ),
            "a checkpoint with pending sms batches",
            30,
        )
        assert provider_sim.ledger_count("sms") == 0
        flink_cluster.restart_taskmanager(kill=True)
        send("after", 50)
        wait_until(
            lambda: (
                flink_cluster.rest(f"/jobs/{job.job_id}")["state"] == "RUNNING"
                and all(
                    v["status"] == "RUNNING" for v in flink_cluster.rest(f"/jobs/{job.job_id}")["vertices"]
                )
            ),
            "the job running again on the new TaskManager",
            120,
        )
        provider_sim.set_outage("sms", False)
        wait_until(
            lambda: planned() <= set(ledger_pairs(provider_sim)),
            "every delivery after the crash",
            120,
            lambda: send("tick", 1),
            every_s=1.0,
        )
        pairs = ledger_pairs(provider_sim)
        assert len(pairs) == len(set(pairs)), collections.Counter(pairs).most_common(3)
        assert planned() <= set(pairs) <= planned(ticks=True)
        wanted = {
            json.loads(r)["event_id"] for r in sent if not json.loads(r)["event_id"].startswith("tick-")
        }
        outcomes = wait_until_outcomes(kafka, names["outcomes"], wanted, lambda: send("tick", 1))
        counts = collections.Counter(o["event_id"] for o in outcomes if o["event_id"] in wanted)
        assert set(counts) == wanted and set(counts.values()) == {1}, "an event got no or two outcomes"
        assert all(
            line["status"] in ("delivered", "skipped") for o in outcomes for line in o["channels"].values()
        )
        restarts = flink_cluster.rest(f"/jobs/{job.job_id}/exceptions")
        assert restarts.get("exceptionHistory", {}).get("entries"), "the job did not fail over"
    finally:
        ops_submit.cancel(flink_cluster, job.job_id)


def wait_until_outcomes(kafka, topic: str, wanted: set[str], tick) -> list[dict]:
    found: list[dict] = []

    def complete() -> bool:
        found[:] = [json.loads(v) for v in consume_all(kafka.bootstrap, topic)]
        return wanted <= {o["event_id"] for o in found if o["complete"]}

    wait_until(complete, "every outcome", 90, tick, every_s=1.0)
    return found
