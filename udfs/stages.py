"""Per-batch pipeline stages: what each Python operator of the fan-out job does, as pure code.

The job does per-event keyed work (dedup, window batching) in the JVM and hands Python one
*window batch* at a time (see docs/architecture.md for the measurements behind this). These
functions are that Python work; the Flink wrappers in ``jobs/`` only call them.

Shapes::

    SourceRecord(raw, topic, partition, offset)          # one Kafka record
    route_batch([...SourceRecord], window) -> Routed     # validate, DLQ, route, plan, batch
    deliver_to_topic(Batch, now_ms) -> Delivered         # channel record + branch results
    FanIn (dict of udfs.fanin states per event_id)       # keyed by the window key
    route_one(...)/deliver_linear(...)                   # the linear (sequential) mode
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from udfs import fanin
from udfs.aggregates import BatchObservation, MetricsAccumulator, WindowMetrics, metrics_to_dict
from udfs.batching import Batch, DeliveryItem, batch_to_json, item_for, make_batches, span_messages
from udfs.dlq import dlq_record
from udfs.events import Event, Rejection, ValidationLimits, fast_pickle, parse_event, with_traceparent
from udfs.fanin import BranchResult, BranchStatus, FanInState, Outcome, Plan, plan_from_decision
from udfs.logs import event_extra
from udfs.routing import RuleSet, address_for, decide
from udfs.tracing import (
    BatchSpan,
    ensure_traceparent,
    is_canonical,
    trace_id_of,
    traceparent_of_raw,
)


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One input record as read from Kafka (coordinates are None for the embedded source)."""

    raw: bytes
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None


@dataclass(frozen=True, slots=True)
class Window:
    """The batch a group of records arrived in: fan-in key and batching window."""

    key: str
    region: str
    start_ms: int
    end_ms: int
    late: bool = False

    @property
    def batch_prefix(self) -> str:
        """Return the batch-id prefix: the key without the window start (region|bucket).

        A single-record window keeps its whole key (it ends in a digest of the record), so two
        records of one region with the same timestamp never share a batch id.
        """
        return self.key if self.key.startswith("single|") else self.key.rsplit("|", 1)[0]


@dataclass(frozen=True, slots=True)
class StageConfig:
    """Everything the per-batch stages need besides the rules."""

    limits: ValidationLimits = field(default_factory=ValidationLimits)
    max_batch_size: int = 500
    digest_channels: frozenset[str] = frozenset()
    fanin_timeout_ms: int = 60_000


@dataclass(frozen=True, slots=True)
class Routed:
    """What routing one window batch produced."""

    window: Window
    plans: tuple[Plan, ...]
    batches: tuple[Batch, ...]
    dlq: tuple[bytes, ...]
    decisions: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class Delivered:
    """The result of delivering one channel batch."""

    window_key: str
    channel: str
    record: bytes
    results: tuple[BranchResult, ...]


def rejected(rec: SourceRecord, rejection: Rejection) -> bytes:
    """Return the DLQ record of an input record that failed validation.

    It carries the record's traceparent when it had a valid one, else a root derived from
    the event id (or, without one, from the record's bytes): every DLQ record has a trace.
    """
    return dlq_record(
        rec.raw,
        rejection.reason,
        rejection.detail,
        rejection.stage,
        rec.topic,
        rec.partition,
        rec.offset,
        event_id=rejection.event_id,
        traceparent=traceparent_of_raw(rec.raw, rejection.event_id),
    )


def traced(event: Event) -> Event:
    """Return ``event`` with a valid, canonical traceparent (a derived root when absent or invalid).

    The root's ids are derived from the event id (``udfs.tracing.new_root``), so an event
    replayed after a failover gets the same trace and the outputs stay identical.
    """
    tp = event.traceparent
    if is_canonical(tp):
        return event
    return with_traceparent(event, ensure_traceparent(tp, event.event_id))


def route_batch(
    records: Iterable[SourceRecord],
    window: Window,
    rules: RuleSet,
    cfg: StageConfig,
    *,
    log_decisions: bool = True,
) -> Routed:
    """Validate, route and batch the records of one window; invalid ones become DLQ records.

    ``log_decisions=False`` leaves ``Routed.decisions`` empty: building the per-event log
    dicts costs ~1.7 us per event (measured), more than the tracing, and only the decision
    log (``events.log_decisions``) reads them.
    """
    plans: list[Plan] = []
    dlq: list[bytes] = []
    decisions: list[dict[str, Any]] = []
    per_channel: dict[str, list[DeliveryItem]] = {}
    limits = cfg.limits
    for rec in records:
        parsed = parse_event(rec.raw, limits)
        if not isinstance(parsed, Event):
            dlq.append(rejected(rec, parsed))
            continue
        tp = parsed.traceparent
        if not is_canonical(tp):  # absent or invalid: a new root derived from the event id
            tp = ensure_traceparent(tp, parsed.event_id)
            parsed = with_traceparent(parsed, tp)
        decision = decide(parsed, rules)
        plans.append(plan_from_decision(parsed, decision, late=window.late))
        if log_decisions:
            fields = decision.log_fields()
            fields["trace_id"] = tp[3:35]
            decisions.append(fields)
        for ch in decision.channels:
            per_channel.setdefault(ch, []).append(item_for(parsed, ch, address_for(parsed, ch, rules)))
    batches: list[Batch] = []
    for ch in sorted(per_channel):
        batches.extend(
            make_batches(
                per_channel[ch],
                window.region,
                ch,
                window.start_ms,
                window.end_ms,
                cfg.max_batch_size,
                ch in cfg.digest_channels,
                window.batch_prefix,
            )
        )
    return Routed(window, tuple(plans), tuple(batches), tuple(dlq), tuple(decisions))


def deliver_to_topic(batch: Batch, window_key: str, now_ms: int) -> Delivered:
    """Deliver a batch by writing it to its channel topic (the transactional sink commits it).

    Every (event, channel) in the batch is DELIVERED once the record is emitted; the
    resilient provider delivery replaces this function without changing the graph.
    """
    results = tuple(
        BranchResult(
            eid,
            batch.channel,
            BranchStatus.DELIVERED,
            1,
            max(0, now_ms - msg.occurred_at_ms),
            None,
            now_ms,
            batch.batch_id,
        )
        for msg in batch.items
        for eid in msg.event_ids
    )
    return Delivered(window_key, batch.channel, batch_to_json(batch), results)


def topic_batch_span(batch: Batch, window_key: str, now_ms: int) -> BatchSpan:
    """Return the span of a batch delivered by writing it to its channel topic (no provider)."""
    n = len(batch.items)
    return BatchSpan(
        batch.channel,
        batch.batch_id,
        batch.region,
        window_key,
        now_ms,
        now_ms,
        "delivered",
        1,
        n,
        0,
        span_messages(batch),
    )


# --- windowed metrics per (region, channel, event-time window) -------------------------------
@fast_pickle
@dataclass(frozen=True, slots=True)
class BatchMetrics:
    """One delivered batch's contribution to its (region, channel, window) metrics."""

    key: str
    region: str
    channel: str
    window_start_ms: int
    window_end_ms: int
    accumulator: MetricsAccumulator


def batch_metrics(
    batch: Batch, results: Sequence[BranchResult], window_ms: int, observe: bool = True
) -> BatchMetrics:
    """Return a batch's metrics, placed in the tumbling window that contains its window start.

    ``observe`` adds the batch's size to the batch-size statistics: once per batch, also
    when its results arrive in several steps (retries).
    """
    start = batch.window_start_ms - batch.window_start_ms % window_ms
    acc = MetricsAccumulator()
    if observe:
        acc.add(BatchObservation(len(batch.items)))
    for result in results:
        acc.add(result)
    key = f"{batch.region}|{batch.channel}|{start}"
    return BatchMetrics(key, batch.region, batch.channel, start, start + window_ms, acc)


def metrics_json(m: BatchMetrics, acc: MetricsAccumulator, late: bool) -> str:
    """Return the ``notifications.metrics`` record of a window (``late``: after it was emitted)."""
    window = WindowMetrics(m.region, m.channel, m.window_start_ms, m.window_end_ms, acc.result())
    return orjson.dumps({**metrics_to_dict(window), "late": late}).decode()


# --- fan-in over one window key -------------------------------------------------------------
FanInStates = dict[str, FanInState]
"""The fan-in state of one window key: the per-event state machines of ``udfs.fanin``."""


def fanin_plans(
    states: FanInStates, plans: Sequence[Plan], now_ms: int, timeout_ms: int
) -> tuple[list[Outcome], list[int]]:
    """Apply the plans of a window batch; return outcomes to emit and timers to register."""
    outcomes: list[Outcome] = []
    timers: list[int] = []
    for plan in plans:
        state, out, tms, clear = fanin.on_plan(states.get(plan.event_id), plan, now_ms, timeout_ms)
        _store(states, plan.event_id, state, clear)
        outcomes.extend(out)
        timers.extend(tms)
    return outcomes, timers


def fanin_results(
    states: FanInStates, results: Sequence[BranchResult], now_ms: int
) -> tuple[list[Outcome], list[int]]:
    """Apply the branch results of one delivered batch."""
    outcomes: list[Outcome] = []
    timers: list[int] = []
    for result in results:
        state, out, tms, clear = fanin.on_result(states.get(result.event_id), result, now_ms)
        _store(states, result.event_id, state, clear)
        outcomes.extend(out)
        timers.extend(tms)
    return outcomes, timers


def fanin_timer(states: FanInStates, now_ms: int) -> tuple[list[Outcome], list[int]]:
    """Fire the timers due at ``now_ms`` for every event of the window key.

    Only the events whose deadline has come are touched, and only the timers they set are
    returned. Every deadline was returned as a timer when it was set, and Flink keeps (and
    checkpoints) a registered timer until it fires, so the other events' timers are still
    registered. Returning them again cost a pass over the key's events per timer, and a
    window key gets one timer per input (about 5% of the job's Python time in
    ``profile-fanout-s6-gil.md``).
    """
    outcomes: list[Outcome] = []
    timers: list[int] = []
    due = [e for e, s in states.items() if s.deadline_ms is not None and s.deadline_ms <= now_ms]
    for event_id in due:
        new, out, tms, clear = fanin.on_timer(states[event_id], now_ms)
        _store(states, event_id, new, clear)
        outcomes.extend(out)
        timers.extend(tms)
    return outcomes, timers


# The fan-in's state is a journal: instead of re-pickling a window key's whole dict of
# per-event states after every branch result (13 writes of ~1,700 events per window key at
# 20k events/s: the top Python cost in the profile), the operator keeps the dict in memory
# and appends only each input to a list state. After a restore the dict is rebuilt by
# replaying the journal through the same transitions, with the times they ran at.
JournalEntry = tuple[Any, ...]
"""``("plans", now_ms, timeout_ms, plans)``, ``("results", now_ms, results)``,
``("timer", now_ms)`` or ``("snapshot", states)``; plans and results :func:`pack`-ed."""


def pack(items: Sequence[Plan] | Sequence[BranchResult]) -> bytes:
    """Pickle a window batch's plans or a delivered batch's results for the fan-in.

    They cross the edge as these bytes and the fan-in journals the same bytes: before, the
    journal pickled again every plan and result the edge had just unpickled (about a ninth
    of the job's pickle time, measured).
    """
    return pickle.dumps(items, pickle.HIGHEST_PROTOCOL)


def _unpack(payload: Any) -> Any:
    # journal entries written before ``pack`` hold the objects themselves
    return pickle.loads(payload) if isinstance(payload, bytes) else payload


def fanin_apply(states: FanInStates, entry: JournalEntry) -> tuple[list[Outcome], list[int]]:
    """Apply one journal entry to ``states``; return outcomes and timers (as the live call did).

    The plans and results of an entry are :func:`pack`-ed bytes, or (older journals) objects.
    """
    kind = entry[0]
    if kind == "plans":
        return fanin_plans(states, _unpack(entry[3]), entry[1], entry[2])
    if kind == "results":
        return fanin_results(states, _unpack(entry[2]), entry[1])
    if kind == "timer":
        return fanin_timer(states, entry[1])
    if kind == "snapshot":
        states.clear()
        states.update(entry[1])
        return [], []
    raise ValueError(f"unknown fan-in journal entry {kind!r}")


def fanin_replay(entries: Iterable[JournalEntry]) -> FanInStates:
    """Rebuild a window key's states from its journal (outcomes were emitted before: dropped)."""
    states: FanInStates = {}
    for entry in entries:
        fanin_apply(states, entry)
    return states


def fanin_settled(states: FanInStates) -> bool:
    """Return True when every event's outcome is final (only tombstones are left).

    Then the journal can be compacted into one snapshot of these small states.
    """
    return all(s.done for s in states.values())


def _store(states: FanInStates, event_id: str, state: FanInState | None, clear: bool) -> None:
    if clear or state is None:
        states.pop(event_id, None)
    else:
        states[event_id] = state


# --- linear mode: one event, its channels one after another ---------------------------------
@dataclass(frozen=True, slots=True)
class LinearResult:
    """What the sequential chain produced for one record."""

    dlq: bytes | None = None
    channel_records: tuple[tuple[str, bytes], ...] = ()
    outcome: Outcome | None = None
    decision: dict[str, Any] | None = None
    batches: tuple[Batch, ...] = ()


@dataclass(slots=True)
class LinearPlan:
    """One record's sequential plan: a DLQ record, or its fan-in state and one batch per channel."""

    dlq: bytes | None = None
    state: FanInState | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    batches: tuple[Batch, ...] = ()
    decision: dict[str, Any] | None = None


def plan_linear(rec: SourceRecord, rules: RuleSet, cfg: StageConfig, now_ms: int) -> LinearPlan:
    """Validate and route one record; return its fan-in state and a one-message batch per channel."""
    parsed = parse_event(rec.raw, cfg.limits)
    if not isinstance(parsed, Event):
        return LinearPlan(dlq=rejected(rec, parsed))
    parsed = traced(parsed)
    decision = decide(parsed, rules)
    plan = plan_from_decision(parsed, decision)
    state, outcomes, _, _ = fanin.on_plan(None, plan, now_ms, cfg.fanin_timeout_ms)
    batches = []
    for ch in decision.channels:
        item = item_for(parsed, ch, address_for(parsed, ch, rules))
        (batch,) = make_batches(
            [item], parsed.region, ch, parsed.occurred_at_ms, parsed.occurred_at_ms, 1, False, parsed.event_id
        )
        batches.append(batch)
    fields = decision.log_fields()
    fields["trace_id"] = trace_id_of(parsed.traceparent)
    return LinearPlan(None, state, outcomes, tuple(batches), fields)


def linear_results(plan: LinearPlan, results: Iterable[BranchResult], now_ms: int) -> None:
    """Fold one channel's branch results into the sequential plan (its outcome when complete)."""
    for result in results:
        plan.state, out, _, _ = fanin.on_result(plan.state, result, now_ms)
        plan.outcomes.extend(out)


def deliver_linear(rec: SourceRecord, rules: RuleSet, cfg: StageConfig, now_ms: int) -> LinearResult:
    """Validate, route and deliver one event's channels sequentially (to the channel topics)."""
    plan = plan_linear(rec, rules, cfg, now_ms)
    if plan.dlq is not None:
        return LinearResult(dlq=plan.dlq)
    records: list[tuple[str, bytes]] = []
    for batch in plan.batches:
        delivered = deliver_to_topic(batch, batch.event_ids[0], now_ms)
        records.append((batch.channel, delivered.record))
        linear_results(plan, delivered.results, now_ms)
    outcome = plan.outcomes[0] if plan.outcomes else None
    return LinearResult(None, tuple(records), outcome, plan.decision, plan.batches)


def outcome_json(outcome: Outcome) -> str:
    """Return the outcome record as a str (what the Kafka sinks take)."""
    return fanin.outcome_to_json(outcome).decode()


def log_decision(logger: logging.Logger, fields: dict[str, Any]) -> None:
    """Log one routing decision as a structured line (event id, trace id, channels, rule; no PII)."""
    rest = {k: v for k, v in fields.items() if k not in ("event_id", "trace_id")}
    logger.info("route", extra=event_extra(fields.get("event_id"), fields.get("trace_id"), **rest))
