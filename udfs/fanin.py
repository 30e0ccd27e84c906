"""Fan-in: synchronise the per-channel branch results of one event into one outcome.

Keyed by ``event_id``. The state machine is pure: every transition takes the current
:class:`FanInState` (or None) and returns ``(new_state, outcomes, timers, clear)`` where
``timers`` are processing-time timestamps to register and ``clear`` says the keyed state
must be cleared (``new_state`` is then None). A ``KeyedProcessFunction`` only loads the
state, calls the transition, stores or clears, registers timers and emits.

Rules:

* ``on_plan`` records the planned channels (PENDING) and the skipped ones (SKIPPED) and
  arms a timeout at ``now + timeout_ms``. A plan with no planned channel (all skipped or
  none matched) emits its outcome at once.
* ``on_result`` marks a PENDING branch terminal. When the last branch becomes terminal
  exactly one outcome is emitted: version 1, ``complete: true``.
* Results that arrive before the plan are buffered in ``early`` (first terminal result
  per channel wins) and applied when the plan arrives. If no plan comes within
  ``orphan_ttl_ms`` the buffer is dropped.
* If the timeout fires first, version 1 is emitted with ``complete: false`` and the still
  PENDING branches in ``pending``. Every later result then emits the next version (2, 3,
  ...), ``complete: true`` once nothing is pending: an outcome never changes silently.
* Duplicate results for an already-terminal branch, results for channels that were not
  planned, non-terminal (PENDING) results and duplicate plans produce no output.

State lifetime (the clearing choice): after the complete outcome the state shrinks to a
*tombstone* (``done=True``, no plan, no results) kept for ``linger_ms`` (default: the
timeout) so that duplicate results and plans arriving soon after are absorbed instead of
being buffered as orphans; then it is cleared. After a timeout the full state is kept for
another ``linger_ms`` to accept late results (each emits a new version), then cleared; a
result later still is buffered as an orphan and dropped after ``orphan_ttl_ms``. The
outcome already emitted lists that branch as pending, so nothing changes silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import orjson

from udfs.events import Event, Rejection, fast_constructor, fast_pickle
from udfs.routing import Decision

FANIN_STAGE: Final = "fanin"
DEFAULT_ORPHAN_TTL_MS: Final = 10 * 60 * 1000


class BranchStatus(StrEnum):
    """Status of one channel branch of one event; all but PENDING are terminal."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    SKIPPED = "skipped"

    @property
    def terminal(self) -> bool:
        """Return True for every status except PENDING."""
        return self is not BranchStatus.PENDING


_PENDING: Final = BranchStatus.PENDING
_SKIPPED: Final = BranchStatus.SKIPPED
_DELIVERED: Final = BranchStatus.DELIVERED
_STATUS_BY_VALUE: Final = {s.value: s for s in BranchStatus}


@fast_pickle
@dataclass(frozen=True, slots=True)
class Plan:
    """What the router planned for one event: the fan-in's expected branches."""

    event_id: str
    region: str
    channels: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]
    rule: str
    rules_version: str
    occurred_at_ms: int
    late: bool = False
    traceparent: str | None = None


@fast_pickle
@dataclass(frozen=True, slots=True)
class BranchResult:
    """The terminal result of delivering one event on one channel."""

    event_id: str
    channel: str
    status: BranchStatus
    attempts: int = 1
    latency_ms: int | None = None
    error: str | None = None
    delivered_at_ms: int | None = None
    batch_id: str | None = None


@fast_pickle
@dataclass(frozen=True, slots=True)
class ChannelOutcome:
    """One channel's line in an outcome record."""

    channel: str
    status: BranchStatus
    attempts: int = 0
    latency_ms: int | None = None
    error: str | None = None
    reason: str | None = None
    batch_id: str | None = None


@fast_pickle
@dataclass(frozen=True, slots=True)
class Outcome:
    """The fan-in record for one event (one per version) on ``notifications.outcomes``."""

    event_id: str
    region: str
    version: int
    complete: bool
    channels: tuple[ChannelOutcome, ...]
    pending: tuple[str, ...]
    rule: str
    rules_version: str
    late: bool
    traceparent: str | None
    end_to_end_ms: int | None
    emitted_at_ms: int


@fast_pickle
@dataclass(frozen=True, slots=True)
class FanInState:
    """Keyed fan-in state for one event_id (see the module docstring for the lifecycle)."""

    plan: Plan | None = None
    statuses: tuple[tuple[str, BranchStatus], ...] = ()
    results: tuple[BranchResult, ...] = ()
    emitted_version: int = 0
    timed_out: bool = False
    early: tuple[BranchResult, ...] = ()
    done: bool = False
    deadline_ms: int | None = None
    linger_ms: int = 0


#: ``(new_state, outcomes, timers, clear)`` returned by every transition.
Transition = tuple[FanInState | None, list[Outcome], list[int], bool]

# Hot-path constructors (see udfs.events.fast_constructor); arguments in field order.
_state: Callable[
    [
        Plan | None,
        tuple[tuple[str, BranchStatus], ...],
        tuple[BranchResult, ...],
        int,
        bool,
        tuple[BranchResult, ...],
        bool,
        int | None,
        int,
    ],
    FanInState,
] = fast_constructor(FanInState)
_line: Callable[[str, BranchStatus, int, int | None, str | None, str | None, str | None], ChannelOutcome] = (
    fast_constructor(ChannelOutcome)
)
_outcome: Callable[
    [
        str,
        str,
        int,
        bool,
        tuple[ChannelOutcome, ...],
        tuple[str, ...],
        str,
        str,
        bool,
        str | None,
        int | None,
        int,
    ],
    Outcome,
] = fast_constructor(Outcome)


def plan_from_decision(event: Event, decision: Decision, *, late: bool = False) -> Plan:
    """Build the fan-in plan for an event from its routing decision.

    The plan (and so the outcome) carries the event's traceparent: the router passes events
    whose traceparent it made valid (``udfs.stages.traced``).
    """
    return Plan(
        event.event_id,
        event.region,
        decision.channels,
        decision.skipped,
        decision.rule,
        decision.rules_version,
        event.occurred_at_ms,
        late,
        event.traceparent,
    )


def _build_outcome(
    plan: Plan,
    statuses: tuple[tuple[str, BranchStatus], ...],
    results: tuple[BranchResult, ...],
    version: int,
    now_ms: int,
) -> Outcome:
    by_channel = {r.channel: r for r in results}
    skip_reason = dict(plan.skipped)
    lines: list[ChannelOutcome] = []
    pending: list[str] = []
    e2e: int | None = None
    for ch, st in statuses:
        r = by_channel.get(ch)
        if r is not None:
            lines.append(_line(ch, st, r.attempts, r.latency_ms, r.error, None, r.batch_id))
            if st is _DELIVERED and r.delivered_at_ms is not None:
                d = r.delivered_at_ms - plan.occurred_at_ms
                if e2e is None or d > e2e:
                    e2e = d
        elif st is _SKIPPED:
            lines.append(_line(ch, st, 0, None, None, skip_reason.get(ch), None))
        else:
            lines.append(_line(ch, st, 0, None, None, None, None))
            pending.append(ch)
    return _outcome(
        plan.event_id,
        plan.region,
        version,
        not pending,
        tuple(lines),
        tuple(pending),
        plan.rule,
        plan.rules_version,
        plan.late,
        plan.traceparent,
        e2e,
        now_ms,
    )


def _with_early(s: FanInState, early: tuple[BranchResult, ...]) -> FanInState:
    return _state(
        s.plan, s.statuses, s.results, s.emitted_version, s.timed_out, early, s.done,
        s.deadline_ms, s.linger_ms,
    )  # fmt: skip


def _with_results(
    s: FanInState,
    statuses: tuple[tuple[str, BranchStatus], ...],
    results: tuple[BranchResult, ...],
    version: int,
) -> FanInState:
    return _state(
        s.plan, statuses, results, version, s.timed_out, s.early, s.done, s.deadline_ms,
        s.linger_ms,
    )  # fmt: skip


def _finish(state: FanInState, outcome: Outcome, now_ms: int) -> Transition:
    """Replace a completed state by a tombstone (or clear it when linger is zero)."""
    if state.linger_ms <= 0:
        return None, [outcome], [], True
    deadline = now_ms + state.linger_ms
    tomb = _state(None, (), (), outcome.version, state.timed_out, (), True, deadline, state.linger_ms)
    return tomb, [outcome], [deadline], False


def on_plan(
    state: FanInState | None,
    plan: Plan,
    now_ms: int,
    timeout_ms: int,
    *,
    linger_ms: int | None = None,
) -> Transition:
    """Record the plan, apply buffered early results, emit at once if nothing is pending."""
    if state is not None and (state.plan is not None or state.done):
        return state, [], [], False  # duplicate plan
    planned = plan.channels
    statuses: list[tuple[str, BranchStatus]] = [(ch, _PENDING) for ch in planned]
    statuses.extend((ch, _SKIPPED) for ch, _ in plan.skipped)
    accepted: list[BranchResult] = []
    if state is not None and state.early:
        index = {ch: i for i, ch in enumerate(planned)}
        for r in state.early:
            i = index.get(r.channel)
            if i is not None and statuses[i][1] is _PENDING:
                statuses[i] = (r.channel, r.status)
                accepted.append(r)
    st = tuple(statuses)
    res = tuple(accepted)
    linger = timeout_ms if linger_ms is None else linger_ms
    if not any(s is _PENDING for _, s in st):
        new = _state(plan, st, res, 0, False, (), False, None, linger)
        return _finish(new, _build_outcome(plan, st, res, 1, now_ms), now_ms)
    deadline = now_ms + timeout_ms
    return _state(plan, st, res, 0, False, (), False, deadline, linger), [], [deadline], False


def on_result(
    state: FanInState | None,
    result: BranchResult,
    now_ms: int,
    *,
    orphan_ttl_ms: int = DEFAULT_ORPHAN_TTL_MS,
) -> Transition:
    """Apply one branch result; emit an outcome when it completes the event or after timeout."""
    if not result.status.terminal:
        return state, [], [], False
    if state is None or (state.plan is None and not state.done):
        if state is None:
            deadline = now_ms + orphan_ttl_ms
            orphan = _state(None, (), (), 0, False, (result,), False, deadline, 0)
            return orphan, [], [deadline], False
        if any(r.channel == result.channel for r in state.early):
            return state, [], [], False
        early = (*state.early, result)
        return _with_early(state, early), [], [], False
    plan = state.plan
    if state.done or plan is None:
        return state, [], [], False  # tombstone: absorb duplicates
    statuses = state.statuses
    for i, (ch, st) in enumerate(statuses):
        if ch == result.channel:
            if st is not _PENDING:
                return state, [], [], False  # duplicate or skipped channel
            new_statuses = (*statuses[:i], (ch, result.status), *statuses[i + 1 :])
            break
    else:
        return state, [], [], False  # not a channel of this plan
    results = (*state.results, result)
    complete = not any(s is _PENDING for _, s in new_statuses)
    if not complete and not state.timed_out:
        return _with_results(state, new_statuses, results, state.emitted_version), [], [], False
    version = state.emitted_version + 1
    outcome = _build_outcome(plan, new_statuses, results, version, now_ms)
    new = _with_results(state, new_statuses, results, version)
    if complete:
        return _finish(new, outcome, now_ms)
    return new, [outcome], [], False


def on_timer(state: FanInState | None, now_ms: int) -> Transition:
    """Handle a timer: emit the incomplete outcome on timeout, or clear expired state."""
    if state is None:
        return None, [], [], False
    if state.deadline_ms is None or now_ms < state.deadline_ms:
        return state, [], [], False  # stale timer from an earlier deadline
    plan = state.plan
    if state.done or plan is None or state.timed_out:
        return None, [], [], True  # tombstone, orphan buffer or linger after timeout expired
    version = state.emitted_version + 1
    outcome = _build_outcome(plan, state.statuses, state.results, version, now_ms)
    deadline = now_ms + state.linger_ms
    new = _state(
        plan, state.statuses, state.results, version, True, state.early, False, deadline,
        state.linger_ms,
    )  # fmt: skip
    return new, [outcome], [deadline], False


def outcome_to_dict(outcome: Outcome) -> dict[str, Any]:
    """Return the JSON shape of an outcome (no PII: identifiers, statuses, timings)."""
    return {
        "event_id": outcome.event_id,
        "region": outcome.region,
        "version": outcome.version,
        "complete": outcome.complete,
        "channels": {
            c.channel: {
                "status": c.status.value,
                "attempts": c.attempts,
                "latency_ms": c.latency_ms,
                "error": c.error,
                "reason": c.reason,
                "batch_id": c.batch_id,
            }
            for c in outcome.channels
        },
        "pending": list(outcome.pending),
        "rule": outcome.rule,
        "rules_version": outcome.rules_version,
        "late": outcome.late,
        "traceparent": outcome.traceparent,
        "trace_id": outcome.traceparent[3:35] if outcome.traceparent else None,
        "end_to_end_ms": outcome.end_to_end_ms,
        "emitted_at_ms": outcome.emitted_at_ms,
    }


def outcome_to_json(outcome: Outcome) -> bytes:
    """Serialise an outcome for ``notifications.outcomes``."""
    return orjson.dumps(outcome_to_dict(outcome))


def plan_to_json(plan: Plan) -> bytes:
    """Serialise a plan for transport between operators or jobs."""
    return orjson.dumps(
        {
            "event_id": plan.event_id,
            "region": plan.region,
            "channels": list(plan.channels),
            "skipped": [list(p) for p in plan.skipped],
            "rule": plan.rule,
            "rules_version": plan.rules_version,
            "occurred_at_ms": plan.occurred_at_ms,
            "late": plan.late,
            "traceparent": plan.traceparent,
        }
    )


def plan_from_json(raw: bytes) -> Plan | Rejection:
    """Parse a plan written by :func:`plan_to_json`; a Rejection if it is not one."""
    try:
        o = orjson.loads(raw)
        plan = Plan(
            o["event_id"],
            o["region"],
            tuple(o["channels"]),
            tuple((str(c), str(r)) for c, r in o["skipped"]),
            o["rule"],
            o["rules_version"],
            int(o["occurred_at_ms"]),
            bool(o.get("late", False)),
            o.get("traceparent"),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        return Rejection("bad_plan", f"not a plan record ({type(exc).__name__})", FANIN_STAGE)
    return plan


def result_to_json(result: BranchResult) -> bytes:
    """Serialise a branch result for transport between operators or jobs."""
    return orjson.dumps(
        {
            "event_id": result.event_id,
            "channel": result.channel,
            "status": result.status.value,
            "attempts": result.attempts,
            "latency_ms": result.latency_ms,
            "error": result.error,
            "delivered_at_ms": result.delivered_at_ms,
            "batch_id": result.batch_id,
        }
    )


def result_from_json(raw: bytes) -> BranchResult | Rejection:
    """Parse a branch result written by :func:`result_to_json`; a Rejection if invalid."""
    try:
        o = orjson.loads(raw)
        status = _STATUS_BY_VALUE.get(o["status"])
        if status is None:
            return Rejection("bad_result", "unknown branch status", FANIN_STAGE, o["event_id"])
        return BranchResult(
            o["event_id"],
            o["channel"],
            status,
            int(o.get("attempts", 1)),
            o.get("latency_ms"),
            o.get("error"),
            o.get("delivered_at_ms"),
            o.get("batch_id"),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        return Rejection("bad_result", f"not a result record ({type(exc).__name__})", FANIN_STAGE)
