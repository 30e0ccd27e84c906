"""Provider delivery on the MiniCluster against the provider simulator (a real HTTP peer).

The simulator's ledger is the oracle for "delivered exactly once at the provider": it holds
one row per accepted idempotency key and counts replays separately.
"""

from __future__ import annotations

import collections

import orjson
import pytest

from ops.kafka_io import produce
from tests.builders import event_bytes, make_recipient
from tests.pipeline.harness import (
    FAST_RETRIES,
    delivery_overrides,
    expected,
    ledger_pairs,
    planned_pairs,
    run_job,
)
from udfs.generator import generate_events
from udfs.tracing import child_of

pytestmark = pytest.mark.pipeline


def test_transient_errors_every_delivery_exactly_once_at_the_provider(kafka, topics, provider_sim, tmp_path):
    for ch in ("email", "sms", "push"):
        provider_sim.set_behaviour(ch, {"error_rate": 0.2})
    records = list(generate_events(400, seed=31, dup_rate=0.05, bad_rate=0.02, late_rate=0.0))
    produce(kafka.bootstrap, topics.events, records)
    planned, invalid = expected(records)
    extra = delivery_overrides(provider_sim_url(provider_sim), tmp_path / "d.yaml", FAST_RETRIES)
    out = run_job(kafka, topics, "fanout", 2, "transient", extra=extra)

    pairs = ledger_pairs(provider_sim)
    assert len(pairs) == len(set(pairs)), "a message was accepted twice by the provider"
    assert set(pairs) == planned_pairs(planned)
    assert len(out["dlq"]) == invalid and all(d["stage"] == "validate" for d in out["dlq"])
    outcomes = {o["event_id"]: o for o in out["outcomes"]}
    assert set(outcomes) == set(planned) and all(o["complete"] for o in outcomes.values())
    lines = [
        line for o in outcomes.values() for line in o["channels"].values() if line["status"] != "skipped"
    ]
    assert all(line["status"] == "delivered" for line in lines)
    assert max(line["attempts"] for line in lines) > 1, "20% errors but nothing was retried?"
    stats = provider_sim.stats()["channels"]
    assert sum(c["errors"].get("unavailable", 0) for c in stats.values()) > 0
    # the channel topics carry each delivered (event, channel) once, with its attempts
    topic_pairs = [
        (eid, b["channel"])
        for ch in ("email", "sms", "push")
        for b in out[ch]
        for m in b["messages"]
        for eid in m["event_ids"]
    ]
    assert sorted(topic_pairs) == sorted(pairs)


def provider_sim_url(client) -> str:
    return f"http://{client.host}:{client.port}"


def test_permanently_failing_recipient_is_dead_lettered_with_its_reason(
    kafka, topics, provider_sim, tmp_path
):
    good = [
        event_bytes(event_id=f"ok-{i}", region="eu-west", priority="high", recipient=make_recipient())
        for i in range(5)
    ]
    bad = event_bytes(
        event_id="bad-1",
        region="eu-west",
        priority="high",
        recipient=make_recipient(email="invalid-user@example.com"),
    )
    produce(kafka.bootstrap, topics.events, [*good, bad])
    planned, _ = expected([*good, bad])
    extra = delivery_overrides(provider_sim_url(provider_sim), tmp_path / "d.yaml", FAST_RETRIES)
    traced = [
        f"tracing.log_file={tmp_path / 'job.log'}",
        "tracing.exporter=file",
        f"tracing.file={tmp_path / 'spans.jsonl'}",
    ]
    out = run_job(kafka, topics, "fanout", 1, "permanent", extra=[*extra, *traced])

    dead = [d for d in out["dlq"] if d["stage"].startswith("deliver-")]
    assert [(d["event_id"], d["stage"], d["reason"]) for d in dead] == [
        ("bad-1", "deliver-email", "non_retryable")
    ]
    assert dead[0]["extra"]["attempts"] == 1 and "invalid_recipient" in dead[0]["extra"]["last_error"]
    assert dead[0]["extra"]["idempotency_key"] == "bad-1:email"
    original = orjson.loads(dead[0]["original"])  # a redrivable event for that channel only
    assert original["event_id"] == "bad-1" and set(original["recipient"]) == {"email"}
    outcome = next(o for o in out["outcomes"] if o["event_id"] == "bad-1")
    assert outcome["channels"]["email"]["status"] == "dead_lettered"
    assert "invalid_recipient" in outcome["channels"]["email"]["error"]
    # the other channels of the same event, and every other event, were delivered
    delivered = collections.Counter(ledger_pairs(provider_sim))
    assert ("bad-1", "email") not in delivered
    assert set(delivered) == planned_pairs(planned) - {("bad-1", "email")}
    # tracing: the dead letter is the email branch's span of the event; logged without the address
    event_tp = orjson.loads(bad)["traceparent"]
    assert dead[0]["traceparent"] == child_of(event_tp, "bad-1:email")
    assert dead[0]["parent_traceparent"] == event_tp and dead[0]["trace_id"] == event_tp[3:35]
    log_text = (tmp_path / "job.log").read_text()
    (line,) = [orjson.loads(raw) for raw in log_text.splitlines() if '"dead-lettered"' in raw]
    assert (line["event_id"], line["trace_id"], line["reason"]) == ("bad-1", event_tp[3:35], "non_retryable")
    assert "invalid-user@example.com" not in log_text
    spans = [orjson.loads(raw) for raw in (tmp_path / "spans.jsonl").read_text().splitlines()]
    branch_span = "0x" + dead[0]["traceparent"][36:52]
    (email_span,) = [sp for sp in spans if branch_span in {lk["context"]["span_id"] for lk in sp["links"]}]
    attrs = email_span["attributes"]
    assert attrs["channel"] == "email" and attrs["status"] in ("partial", "dead_lettered")
    assert attrs["dead_lettered"] == 1 and attrs["attempts"] == 1
    assert email_span["status"]["status_code"] == "ERROR"


def test_redrive_replays_exhausted_deliveries_without_delivering_anything_twice(
    kafka, topics, topic, provider_sim, tmp_path
):
    from ops import redrive

    records = [
        event_bytes(event_id=f"rd-{i}", region="us-east", priority="high", recipient=make_recipient())
        for i in range(12)
    ]
    produce(kafka.bootstrap, topics.events, records)
    planned, _ = expected(records)
    assert all("sms" in chs for chs in planned.values())
    policy = {
        **FAST_RETRIES,
        "retry": {"initial_interval": 0.01, "maximum_attempts": 2},
        "breaker": {"minimum_number_of_calls": 100},
    }
    url = provider_sim_url(provider_sim)
    provider_sim.set_outage("sms", True)
    out = run_job(
        kafka, topics, "fanout", 1, "rd1", extra=delivery_overrides(url, tmp_path / "d.yaml", policy)
    )
    dead = [d for d in out["dlq"] if d["stage"] == "deliver-sms"]
    assert sorted(d["event_id"] for d in dead) == sorted(planned)
    assert {d["reason"] for d in dead} == {"retries_exhausted"} and {
        d["extra"]["attempts"] for d in dead
    } == {2}
    before = collections.Counter(ch for _, ch in ledger_pairs(provider_sim))
    assert before["sms"] == 0 and before["email"] == len(planned)

    provider_sim.set_outage("sms", False)
    replay_topic = topic("replay")
    redrive.main(["--bootstrap", kafka.bootstrap, "--dlq", f"{topics.dlq}-rd1", "--events", replay_topic])
    replay = topics.__class__(**{**topics.__dict__, "events": replay_topic})
    out2 = run_job(
        kafka, replay, "fanout", 1, "rd2", extra=delivery_overrides(url, tmp_path / "d.yaml", policy)
    )

    pairs = ledger_pairs(provider_sim)
    assert len(pairs) == len(set(pairs)) and set(pairs) == planned_pairs(planned)
    assert provider_sim.stats()["channels"]["email"]["duplicates"] == 0  # email was not even retried
    assert sorted(o["event_id"] for o in out2["outcomes"]) == sorted(planned)
    assert all(o["channels"]["sms"]["status"] == "delivered" for o in out2["outcomes"])
    assert out2["dlq"] == []
