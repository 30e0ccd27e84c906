from __future__ import annotations

import pickle

import orjson

from tests.builders import (
    DEFAULT_OCCURRED_AT_MS,
    event_bytes,
    make_plan,
    make_recipient,
    make_result,
)
from udfs.events import Event, Rejection, ValidationLimits, parse_event
from udfs.fanin import (
    BranchStatus,
    FanInState,
    Outcome,
    on_plan,
    on_result,
    on_timer,
    outcome_to_json,
    plan_from_decision,
    plan_from_json,
    plan_to_json,
    result_from_json,
    result_to_json,
)
from udfs.routing import Decision

D = BranchStatus.DELIVERED
F = BranchStatus.FAILED
P = BranchStatus.PENDING
TIMEOUT = 30_000


def statuses(outcome: Outcome) -> dict[str, BranchStatus]:
    return {c.channel: c.status for c in outcome.channels}


def test_status_terminality() -> None:
    assert not P.terminal
    assert all(s.terminal for s in BranchStatus if s is not P)


def test_in_order_results_emit_exactly_one_outcome_on_the_last() -> None:
    plan = make_plan(channels=("email", "push"))
    st, out, timers, clear = on_plan(None, plan, 1000, TIMEOUT)
    assert (out, timers, clear) == ([], [1000 + TIMEOUT], False)
    assert st is not None and st.statuses == (("email", P), ("push", P))
    st, out, timers, clear = on_result(st, make_result("email"), 1100)
    assert (out, timers, clear) == ([], [], False)
    st, out, timers, clear = on_result(st, make_result("push", F, error="provider 500"), 1200)
    assert len(out) == 1
    o = out[0]
    assert (o.version, o.complete, o.pending) == (1, True, ())
    assert statuses(o) == {"email": D, "push": F}
    assert o.emitted_at_ms == 1200
    # tombstone kept for linger (= timeout by default), then cleared
    assert st is not None and st.done and st.plan is None
    assert timers == [1200 + TIMEOUT] and not clear


def test_duplicate_results_are_idempotent() -> None:
    st, *_ = on_plan(None, make_plan(channels=("email", "push")), 0, TIMEOUT)
    st, *_ = on_result(st, make_result("email"), 1)
    before = st
    st, out, timers, clear = on_result(st, make_result("email", F), 2)
    assert (st, out, timers, clear) == (before, [], [], False)
    st, out, *_ = on_result(st, make_result("push"), 3)
    assert len(out) == 1 and statuses(out[0])["email"] is D  # first result won
    # after completion (tombstone): duplicates are absorbed
    for r in (make_result("email"), make_result("push")):
        st2, out, timers, clear = on_result(st, r, 4)
        assert (st2, out, timers, clear) == (st, [], [], False)


def test_results_before_plan_are_buffered() -> None:
    st, out, timers, _ = on_result(None, make_result("push"), 10, orphan_ttl_ms=5000)
    assert out == [] and timers == [5010]
    st, out, timers, _ = on_result(st, make_result("push", F), 11)  # duplicate early
    assert out == [] and timers == []
    assert st is not None and len(st.early) == 1
    st, out, *_ = on_result(st, make_result("email"), 12)
    assert out == []
    _, out, *_ = on_plan(st, make_plan(channels=("email", "push")), 20, TIMEOUT)
    assert len(out) == 1 and out[0].complete and out[0].version == 1
    assert statuses(out[0]) == {"email": D, "push": D}


def test_early_result_for_unplanned_channel_is_ignored() -> None:
    st, *_ = on_result(None, make_result("sms"), 10)
    st, out, timers, _ = on_plan(st, make_plan(channels=("email",)), 20, TIMEOUT)
    assert out == [] and timers == [20 + TIMEOUT]
    assert st is not None and st.results == ()


def test_zero_planned_channels_emit_at_once() -> None:
    plan = make_plan(channels=(), skipped=(("sms", "opt_out"), ("push", "no_address")))
    st, out, timers, clear = on_plan(None, plan, 50, TIMEOUT, linger_ms=0)
    assert clear and st is None and timers == []
    (o,) = out
    assert o.complete and o.version == 1 and o.pending == ()
    assert [(c.channel, c.status, c.reason) for c in o.channels] == [
        ("sms", BranchStatus.SKIPPED, "opt_out"),
        ("push", BranchStatus.SKIPPED, "no_address"),
    ]
    assert o.end_to_end_ms is None
    _, out, *_ = on_plan(None, make_plan(channels=()), 50, TIMEOUT)
    assert len(out) == 1 and out[0].channels == ()


def test_result_for_skipped_or_unplanned_channel_is_ignored() -> None:
    plan = make_plan(channels=("email",), skipped=(("sms", "opt_out"),))
    st, *_ = on_plan(None, plan, 0, TIMEOUT)
    for r in (make_result("sms"), make_result("webhook")):
        st2, out, timers, clear = on_result(st, r, 1)
        assert (st2, out, timers, clear) == (st, [], [], False)


def test_pending_result_is_not_terminal_and_ignored() -> None:
    st, *_ = on_plan(None, make_plan(channels=("email",)), 0, TIMEOUT)
    st2, out, *_ = on_result(st, make_result("email", P), 1)
    assert st2 == st and out == []
    assert on_result(None, make_result("email", P), 1) == (None, [], [], False)


def test_timeout_emits_incomplete_then_versions_on_late_results() -> None:
    plan = make_plan(channels=("email", "sms", "push"))
    st, _, (deadline,), _ = on_plan(None, plan, 0, TIMEOUT, linger_ms=60_000)
    st, *_ = on_result(st, make_result("email"), 100)
    st, out, timers, clear = on_timer(st, deadline)
    (v1,) = out
    assert (v1.version, v1.complete, v1.pending) == (1, False, ("sms", "push"))
    assert statuses(v1) == {"email": D, "sms": P, "push": P}
    assert timers == [deadline + 60_000] and not clear
    st, out, *_ = on_result(st, make_result("sms", F), deadline + 5)
    (v2,) = out
    assert (v2.version, v2.complete, v2.pending) == (2, False, ("push",))
    st, out, *_ = on_result(st, make_result("sms"), deadline + 6)  # duplicate: silent
    assert out == []
    st, out, timers, clear = on_result(st, make_result("push"), deadline + 7)
    (v3,) = out
    assert (v3.version, v3.complete, v3.pending) == (3, True, ())
    assert st is not None and st.done


def test_timer_before_deadline_is_stale() -> None:
    st, _, (deadline,), _ = on_plan(None, make_plan(), 0, TIMEOUT)
    assert on_timer(st, deadline - 1) == (st, [], [], False)
    assert on_timer(None, deadline) == (None, [], [], False)


def test_linger_after_timeout_then_clear() -> None:
    st, _, (deadline,), _ = on_plan(None, make_plan(channels=("email",)), 0, TIMEOUT)
    st, out, (linger_deadline,), _ = on_timer(st, deadline)
    assert len(out) == 1 and not out[0].complete
    st, out, timers, clear = on_timer(st, linger_deadline)
    assert (st, out, timers, clear) == (None, [], [], True)


def test_tombstone_expires() -> None:
    st, *_ = on_plan(None, make_plan(channels=("email",)), 0, TIMEOUT)
    st, out, (tomb_deadline,), _ = on_result(st, make_result("email"), 5)
    assert len(out) == 1
    assert on_timer(st, TIMEOUT)[3] is False  # the old plan timer is stale now
    assert on_timer(st, tomb_deadline) == (None, [], [], True)


def test_linger_zero_clears_on_complete() -> None:
    st, *_ = on_plan(None, make_plan(channels=("email",)), 0, TIMEOUT, linger_ms=0)
    st, out, timers, clear = on_result(st, make_result("email"), 5)
    assert st is None and clear and timers == [] and len(out) == 1


def test_orphan_buffer_expires_without_output() -> None:
    st, _, (deadline,), _ = on_result(None, make_result("email"), 0, orphan_ttl_ms=100)
    assert on_timer(st, deadline) == (None, [], [], True)


def test_duplicate_plan_is_ignored() -> None:
    st, *_ = on_plan(None, make_plan(), 0, TIMEOUT)
    assert on_plan(st, make_plan(channels=("sms",)), 1, TIMEOUT) == (st, [], [], False)
    tomb = FanInState(done=True, emitted_version=1, deadline_ms=10)
    assert on_plan(tomb, make_plan(), 1, TIMEOUT) == (tomb, [], [], False)


def test_end_to_end_is_max_delivery_minus_occurrence() -> None:
    st, *_ = on_plan(None, make_plan(channels=("email", "push", "sms")), 0, TIMEOUT)
    st, *_ = on_result(st, make_result("email", delivered_at_ms=DEFAULT_OCCURRED_AT_MS + 40), 1)
    st, *_ = on_result(st, make_result("push", delivered_at_ms=DEFAULT_OCCURRED_AT_MS + 90), 2)
    _, (o,), *_ = on_result(st, make_result("sms", F, delivered_at_ms=None), 3)
    assert o.end_to_end_ms == 90


def test_outcome_json_shape() -> None:
    plan = make_plan(
        event_id="e-1",
        channels=("email", "sms"),
        skipped=(("push", "opt_out"),),
        traceparent="00-abc-def-01",
        late=True,
    )
    st, *_ = on_plan(None, plan, 0, TIMEOUT)
    st, *_ = on_result(st, make_result("email", event_id="e-1", attempts=2, batch_id="b-1"), 1)
    _, (o,), *_ = on_result(
        st, make_result("sms", BranchStatus.DEAD_LETTERED, event_id="e-1", error="exhausted"), 2
    )
    d = orjson.loads(outcome_to_json(o))
    assert d["event_id"] == "e-1" and d["region"] == "eu-west"
    assert (d["version"], d["complete"], d["pending"]) == (1, True, [])
    assert d["channels"] == {
        "email": {
            "status": "delivered",
            "attempts": 2,
            "latency_ms": 20,
            "error": None,
            "reason": None,
            "batch_id": "b-1",
        },
        "sms": {
            "status": "dead_lettered",
            "attempts": 1,
            "latency_ms": 20,
            "error": "exhausted",
            "reason": None,
            "batch_id": None,
        },
        "push": {
            "status": "skipped",
            "attempts": 0,
            "latency_ms": None,
            "error": None,
            "reason": "opt_out",
            "batch_id": None,
        },
    }
    assert d["rule"] == "order_shipped" and d["rules_version"] == "test.1"
    assert d["late"] is True and d["traceparent"] == "00-abc-def-01"
    assert d["end_to_end_ms"] == 50 and d["emitted_at_ms"] == 2


def test_plan_from_decision() -> None:
    raw = event_bytes(event_id="e-2", recipient=make_recipient(opt_out=["sms"]))
    ev = parse_event(raw, ValidationLimits())
    assert isinstance(ev, Event)
    dec = Decision("e-2", ("email",), (("sms", "opt_out"),), "order_shipped", "v")
    plan = plan_from_decision(ev, dec, late=True)
    assert plan.channels == ("email",) and plan.skipped == (("sms", "opt_out"),)
    assert plan.occurred_at_ms == ev.occurred_at_ms and plan.late
    assert plan.region == "eu-west" and plan.traceparent == ev.traceparent


def test_plan_and_result_transport_round_trip() -> None:
    plan = make_plan(skipped=(("sms", "opt_out"),), traceparent="00-x-y-01")
    assert plan_from_json(plan_to_json(plan)) == plan
    r = make_result("push", F, error="boom", batch_id="b")
    assert result_from_json(result_to_json(r)) == r
    for bad in (b"", b"[]", b"{}", b'{"event_id": "e", "status": "weird", "channel": "x"}'):
        assert isinstance(plan_from_json(bad), Rejection)
        assert isinstance(result_from_json(bad), Rejection)


def test_state_pickles_for_flink_value_state() -> None:
    st, *_ = on_plan(None, make_plan(), 0, TIMEOUT)
    st, *_ = on_result(st, make_result("email"), 1)
    assert pickle.loads(pickle.dumps(st)) == st
