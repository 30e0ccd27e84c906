"""Property tests: parsing never raises, nothing is lost or repeated, fan-in is order-free."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.builders import make_event, make_plan, make_result
from udfs.batching import DeliveryItem, make_batches
from udfs.dedup import LocalDeduper
from udfs.dlq import dlq_record, original_bytes, parse_dlq_record
from udfs.events import Event, Rejection, ValidationLimits, event_to_json, parse_event
from udfs.fanin import (
    BranchResult,
    BranchStatus,
    FanInState,
    Outcome,
    on_plan,
    on_result,
    on_timer,
    plan_from_decision,
)
from udfs.generator import generate_events
from udfs.routing import RuleSet, decide, load_ruleset_file

ROOT = Path(__file__).resolve().parents[2]
LIMITS = ValidationLimits()
_RULES = load_ruleset_file(ROOT / "conf" / "routing.yaml")
assert isinstance(_RULES, RuleSet)
RULES: RuleSet = _RULES

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
EVENT_KEYS = [
    "event_id", "type", "user_id", "region", "priority", "occurred_at",
    "recipient", "payload", "traceparent",
]  # fmt: skip
RECIPIENT_KEYS = ["email", "phone", "push_token", "app_installed", "opt_out"]


def check_parse(raw: bytes | str) -> Event | Rejection:
    result = parse_event(raw, LIMITS)
    assert isinstance(result, Event | Rejection)
    if isinstance(result, Rejection):
        assert result.reason and result.detail and result.stage == "validate"
    return result


# (a) parse_event never raises --------------------------------------------------------


@given(st.binary(max_size=4096))
def test_parse_event_total_on_arbitrary_bytes(raw: bytes) -> None:
    check_parse(raw)


@given(st.text(max_size=2000))
def test_parse_event_total_on_arbitrary_text(text: str) -> None:
    check_parse(text)


@given(json_values)
def test_parse_event_total_on_arbitrary_json(value: Any) -> None:
    check_parse(orjson.dumps(value))


@given(
    st.dictionaries(st.sampled_from(EVENT_KEYS), json_values, max_size=4),
    st.dictionaries(st.sampled_from(RECIPIENT_KEYS), json_values, max_size=3),
    st.sets(st.sampled_from(EVENT_KEYS), max_size=2),
)
def test_parse_event_total_on_mutated_events(
    replace: dict[str, Any], rec_replace: dict[str, Any], drop: set[str]
) -> None:
    event = make_event()
    event["recipient"].update(rec_replace)
    event.update(replace)
    for key in drop:
        event.pop(key, None)
    result = check_parse(orjson.dumps(event))
    if isinstance(result, Event):  # whatever was accepted must round-trip
        assert parse_event(event_to_json(result), LIMITS) == result


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_generated_valid_events_round_trip(seed: int) -> None:
    for raw in generate_events(50, seed, dup_rate=0, bad_rate=0):
        ev = parse_event(raw, LIMITS)
        assert isinstance(ev, Event)
        assert parse_event(event_to_json(ev), LIMITS) == ev


# (b) sequential reference pipeline: one outcome or one DLQ record per distinct input -------


@dataclass
class RunResult:
    outcomes: list[Outcome] = field(default_factory=list)
    dlq: list[bytes] = field(default_factory=list)
    dropped: int = 0


def reference_pipeline(stream: list[bytes], ttl_ms: int = 3_600_000) -> RunResult:
    """Parse -> dedup -> decide -> deliver every branch -> fan in, one record at a time."""
    run = RunResult()
    deduper = LocalDeduper(ttl_ms)
    for offset, raw in enumerate(stream):
        now = 1_795_885_200_000 + offset
        ev = parse_event(raw, LIMITS)
        if isinstance(ev, Rejection):
            run.dlq.append(
                dlq_record(
                    raw,
                    ev.reason,
                    ev.detail,
                    ev.stage,
                    "t",
                    0,
                    offset,
                    event_id=ev.event_id,
                    now_ms=now,
                )
            )
            continue
        if deduper.seen(ev.event_id, now):
            run.dropped += 1
            continue
        decision = decide(ev, RULES)
        state, out, _, _ = on_plan(None, plan_from_decision(ev, decision), now, 30_000)
        run.outcomes.extend(out)
        for ch in decision.channels:
            result = make_result(ch, event_id=ev.event_id, delivered_at_ms=now + 5)
            state, out, _, _ = on_result(state, result, now + 5)
            run.outcomes.extend(out)
    return run


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(min_value=0, max_value=400),
    seed=st.integers(min_value=0, max_value=2**32),
    dup_rate=st.floats(min_value=0, max_value=0.4),
    bad_rate=st.floats(min_value=0, max_value=0.4),
)
def test_every_input_ends_as_one_outcome_or_one_dlq_record(
    n: int, seed: int, dup_rate: float, bad_rate: float
) -> None:
    stream = list(generate_events(n, seed, dup_rate=dup_rate, bad_rate=bad_rate))
    run = reference_pipeline(stream)

    valid = [raw for raw in stream if isinstance(parse_event(raw, LIMITS), Event)]
    bad = [raw for raw in stream if not isinstance(parse_event(raw, LIMITS), Event)]
    distinct_valid = set(valid)
    # nothing lost, nothing repeated
    assert len(run.outcomes) + len(run.dlq) + run.dropped == len(stream)
    assert len(run.outcomes) == len(distinct_valid)
    assert run.dropped == len(valid) - len(distinct_valid)
    assert len(run.dlq) == len(bad)
    ids = Counter(o.event_id for o in run.outcomes)
    assert all(c == 1 for c in ids.values())
    expected_ids = {
        ev.event_id for raw in distinct_valid if isinstance(ev := parse_event(raw, LIMITS), Event)
    }
    assert set(ids) == expected_ids
    for o in run.outcomes:
        assert o.complete and o.version == 1 and o.pending == ()
        assert all(c.status in (BranchStatus.DELIVERED, BranchStatus.SKIPPED) for c in o.channels)
    # every DLQ record carries its original bytes exactly
    assert Counter(bad) == Counter(
        original_bytes(rec) for raw in run.dlq if (rec := parse_dlq_record(raw)) is not None
    )


# (c) fan-in: any interleaving of plan and (duplicated) results -------------------------

CHANNELS = ["email", "sms", "push", "webhook"]
TERMINAL = [BranchStatus.DELIVERED, BranchStatus.FAILED, BranchStatus.DEAD_LETTERED]


@st.composite
def fanin_scenario(draw: st.DrawFn) -> tuple[dict[str, BranchStatus], list[str], list[Any]]:
    channels = draw(st.lists(st.sampled_from(CHANNELS), unique=True, max_size=4))
    rest = [c for c in CHANNELS if c not in channels]
    skipped = draw(st.lists(st.sampled_from(rest), unique=True)) if rest else []
    statuses = {c: draw(st.sampled_from(TERMINAL)) for c in channels}
    plan = make_plan(channels=tuple(channels), skipped=tuple((c, "opt_out") for c in skipped))
    results = [make_result(c, s) for c, s in statuses.items()]
    dups = draw(st.lists(st.sampled_from(results), max_size=6)) if results else []
    messages = draw(st.permutations([plan, *results, *dups]))
    return statuses, skipped, messages


def feed(messages: list[Any], timer_at: set[int] | None = None) -> list[Outcome]:
    """Drive the fan-in; before message i in ``timer_at`` fire the armed timer, if any.

    Only the plan timeout and the tombstone expiry are fired: the orphan TTL and the
    post-timeout linger are, by design, far longer than the gaps between messages.
    """
    state: FanInState | None = None
    outcomes: list[Outcome] = []
    now = 1000
    for i, msg in enumerate(messages):
        if timer_at is not None and i in timer_at and state is not None:
            fire = (state.plan is not None and not state.timed_out) or state.done
            if fire and state.deadline_ms is not None:
                now = max(now, state.deadline_ms)
                state, out, _, clear = on_timer(state, now)
                outcomes.extend(out)
        now += 10
        if isinstance(msg, BranchResult):
            state, out, _, clear = on_result(state, msg, now)
        else:
            state, out, _, clear = on_plan(state, msg, now, 5, linger_ms=10_000)
        assert not clear or state is None
        outcomes.extend(out)
    return outcomes


@settings(max_examples=300)
@given(fanin_scenario())
def test_fanin_any_order_gives_exactly_one_complete_outcome(
    scenario: tuple[dict[str, BranchStatus], list[str], list[Any]],
) -> None:
    statuses, skipped, messages = scenario
    outcomes = feed(messages)
    assert len(outcomes) == 1
    (o,) = outcomes
    assert o.complete and o.version == 1 and o.pending == ()
    expected = dict(statuses) | {c: BranchStatus.SKIPPED for c in skipped}
    assert {c.channel: c.status for c in o.channels} == expected


@settings(max_examples=300)
@given(fanin_scenario(), st.sets(st.integers(min_value=0, max_value=12), max_size=3))
def test_fanin_with_timeouts_versions_are_consecutive_and_complete_once(
    scenario: tuple[dict[str, BranchStatus], list[str], list[Any]], timer_at: set[int]
) -> None:
    statuses, skipped, messages = scenario
    outcomes = feed(messages, timer_at)
    assert [o.version for o in outcomes] == list(range(1, len(outcomes) + 1))
    assert [o.complete for o in outcomes].count(True) == 1
    assert outcomes[-1].complete
    expected = dict(statuses) | {c: BranchStatus.SKIPPED for c in skipped}
    assert {c.channel: c.status for c in outcomes[-1].channels} == expected
    for earlier in outcomes[:-1]:
        assert not earlier.complete and earlier.pending


# batching: every item lands in exactly one bounded batch --------------------------------


@given(
    st.lists(st.tuples(st.integers(0, 30), st.integers(0, 999), st.integers(0, 5)), max_size=60),
    st.integers(min_value=1, max_value=7),
    st.booleans(),
)
def test_batching_covers_each_event_once(specs: list[tuple[int, int, int]], size: int, digest: bool) -> None:
    items = [
        DeliveryItem(f"e-{eid}", "sms", "us-east", f"u-{user}", f"+1555{user:07d}", {}, ts)
        for eid, ts, user in specs
    ]
    out = make_batches(items, "us-east", "sms", 0, 1000, size, digest)
    covered = [eid for b in out for eid in b.event_ids]
    assert sorted(covered) == sorted({i.event_id for i in items})
    assert all(1 <= len(b.items) <= size for b in out)
    assert len({b.batch_id for b in out}) == len(out)
    keys = [m.idempotency_key for b in out for m in b.items]
    assert len(keys) == len(set(keys))
