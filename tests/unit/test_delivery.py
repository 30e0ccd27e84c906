"""udfs.delivery: folding provider answers into a pending batch (no JVM, no network)."""

from __future__ import annotations

import dataclasses
import random

import orjson
import pytest

from udfs.batching import Batch, Message
from udfs.delivery import (
    NON_RETRYABLE,
    RETRIES_EXHAUSTED,
    CallResult,
    ChannelPolicy,
    MessageResult,
    apply_call,
    batch_span,
    call_result_from_response,
    dead_letter_records,
    delivery_record,
    load_policies,
    new_pending,
    request_bodies,
)
from udfs.delivery_policy import RetryPolicy
from udfs.events import ValidationLimits, parse_event
from udfs.fanin import BranchStatus
from udfs.provider_client import ProviderResponse
from udfs.tracing import child_of, new_root

POLICY = RetryPolicy(initial_interval=1.0, backoff_coefficient=2.0, maximum_attempts=3, jitter="none")


def _batch(n: int = 3) -> Batch:
    msgs = tuple(
        Message(
            f"e{i}:sms",
            f"u{i}",
            f"+1555000000{i}",
            (f"e{i}",),
            ({"type": "t", "priority": "high", "data": {}},),
            1_000,
            None,
        )
        for i in range(n)
    )
    return Batch("eu-west|0:sms:1000:0", "eu-west", "sms", 1_000, 2_000, msgs)


def ok(pid: str = "p1", replayed: bool = False) -> MessageResult:
    return MessageResult(200, None, pid, replayed)


def test_all_accepted_completes_the_batch_with_delivered_results():
    pb = new_pending("eu-west|0|1000", _batch(), now_ms=1_000)
    step = apply_call(
        pb, [0, 1, 2], CallResult(200, messages=(ok(), ok(), ok("p3", True))), POLICY, random.Random(1), 1_050
    )
    assert pb.complete and step.retry_at_ms is None and not step.call_failed
    assert [(r.event_id, r.status, r.attempts, r.latency_ms) for r in step.results] == [
        (f"e{i}", BranchStatus.DELIVERED, 1, 50) for i in range(3)
    ]
    assert step.delivered[2][3] is True  # an idempotent replay counts as delivered


def test_partial_failure_retries_only_the_failed_messages_after_the_backoff():
    pb = new_pending("k", _batch(), now_ms=0)
    step = apply_call(
        pb,
        [0, 1, 2],
        CallResult(200, messages=(ok(), MessageResult(503, "unavailable"), ok())),
        POLICY,
        random.Random(1),
        100,
    )
    assert pb.open_indexes == [1] and step.retry_at_ms == 100 + 1_000 and step.retried == 1
    assert not step.call_failed  # one message failing is the retry policy's job, not the breaker's
    step2 = apply_call(pb, [1], CallResult(200, messages=(ok(),)), POLICY, random.Random(1), 1_200)
    assert pb.complete and [r.attempts for r in step2.results] == [2]


def test_call_level_failure_applies_to_every_sent_message_and_fails_the_call():
    pb = new_pending("k", _batch(2), now_ms=0)
    step = apply_call(pb, [0, 1], CallResult(503, "outage"), POLICY, random.Random(1), 10)
    assert step.call_failed and pb.attempts == [1, 1] and step.retry_at_ms == 1_010
    assert pb.last_error == ["503:outage", "503:outage"]


def test_retry_after_is_a_lower_bound_on_the_next_attempt():
    pb = new_pending("k", _batch(1), now_ms=0)
    step = apply_call(
        pb, [0], CallResult(429, "rate_limited", retry_after_s=5.0), POLICY, random.Random(1), 0
    )
    assert step.retry_at_ms == 5_000


def test_timeouts_are_retried_and_exhaustion_dead_letters():
    pb = new_pending("k", _batch(1), now_ms=0)
    for attempt in (1, 2):
        step = apply_call(pb, [0], CallResult(None, "timeout"), POLICY, random.Random(1), attempt * 10_000)
        assert step.retry_at_ms is not None and not step.dead
    step = apply_call(pb, [0], CallResult(None, "timeout"), POLICY, random.Random(1), 30_000)
    assert pb.complete and step.retry_at_ms is None
    assert [(d.reason, d.error, d.attempts) for d in step.dead] == [(RETRIES_EXHAUSTED, "timeout", 3)]
    assert step.results[0].status is BranchStatus.DEAD_LETTERED and step.results[0].attempts == 3


def test_non_retryable_error_goes_straight_to_the_dlq():
    pb = new_pending("k", _batch(2), now_ms=0)
    bad = MessageResult(400, "invalid_recipient")
    step = apply_call(pb, [0, 1], CallResult(200, messages=(bad, ok())), POLICY, random.Random(1), 5)
    assert pb.complete and [(d.reason, d.attempts) for d in step.dead] == [(NON_RETRYABLE, 1)]
    recs = [orjson.loads(r) for r in dead_letter_records(pb, step, "deliver-sms", "phone", 5)]
    assert [(r["event_id"], r["reason"], r["stage"]) for r in recs] == [("e0", NON_RETRYABLE, "deliver-sms")]
    assert recs[0]["extra"] == {
        "channel": "sms",
        "attempts": 1,
        "last_error": "400:invalid_recipient",
        "batch_id": pb.batch.batch_id,
        "idempotency_key": "e0:sms",
        "window_key": "k",
    }


def test_an_error_code_listed_as_non_retryable_is_not_retried_even_on_5xx():
    policy = RetryPolicy(
        initial_interval=1.0, maximum_attempts=5, non_retryable_errors=("account_suspended",)
    )
    pb = new_pending("k", _batch(1), now_ms=0)
    step = apply_call(pb, [0], CallResult(503, "account_suspended"), policy, random.Random(1), 0)
    assert [d.reason for d in step.dead] == [NON_RETRYABLE]


def test_the_dead_letter_original_is_a_valid_event_for_the_failed_channel_only():
    pb = new_pending("k", _batch(1), now_ms=0)
    step = apply_call(
        pb,
        [0],
        CallResult(200, messages=(MessageResult(400, "invalid_recipient"),)),
        POLICY,
        random.Random(1),
        5,
    )
    (rec,) = [orjson.loads(r) for r in dead_letter_records(pb, step, "deliver-sms", "phone", 5)]
    event = parse_event(rec["original"].encode(), ValidationLimits())
    assert event.event_id == "e0" and event.recipient.phone == "+15550000000"
    assert event.recipient.email is None and event.recipient.push_token is None


def test_request_bodies_carry_the_idempotency_key_and_the_channel_address_field():
    pb = new_pending("k", _batch(2), now_ms=0)
    bodies = request_bodies(pb, [1], "phone")
    child = bodies[0].pop("traceparent")
    assert child[:36] == new_root("e1")[:36], "no event traceparent: the branch span joins the derived root"
    assert bodies == [
        {
            "idempotency_key": "e1:sms",
            "to": "+15550000001",
            "phone": "+15550000001",
            "user_id": "u1",
            "event_ids": ["e1"],
            "payloads": [{"type": "t", "priority": "high", "data": {}}],
        }
    ]


def test_delivery_record_lists_only_what_this_step_delivered():
    pb = new_pending("k", _batch(2), now_ms=0)
    step = apply_call(
        pb,
        [0, 1],
        CallResult(200, messages=(ok("x"), MessageResult(503, "unavailable"))),
        POLICY,
        random.Random(1),
        7,
    )
    rec = orjson.loads(delivery_record(pb, step, 7))
    assert rec["size"] == 1 and [m["event_ids"] for m in rec["messages"]] == [["e0"]]
    assert rec["messages"][0]["provider_message_id"] == "x" and rec["messages"][0]["attempts"] == 1
    assert (
        delivery_record(pb, apply_call(pb, [1], CallResult(None, "timeout"), POLICY, random.Random(1), 9), 9)
        is None
    )


def test_response_conversion_handles_bulk_results_and_unattributable_answers():
    good = ProviderResponse(200, {"results": [{"status": 200, "id": "a"}, {"status": 400, "error": "x"}]})
    r = call_result_from_response(good, 2, 12)
    assert r.messages == (MessageResult(200, None, "a", False), MessageResult(400, "x", None, False))
    assert call_result_from_response(ProviderResponse(200, {"results": []}), 2, 1).error == "bad_bulk_reply"
    timed_out = call_result_from_response(ProviderResponse(None, {}, timed_out=True), 2, 1)
    assert timed_out.status is None and timed_out.error == "timeout"


def test_policies_merge_defaults_with_channel_overrides_and_reject_unknown_keys(tmp_path):
    tree = {
        "defaults": {"max_in_flight": 4, "retry": {"initial_interval": 0.5, "maximum_attempts": 5}},
        "channels": {"sms": {"rate_limit_per_s": 10, "retry": {"maximum_attempts": 2}}},
    }
    policies = load_policies(tree, ["email", "sms"])
    assert policies["email"].retry.maximum_attempts == 5 and policies["email"].rate_limit_per_s == 0
    assert policies["sms"].retry.maximum_attempts == 2 and policies["sms"].retry.initial_interval == 0.5
    assert policies["sms"].max_in_flight == 4
    with pytest.raises(ValueError, match=r"sms.*unknown delivery policy key"):
        load_policies({"channels": {"sms": {"max_inflight": 1}}}, ["sms"])
    with pytest.raises(ValueError, match="max_in_flight must be an integer >= 1"):
        ChannelPolicy(max_in_flight=0)


def test_the_shipped_policy_file_loads_for_every_channel():
    policies = load_policies("conf/delivery.yaml", ["email", "sms", "push"])
    assert all(p.retry.jitter == "full" for p in policies.values())


PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _traced_batch(n: int = 2) -> Batch:
    b = _batch(n)
    return dataclasses.replace(b, items=tuple(dataclasses.replace(m, traceparent=PARENT) for m in b.items))


def test_requests_records_and_dead_letters_carry_the_branch_span_and_the_event_span():
    pb = new_pending("k", _traced_batch(2), now_ms=0)
    (body,) = request_bodies(pb, [0], "phone")
    child = child_of(PARENT, "e0:sms")
    assert body["traceparent"] == child and child[3:35] == PARENT[3:35] and child != PARENT
    step = apply_call(
        pb, [0, 1], CallResult(200, messages=(ok("x"), MessageResult(400, "invalid_recipient"))),
        POLICY, random.Random(1), 7,
    )  # fmt: skip
    (msg,) = orjson.loads(delivery_record(pb, step, 7))["messages"]
    assert msg["traceparent"] == child and msg["parent_traceparent"] == PARENT
    (dead,) = [orjson.loads(r) for r in dead_letter_records(pb, step, "deliver-sms", "phone", 7)]
    assert dead["traceparent"] == child_of(PARENT, "e1:sms") and dead["parent_traceparent"] == PARENT
    assert dead["trace_id"] == PARENT[3:35]
    assert orjson.loads(dead["original"])["traceparent"] == PARENT, "a redrive continues the event's trace"
    span = batch_span(pb, end_ms=9)
    assert (span.status, span.delivered, span.dead_lettered, span.attempts) == ("partial", 1, 1, 1)
    assert [m[0] for m in span.messages] == [child, child_of(PARENT, "e1:sms")]
