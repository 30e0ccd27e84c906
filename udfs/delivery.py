"""Provider delivery of one channel batch, as pure state transitions (no I/O, no clock).

The ``deliver-<channel>`` operator keeps one :class:`PendingBatch` per batch in keyed state
(key = batch id). Each provider call sends the batch's not-yet-terminal messages in one
bulk request; :func:`apply_call` folds the answer into the state and says what to emit and
when to try again. The operator (``jobs/fanout.py``) and the dispatcher (``jobs/dispatch.py``)
only load state, call these functions, store, emit and schedule.

Per message::

    not sent ──call──▶ accepted (2xx, or an idempotent replay) ──▶ DELIVERED
                  ├──▶ retryable (timeout, 408, 429, 5xx, connection error) ──▶ again after
                  │      next_delay(policy, attempts, Retry-After)  (full jitter by default)
                  │      ... or DEAD_LETTERED "retries_exhausted" after maximum_attempts
                  └──▶ non-retryable (other 4xx, or an error in non_retryable_errors)
                         ──▶ DEAD_LETTERED "non_retryable"

Attempts count calls that reached the provider or timed out; a call deferred by the
circuit breaker or the rate limiter is not an attempt (deferred, not failed).

Example::

    pb = new_pending("eu-west|0|0", batch, now_ms=0)
    bodies = request_bodies(pb, address_fields)          # what to POST to /v1/<ch>/bulk
    step = apply_call(pb, sent, call_result, policy, rng, now_ms=25)
    step.results, step.dead, step.retry_at_ms            # emit, dead-letter, schedule
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import yaml

from udfs.batching import Batch, Message, batch_header, message_fields, message_traceparent, span_messages
from udfs.breaker import BreakerConfig
from udfs.delivery_policy import ErrorClass, RetryPolicy, classify, next_delay
from udfs.dlq import dlq_record
from udfs.events import fast_pickle
from udfs.fanin import BranchResult, BranchStatus
from udfs.tracing import BatchSpan, batch_status

__all__ = [
    "CallResult",
    "ChannelPolicy",
    "MessageResult",
    "PendingBatch",
    "Step",
    "apply_call",
    "call_result_from_response",
    "load_policies",
    "new_pending",
    "request_bodies",
]

RETRIES_EXHAUSTED = "retries_exhausted"
NON_RETRYABLE = "non_retryable"


@dataclass(frozen=True)
class ChannelPolicy:
    """How one channel delivers: retries, breaker, throttling, timeouts and concurrency."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    request_timeout_s: float = 5.0
    max_in_flight: int = 8
    max_pending_batches: int = 10_000
    rate_limit_per_s: float = 0.0
    rate_limit_burst: float = 0.0

    def __post_init__(self) -> None:
        """Validate the scalar fields; raise ``ValueError`` naming the field."""
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        for name in ("max_in_flight", "max_pending_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("rate_limit_per_s", "rate_limit_burst"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChannelPolicy:
        """Build a policy from a mapping (``retry`` and ``breaker`` nested); unknown keys are errors."""
        known = {"retry", "breaker", *(f for f in cls.__dataclass_fields__ if f not in ("retry", "breaker"))}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown delivery policy key(s) {', '.join(unknown)}; allowed: {sorted(known)}")
        scalars = {k: v for k, v in d.items() if k not in ("retry", "breaker")}
        return cls(
            retry=RetryPolicy.from_dict(d.get("retry") or {}),
            breaker=BreakerConfig.from_dict(d.get("breaker") or {}),
            **scalars,
        )


def _merge(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_policies(source: str | Mapping[str, Any], channels: Sequence[str]) -> dict[str, ChannelPolicy]:
    """Load ``conf/delivery.yaml`` (``defaults`` + per-channel overrides) for ``channels``.

    ``source`` is a YAML file path or an already-parsed mapping. Raises ``ValueError``
    naming the channel and key on a bad value.
    """
    if isinstance(source, str):
        with open(source, encoding="utf-8") as fh:
            tree = yaml.safe_load(fh) or {}
    else:
        tree = dict(source)
    unknown = sorted(set(tree) - {"defaults", "channels"})
    if unknown:
        raise ValueError(
            f"unknown delivery config section(s) {', '.join(unknown)} (known: defaults, channels)"
        )
    defaults = tree.get("defaults") or {}
    per_channel = tree.get("channels") or {}
    out: dict[str, ChannelPolicy] = {}
    for ch in channels:
        try:
            out[ch] = ChannelPolicy.from_dict(_merge(defaults, per_channel.get(ch) or {}))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"delivery policy of channel {ch!r}: {exc}") from exc
    return out


# --- the state of one batch ------------------------------------------------------------------
@dataclass
class PendingBatch:
    """Keyed state of ``deliver-<channel>`` for one batch (lists are per message index)."""

    window_key: str
    batch: Batch
    attempts: list[int]
    done: list[bool]
    last_error: list[str | None]
    next_due_ms: int
    created_ms: int
    observed: bool = False  # the batch-size observation went into the metrics already
    # messages given up on so far (the batch span's status); a class default, so state
    # pickled before this field existed restores with 0
    dead_lettered: int = 0

    @property
    def open_indexes(self) -> list[int]:
        """Return the indexes of messages that still need a provider call."""
        return [i for i, d in enumerate(self.done) if not d]

    @property
    def complete(self) -> bool:
        """Return True once every message is DELIVERED or DEAD_LETTERED."""
        return all(self.done)


def new_pending(window_key: str, batch: Batch, now_ms: int) -> PendingBatch:
    """Return the state of a batch that has just arrived (due at once)."""
    n = len(batch.items)
    return PendingBatch(window_key, batch, [0] * n, [False] * n, [None] * n, now_ms, now_ms)


def request_bodies(
    pb: PendingBatch, indexes: Sequence[int], address_field: str | None
) -> list[dict[str, Any]]:
    """Return the bulk request messages for ``indexes`` (each carries its idempotency key).

    Each message carries ``traceparent``: the branch's span for it (a child of the event's
    span), so the provider's spans join the event's trace.
    """
    out = []
    for i in indexes:
        m = pb.batch.items[i]
        body: dict[str, Any] = {
            "idempotency_key": m.idempotency_key,
            "to": m.address,
            "user_id": m.user_id,
            "event_ids": list(m.event_ids),
            "payloads": list(m.payloads),
            "traceparent": message_traceparent(m),
        }
        if address_field:
            body[address_field] = m.address
        out.append(body)
    return out


# --- what a call returned ------------------------------------------------------------------
@fast_pickle
@dataclass(frozen=True, slots=True)
class MessageResult:
    """The provider's answer for one message of a bulk call."""

    status: int
    error: str | None = None
    provider_id: str | None = None
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class CallResult:
    """One bulk call's answer, transport-neutral.

    ``status`` None = no HTTP answer (``error`` is ``timeout`` or ``connection_error``).
    ``messages`` holds one result per sent message when the call was answered 2xx.
    """

    status: int | None
    error: str | None = None
    retry_after_s: float | None = None
    messages: tuple[MessageResult, ...] = ()
    latency_ms: int = 0


def call_result_from_response(response: Any, sent: int, latency_ms: int) -> CallResult:
    """Convert a ``udfs.provider_client.ProviderResponse`` of a bulk call into a CallResult."""
    status = response.status
    body = response.body if isinstance(response.body, dict) else {}
    if status is not None and 200 <= status < 300:
        results = body.get("results")
        if not isinstance(results, list) or len(results) != sent:
            # An answer we cannot attribute to messages: retry them all (idempotency keys
            # make that safe), classified as a provider error.
            return CallResult(502, "bad_bulk_reply", None, (), latency_ms)
        msgs = tuple(
            MessageResult(
                int(r.get("status", 502)) if isinstance(r, dict) else 502,
                r.get("error") if isinstance(r, dict) else "bad_result",
                r.get("id") if isinstance(r, dict) else None,
                bool(r.get("replayed")) if isinstance(r, dict) else False,
            )
            for r in results
        )
        return CallResult(status, None, response.retry_after_s, msgs, latency_ms)
    return CallResult(status, response.error_code, response.retry_after_s, (), latency_ms)


# --- folding an answer into the state ------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message given up on: why, after how many attempts."""

    message: Message
    reason: str
    error: str
    attempts: int


@dataclass(frozen=True, slots=True)
class Step:
    """What one call (or its absence) changed: emit these, retry at ``retry_at_ms``."""

    results: tuple[BranchResult, ...] = ()
    delivered: tuple[tuple[Message, int, str | None, bool], ...] = ()  # (msg, attempts, id, replayed)
    dead: tuple[DeadLetter, ...] = ()
    retry_at_ms: int | None = None
    call_failed: bool = False
    retried: int = 0


def apply_call(
    pb: PendingBatch,
    sent: Sequence[int],
    call: CallResult,
    policy: RetryPolicy,
    rng: random.Random,
    now_ms: int,
) -> Step:
    """Fold the answer to a bulk call of messages ``sent`` into ``pb`` (mutated) and return the step.

    A call-level failure (no answer, non-2xx) applies to every sent message. The breaker
    sees ``call_failed``: True when the call failed as a whole or every message in it
    failed retryably (a provider that is down), False otherwise (a 20% error rate per
    message is the retry policy's job, not the breaker's).
    """
    results: list[BranchResult] = []
    delivered: list[tuple[Message, int, str | None, bool]] = []
    dead: list[DeadLetter] = []
    retry_delays: list[float] = []
    batch = pb.batch
    answered = call.status is not None and 200 <= call.status < 300
    retryable_count = 0
    for n, i in enumerate(sent):
        if pb.done[i]:
            continue
        msg = batch.items[i]
        pb.attempts[i] += 1
        attempts = pb.attempts[i]
        status: int | None
        if answered:
            mr = call.messages[n]
            status, error = mr.status, mr.error
            cls = classify(status, error, False, policy)
        else:
            mr = None
            status, error = call.status, call.error
            cls = classify(status, error, status is None, policy)
        if cls is ErrorClass.SUCCESS:
            pb.done[i] = True
            delivered.append((msg, attempts, mr.provider_id if mr else None, bool(mr and mr.replayed)))
            results.extend(_results(batch, msg, BranchStatus.DELIVERED, attempts, None, now_ms))
            continue
        label = _error_label(status, error)
        pb.last_error[i] = label
        if cls is ErrorClass.NON_RETRYABLE:
            pb.done[i] = True
            dead.append(DeadLetter(msg, NON_RETRYABLE, label, attempts))
            results.extend(_results(batch, msg, BranchStatus.DEAD_LETTERED, attempts, label, now_ms))
            continue
        retryable_count += 1
        delay = next_delay(policy, attempts, rng, call.retry_after_s)
        if delay is None:
            pb.done[i] = True
            dead.append(DeadLetter(msg, RETRIES_EXHAUSTED, label, attempts))
            results.extend(_results(batch, msg, BranchStatus.DEAD_LETTERED, attempts, label, now_ms))
            continue
        retry_delays.append(delay)
    retry_at = None
    if retry_delays and not pb.complete:
        # One bulk call carries every open message: wait for the longest drawn delay, so no
        # message is retried sooner than its own schedule (and Retry-After) allows.
        retry_at = now_ms + int(max(retry_delays) * 1000)
        pb.next_due_ms = retry_at
    call_failed = not answered or (retryable_count > 0 and retryable_count == len(sent))
    pb.dead_lettered += len(dead)
    return Step(tuple(results), tuple(delivered), tuple(dead), retry_at, call_failed, len(retry_delays))


def _error_label(status: int | None, error: str | None) -> str:
    if error:
        return f"{status}:{error}" if status is not None else error
    return f"http_{status}" if status is not None else "no_answer"


def _results(
    batch: Batch, msg: Message, status: BranchStatus, attempts: int, error: str | None, now_ms: int
) -> list[BranchResult]:
    latency = max(0, now_ms - msg.occurred_at_ms)
    return [
        BranchResult(eid, batch.channel, status, attempts, latency, error, now_ms, batch.batch_id)
        for eid in msg.event_ids
    ]


def batch_span(pb: PendingBatch, end_ms: int) -> BatchSpan:
    """Return the span of a finished batch (provider path): from arrival to its last answer."""
    b = pb.batch
    dead = pb.dead_lettered
    delivered = len(b.items) - dead
    return BatchSpan(
        b.channel,
        b.batch_id,
        b.region,
        pb.window_key,
        pb.created_ms,
        end_ms,
        batch_status(delivered, dead),
        max(pb.attempts, default=0),
        delivered,
        dead,
        span_messages(b),
    )


# --- records the operator emits --------------------------------------------------------------
def delivery_record(pb: PendingBatch, step: Step, now_ms: int) -> bytes | None:
    """Return the ``notifications.<channel>`` record of the messages this step delivered (or None).

    Same shape as ``batching.batch_to_json`` (``traceparent`` = the branch's span,
    ``parent_traceparent`` = the event's) plus, per message, ``attempts``,
    ``provider_message_id`` and ``replayed``; it contains addresses (PII): it is data,
    never a log line.
    """
    if not step.delivered:
        return None
    messages = [
        {**message_fields(m), "attempts": attempts, "provider_message_id": pid, "replayed": replayed}
        for m, attempts, pid, replayed in step.delivered
    ]
    header = batch_header(pb.batch, len(step.delivered))
    return orjson.dumps({**header, "delivered_at_ms": now_ms, "messages": messages})


def redrive_event(msg: Message, event_id: str, index: int, region: str, address_field: str | None) -> dict:
    """Rebuild an input event for one dead-lettered (event, channel) so it can be redriven.

    It keeps the event id (the provider's idempotency key stays ``event_id:channel``) and
    carries only the failed channel's address, so a redrive reaches that channel only.
    """
    payload = msg.payloads[index] if index < len(msg.payloads) else {}
    recipient: dict[str, Any] = {}
    if address_field:
        recipient[address_field] = msg.address
        if address_field == "push_token":
            recipient["app_installed"] = True
    occurred = datetime.fromtimestamp(msg.occurred_at_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    return {
        "event_id": event_id,
        "type": payload.get("type", "unknown"),
        "user_id": msg.user_id,
        "region": region,
        "priority": payload.get("priority", "normal"),
        "occurred_at": occurred.replace("+00:00", "Z"),
        "recipient": recipient,
        "payload": payload.get("data", {}),
        "traceparent": msg.traceparent,
    }


def dead_letter_records(
    pb: PendingBatch, step: Step, stage: str, address_field: str | None, now_ms: int
) -> list[bytes]:
    """Return one DLQ record per dead-lettered (event, channel) of this step.

    ``original`` is the rebuilt input event (see :func:`redrive_event`; it keeps the event's
    traceparent, so a redrive continues the trace); ``extra`` names the channel, attempts,
    last error, batch and idempotency key; ``traceparent`` is the branch's span for the
    message and ``parent_traceparent`` the event's.
    """
    out = []
    b = pb.batch
    for d in step.dead:
        for index, eid in enumerate(d.message.event_ids):
            event = redrive_event(d.message, eid, index, b.region, address_field)
            extra = {
                "channel": b.channel,
                "attempts": d.attempts,
                "last_error": d.error,
                "batch_id": b.batch_id,
                "idempotency_key": d.message.idempotency_key,
                "window_key": pb.window_key,
            }
            out.append(
                dlq_record(
                    orjson.dumps(event),
                    d.reason,
                    d.error,
                    stage,
                    extra=extra,
                    event_id=eid,
                    now_ms=now_ms,
                    traceparent=message_traceparent(d.message),
                    parent_traceparent=d.message.traceparent,
                )
            )
    return out
