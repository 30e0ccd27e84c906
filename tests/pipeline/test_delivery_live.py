"""Provider delivery in a running (unbounded) job: an outage of one channel.

The breaker of the failing channel opens and its deliveries wait in keyed state (deferred,
not failed), the other channels keep delivering meanwhile, and when the outage ends every
deferred delivery arrives exactly once at the provider.
"""

from __future__ import annotations

import json
import time

import pytest

from ops.kafka_io import consume_all
from tests.pipeline.harness import (
    LiveTraffic,
    build_job,
    delivery_overrides,
    job_config,
    ledger_pairs,
    wait_until,
)

pytestmark = pytest.mark.pipeline

OUTAGE_POLICY = {
    "request_timeout_s": 2.0,
    "retry": {"initial_interval": 0.05, "maximum_interval": 0.5, "maximum_attempts": 0},
    "breaker": {
        "minimum_number_of_calls": 5,
        "sliding_window_size": 10,
        "wait_duration_in_open_state": 1.0,
        "permitted_number_of_calls_in_half_open_state": 1,
    },
}


def test_outage_of_one_channel_defers_it_while_the_others_keep_flowing(kafka, topics, provider_sim, tmp_path):
    url = f"http://{provider_sim.host}:{provider_sim.port}"
    extra = [
        "kafka.bounded=false",
        "events.window_ms=500",
        "events.idle_timeout_ms=1000",
        *delivery_overrides(url, tmp_path / "d.yaml", OUTAGE_POLICY),
    ]
    cfg = job_config(kafka, topics, "fanout", 1, "outage", extra=extra)
    env = build_job(kafka, cfg)
    provider_sim.set_outage("sms", True)
    client = env.execute_async("delivery-outage-test")
    traffic = LiveTraffic(kafka.bootstrap, cfg.topics.events)
    send, planned = traffic.send, traffic.planned

    def delivered(channels: tuple[str, ...]) -> bool:
        want = {p for p in planned() if p[1] in channels}
        return want <= set(ledger_pairs(provider_sim))

    try:
        outage_t0 = time.monotonic()
        for second in range(6):  # six seconds of traffic during the sms outage
            send(f"s{second}", 40)
            time.sleep(1.0)
        took = wait_until(
            lambda: delivered(("email", "push")),
            "email and push during the sms outage",
            30,
            lambda: send("tick", 1),
        )
        during = time.monotonic() - outage_t0
        sms_stats = provider_sim.stats()["channels"]["sms"]
        assert provider_sim.ledger_count("sms") == 0
        assert {ch for _, ch in planned()} >= {"email", "sms", "push"}
        # The breaker turned most calls into deferrals: far fewer sms requests than batches
        # and retries would have made (one batch per window and bucket, retried every <= 0.5 s).
        sms_batches = provider_sim.stats()["channels"]["email"]["requests"]  # one call per batch
        assert sms_stats["requests"] < sms_batches, (sms_stats, sms_batches)
        provider_sim.set_outage("sms", False)
        wait_until(
            lambda: delivered(("email", "sms", "push")), "sms after the outage", 60, lambda: send("tick", 1)
        )
        pairs = ledger_pairs(provider_sim)
        assert len(pairs) == len(set(pairs)), "a message was accepted twice"
        assert planned() <= set(pairs) <= planned(ticks=True)
        dlq = [r for r in consume_all(kafka.bootstrap, cfg.topics.dlq)]
        assert dlq == []
        print(f"email+push complete {took:.1f} s after the last send, {during:.1f} s into the sms outage")
    finally:
        client.cancel().result()


FAST_POLICY = {"request_timeout_s": 2.0, "retry": {"initial_interval": 0.05, "maximum_attempts": 0}}


def test_windows_before_a_pause_fire_without_another_event(kafka, topics, provider_sim, tmp_path):
    """A burst, then silence: the heartbeat's watermark closes the burst's windows.

    Without ``events.heartbeat_ms`` the watermark moves only with events, and these windows
    would wait for the next one (every other live test sends "tick" events for that).
    """
    url = f"http://{provider_sim.host}:{provider_sim.port}"
    extra = [
        "kafka.bounded=false",
        "events.window_ms=500",
        "events.idle_timeout_ms=1000",
        "events.heartbeat_ms=50",
        *delivery_overrides(url, tmp_path / "d.yaml", FAST_POLICY),
    ]
    cfg = job_config(kafka, topics, "fanout", 1, "pause", extra=extra)
    env = build_job(kafka, cfg)
    client = env.execute_async("pause-test")
    traffic = LiveTraffic(kafka.bootstrap, cfg.topics.events)
    try:
        # the job is up once a first event is delivered (it may take the start-up path)
        wait_until(
            lambda: bool(traffic.planned()) and traffic.planned() <= set(ledger_pairs(provider_sim)),
            "job start",
            90,
            lambda: traffic.send("warm", 1) if not traffic.sent else None,
        )
        warm = {eid for eid, _ in traffic.planned()}
        time.sleep(1.0)
        traffic.send("burst", 30)  # and nothing after it: no ticks
        t0 = time.monotonic()
        took = wait_until(
            lambda: traffic.planned() <= set(ledger_pairs(provider_sim)), "the burst, no event after it", 30
        )
        wanted = {eid for eid, _ in traffic.planned()} - warm
        burst: list[dict] = []

        def committed() -> bool:  # outcomes become visible with the checkpoint after them
            outcomes = [json.loads(v) for v in consume_all(kafka.bootstrap, cfg.topics.outcomes)]
            burst[:] = [o for o in outcomes if o["event_id"].startswith("burst-")]
            return {o["event_id"] for o in burst} >= wanted

        wait_until(committed, "the burst's outcomes", 30)
        assert {o["event_id"] for o in burst} == wanted
        # they went through the event-time windows, not the late/start-up path
        assert not any(o.get("late") for o in burst), [o for o in burst if o.get("late")][:2]
        batches = {c["batch_id"] for o in burst for c in o["channels"].values() if c["batch_id"]}
        assert batches and not any(b.startswith("single|") for b in batches), sorted(batches)[:3]
        print(f"burst delivered {took:.1f} s after it was sent ({time.monotonic() - t0:.1f} s incl. reads)")
    finally:
        client.cancel().result()
