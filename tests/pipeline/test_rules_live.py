"""The job running unbounded: live rule changes via the rules topic, and late events.

A rule set published on the rules topic changes routing while the job runs (no restart);
a malformed one is dead-lettered and the last good one stays. An event older than the
watermark is still delivered, and its outcome says ``late``.
"""

from __future__ import annotations

import json
import time

import orjson
import pytest
from kafka import KafkaConsumer

from ops.kafka_io import produce
from tests.builders import make_event, make_recipient
from tests.pipeline.harness import build_job, job_config
from udfs.events import format_timestamp_ms

pytestmark = pytest.mark.pipeline

NEW_RULES = {
    "version": "live-v2",
    "channels": ["email", "sms", "push"],
    "rules": {"order_shipped": [{"channel": "sms"}], "*": [{"channel": "email"}]},
}


def _event(label: str, age_ms: int = 0) -> bytes:
    now = format_timestamp_ms(int(time.time() * 1000) - age_ms)
    return orjson.dumps(
        make_event(
            event_id=f"{label}-{time.monotonic_ns()}",
            type="order_shipped",
            priority="normal",
            occurred_at=now,
            recipient=make_recipient(),
        )
    )


def test_live_rule_change_and_late_events(kafka, topics):
    cfg = job_config(
        kafka, topics, "fanout", 1, "live", extra=["kafka.bounded=false", "events.window_ms=500"]
    )
    env = build_job(kafka, cfg)
    client = env.execute_async("rules-live-test")

    def committed_reader(topic: str) -> KafkaConsumer:
        return KafkaConsumer(
            topic,
            bootstrap_servers=kafka.bootstrap,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            group_id=None,
        )

    consumer, dlq = committed_reader(cfg.topics.outcomes), committed_reader(cfg.topics.dlq)
    seen: dict[str, dict] = {}

    def pump_until(predicate, what: str, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            produce(kafka.bootstrap, cfg.topics.events, [_event("probe")])  # moves event time on
            for recs in consumer.poll(timeout_ms=300).values():
                for rec in recs:
                    o = json.loads(rec.value)
                    seen[o["event_id"]] = o
            if predicate():
                return
        raise AssertionError(f"timed out waiting for {what}")

    try:
        produce(kafka.bootstrap, cfg.topics.events, [_event("before")])
        pump_until(lambda: any(k.startswith("before") for k in seen), "the first outcome")
        before = next(o for k, o in seen.items() if k.startswith("before"))
        assert before["rules_version"] == "2026-11-28.1"
        assert sorted(before["channels"]) == ["email", "push"]

        produce(kafka.bootstrap, cfg.topics.rules, [b'{"version": "broken", "rules": 42}'])
        produce(kafka.bootstrap, cfg.topics.rules, [orjson.dumps(NEW_RULES)])
        pump_until(lambda: any(o["rules_version"] == "live-v2" for o in seen.values()), "the new rules")
        after = [o for o in seen.values() if o["rules_version"] == "live-v2"]
        assert all(sorted(o["channels"]) == ["sms"] for o in after)

        # the DLQ record is committed with a checkpoint: poll until it shows (one poll may be empty)
        rejected: list[dict] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(d["reason"] == "invalid_rules" for d in rejected):
            rejected += [json.loads(r.value) for recs in dlq.poll(timeout_ms=1000).values() for r in recs]
        assert any(d["reason"] == "invalid_rules" and d["stage"] == "rules" for d in rejected)

        # The DLQ wait above produced no events, so both partitions may have gone idle: let a
        # fresh probe through first, so the watermark the late event meets is a current one.
        mark = len(seen)
        pump_until(lambda: len(seen) > mark + 1, "a probe after the pause")
        produce(kafka.bootstrap, cfg.topics.events, [_event("late", age_ms=60_000)])
        pump_until(lambda: any(k.startswith("late") for k in seen), "the late event's outcome")
        late = next(o for k, o in seen.items() if k.startswith("late"))
        assert late["late"] is True and late["complete"] and sorted(late["channels"]) == ["sms"]
        assert not any(o["late"] for k, o in seen.items() if not k.startswith("late"))
    finally:
        consumer.close()
        dlq.close()
        client.cancel().result()
