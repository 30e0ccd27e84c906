"""Notification events: the input data contract, parsed and validated per record.

Contract (JSON object, UTF-8, on ``notifications.events``, key = ``user_id``)::

    {"event_id": "b7c1…", "type": "order_shipped", "user_id": "u-42", "region": "eu-west",
     "priority": "high", "occurred_at": "2026-11-28T17:00:00.123Z",
     "recipient": {"email": "a@example.com", "phone": "+1555…", "push_token": "…",
                   "app_installed": true, "opt_out": ["sms"]},
     "payload": {"order_id": "o-1"}, "traceparent": "00-…-…-01"}

Required: ``event_id``, ``type``, ``user_id`` (non-empty strings), ``region`` and
``priority`` (strings from :class:`ValidationLimits`), ``occurred_at`` (ISO-8601 with an
explicit UTC offset: ``Z`` or ``+00:00``, fraction optional) and ``recipient`` (object).
Optional: ``payload`` (object, default ``{}``), ``traceparent`` (string or null), and in
``recipient`` the addresses (string or null), ``app_installed`` (bool, default false) and
``opt_out`` (list of known channels, default empty). Unknown top-level keys are ignored.

``traceparent`` is kept as given: a string that is not a valid W3C traceparent does not
reject the event (tracing must never lose a notification); the router replaces it, or an
absent one, by a new root (``udfs.tracing.ensure_traceparent``, :func:`with_traceparent`).
A non-string ``traceparent`` breaks the contract's type and is rejected (``wrong_type``).

:func:`parse_event` never raises for bad input: it returns a :class:`Rejection` whose
``reason`` is a short machine code and whose ``detail`` names the field but never a PII
value. Addresses (email, phone, push token) are PII: they are excluded from ``repr`` and
from :func:`event_log_fields`.

Example::

    limits = ValidationLimits()              # build once
    ev = parse_event(raw_bytes, limits)      # per record: Event | Rejection
    if isinstance(ev, Rejection):
        side_output(dlq_record(raw_bytes, ev.reason, ev.detail, ev.stage))
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from types import MemberDescriptorType
from typing import Any, Final, TypeVar

import orjson

# Rejection reasons (machine codes; stable, used in DLQ records and metrics).
OVERSIZED: Final = "oversized"
NOT_UTF8: Final = "not_utf8"
MALFORMED_JSON: Final = "malformed_json"
NOT_AN_OBJECT: Final = "not_an_object"
MISSING_FIELD: Final = "missing_field"
WRONG_TYPE: Final = "wrong_type"
UNKNOWN_REGION: Final = "unknown_region"
UNKNOWN_PRIORITY: Final = "unknown_priority"
UNKNOWN_CHANNEL: Final = "unknown_channel"
BAD_TIMESTAMP: Final = "bad_timestamp"

VALIDATE_STAGE: Final = "validate"

DEFAULT_REGIONS: Final = frozenset({"eu-west", "us-east", "ap-south"})
DEFAULT_CHANNELS: Final = frozenset({"email", "sms", "push"})
DEFAULT_PRIORITIES: Final = frozenset({"low", "normal", "high", "critical"})

_T = TypeVar("_T")

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)
_ZERO: Final = timedelta(0)
_UTC: Final = UTC


@dataclass(frozen=True, slots=True)
class Recipient:
    """Where an event may be delivered; addresses are PII and hidden from ``repr``."""

    email: str | None = field(default=None, repr=False)
    phone: str | None = field(default=None, repr=False)
    push_token: str | None = field(default=None, repr=False)
    app_installed: bool = False
    opt_out: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Event:
    """A validated notification event (see the module docstring for the contract)."""

    event_id: str
    type: str
    user_id: str
    region: str
    priority: str
    occurred_at: str
    occurred_at_ms: int
    recipient: Recipient
    payload: dict[str, Any] = field(default_factory=dict, hash=False)
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    """Bounds applied by :func:`parse_event`; build once, share across calls."""

    max_event_bytes: int = 65536
    regions: frozenset[str] = DEFAULT_REGIONS
    channels: frozenset[str] = DEFAULT_CHANNELS
    priorities: frozenset[str] = DEFAULT_PRIORITIES


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an input record was refused; ``detail`` never contains PII values."""

    reason: str
    detail: str
    stage: str = VALIDATE_STAGE
    event_id: str | None = None


_MAKERS: dict[type, Callable[..., Any]] = {}


def _rebuild(cls: type[_T], values: tuple[Any, ...]) -> _T:
    """Unpickle a :func:`fast_pickle` object (module level, so pickles name it by reference)."""
    make = _MAKERS.get(cls)
    if make is None:
        make = _MAKERS[cls] = fast_constructor(cls)
    return make(*values)


def fast_pickle(cls: type[_T]) -> type[_T]:
    """Class decorator: pickle a slots dataclass as ``(_rebuild, (cls, field values))``.

    Python 3.11 pickles slots dataclasses through ``_dataclass_getstate``/``setstate``, which
    call ``dataclasses.fields`` on every object: the profile of the job showed them among the
    top Python frames (every PICKLED stream and keyed state pickles these objects). A C
    ``attrgetter`` plus the positional constructor is about 2x faster both ways (measured in
    docs/benchmarks.md). Pickles written before this existed still load (``__setstate__`` is
    untouched); apply it above ``@dataclass``.
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    get = operator.attrgetter(*names)
    if len(names) == 1:

        def __reduce__(self: Any) -> tuple[Any, ...]:
            return (_rebuild, (cls, (get(self),)))

    else:

        def __reduce__(self: Any) -> tuple[Any, ...]:
            return (_rebuild, (cls, get(self)))

    cls.__reduce__ = __reduce__  # type: ignore[method-assign]
    return cls


def fast_constructor(cls: type[_T]) -> Callable[..., _T]:
    """Return a positional constructor for a frozen slots dataclass that skips ``__init__``.

    The dataclass-generated ``__init__`` of a frozen class calls ``object.__setattr__``
    once per field (~150 ns each). The returned function takes every field positionally,
    in declaration order, and stores each slot through its descriptor: same object, about
    half the cost on per-event paths. No defaults and no ``__post_init__`` run, so use it
    only where every value is already validated. Assign the result to a precisely typed
    ``Callable`` so call sites stay type-checked.
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    ns: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    params = ", ".join(f"a{i}" for i in range(len(names)))
    lines = [f"def make({params}):", "    o = _new(_cls)"]
    for i, name in enumerate(names):
        slot = cls.__dict__.get(name)
        if not isinstance(slot, MemberDescriptorType):
            raise TypeError(f"{cls.__name__}.{name} is not a slot: use slots=True")
        ns[f"_s{i}"] = slot.__set__
        lines.append(f"    _s{i}(o, a{i})")
    lines.append("    return o")
    exec("\n".join(lines), ns)  # the same technique dataclasses uses to build __init__
    make: Callable[..., _T] = ns["make"]
    make.__qualname__ = f"fast_constructor({cls.__name__})"
    return make


_make_recipient: Callable[[str | None, str | None, str | None, bool, tuple[str, ...]], Recipient]
_make_recipient = fast_constructor(Recipient)
_make_event: Callable[[str, str, str, str, str, str, int, Recipient, dict[str, Any], str | None], Event]
_make_event = fast_constructor(Event)


def parse_timestamp_ms(value: str) -> int | None:
    """Parse an ISO-8601 UTC timestamp (``Z`` or ``+00:00``) to epoch ms, or None."""
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    tz = dt.tzinfo
    if tz is not _UTC and (tz is None or dt.utcoffset() != _ZERO):
        return None
    return (dt - _EPOCH) // _ONE_MS


def format_timestamp_ms(epoch_ms: int) -> str:
    """Format epoch ms as ``YYYY-MM-DDTHH:MM:SS.fffZ`` (the canonical contract form)."""
    dt = _EPOCH + timedelta(milliseconds=epoch_ms)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _reject(reason: str, detail: str, event_id: str | None = None) -> Rejection:
    return Rejection(reason, detail, VALIDATE_STAGE, event_id)


def _decode_failure(raw: bytes | str) -> Rejection:
    """Classify a JSON decode failure as not-UTF-8 or malformed (error path only)."""
    try:
        if isinstance(raw, str):
            raw.encode("utf-8")  # lone surrogates cannot be encoded
        else:
            bytes(raw).decode("utf-8")
    except UnicodeError as exc:
        offset = getattr(exc, "start", 0)
        return _reject(NOT_UTF8, f"input is not valid UTF-8 (offset {offset})")
    return _reject(MALFORMED_JSON, "input is not valid JSON")


def _bad_str(value: Any, key: str, event_id: str | None) -> Rejection:
    """Explain why a required string field was refused (error path only)."""
    if value is None or value == "":
        return _reject(MISSING_FIELD, f"field '{key}' is missing or empty", event_id)
    return _reject(WRONG_TYPE, f"field '{key}' must be a string", event_id)


def _parse_recipient(rec: Any, channels: frozenset[str], event_id: str | None) -> Recipient | Rejection:
    if rec is None:
        return _reject(MISSING_FIELD, "field 'recipient' is missing", event_id)
    if type(rec) is not dict:
        return _reject(WRONG_TYPE, "field 'recipient' must be an object", event_id)
    get = rec.get
    email = get("email")
    phone = get("phone")
    push_token = get("push_token")
    # Type errors name the field only: the value is PII.
    if email is not None and type(email) is not str:
        return _reject(WRONG_TYPE, "field 'recipient.email' must be a string", event_id)
    if phone is not None and type(phone) is not str:
        return _reject(WRONG_TYPE, "field 'recipient.phone' must be a string", event_id)
    if push_token is not None and type(push_token) is not str:
        return _reject(WRONG_TYPE, "field 'recipient.push_token' must be a string", event_id)
    app_installed = get("app_installed", False)
    if app_installed is None:
        app_installed = False
    elif type(app_installed) is not bool:
        return _reject(WRONG_TYPE, "field 'recipient.app_installed' must be a boolean", event_id)
    opt_out_raw = get("opt_out")
    opt_out: tuple[str, ...] = ()
    if opt_out_raw:
        if type(opt_out_raw) is not list:
            return _reject(WRONG_TYPE, "field 'recipient.opt_out' must be a list", event_id)
        for ch in opt_out_raw:
            if type(ch) is not str:
                return _reject(WRONG_TYPE, "field 'recipient.opt_out' must contain strings", event_id)
            if ch not in channels:
                return _reject(
                    UNKNOWN_CHANNEL,
                    f"field 'recipient.opt_out' names unknown channel {ch[:40]!r}",
                    event_id,
                )
        opt_out = tuple(opt_out_raw)
    elif opt_out_raw is not None and opt_out_raw != []:
        return _reject(WRONG_TYPE, "field 'recipient.opt_out' must be a list", event_id)
    return _make_recipient(email, phone, push_token, app_installed, opt_out)


def parse_event(raw: bytes | str, limits: ValidationLimits) -> Event | Rejection:
    """Parse and validate one raw record; return an :class:`Event` or a :class:`Rejection`.

    ``raw`` is the Kafka value as bytes; ``str`` (e.g. from a ``SimpleStringSchema``
    source) is accepted too, its size then being counted in characters.
    """
    if len(raw) > limits.max_event_bytes:
        return _reject(OVERSIZED, f"input is {len(raw)} bytes, limit is {limits.max_event_bytes} bytes")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _decode_failure(raw)
    if type(obj) is not dict:
        return _reject(NOT_AN_OBJECT, "input must be a JSON object")

    get = obj.get
    event_id = get("event_id")
    if type(event_id) is not str or not event_id:
        return _bad_str(event_id, "event_id", None)
    etype = get("type")
    if type(etype) is not str or not etype:
        return _bad_str(etype, "type", event_id)
    user_id = get("user_id")
    if type(user_id) is not str or not user_id:
        return _bad_str(user_id, "user_id", event_id)

    region = get("region")
    if type(region) is not str or region not in limits.regions:
        if region is None or region == "":
            return _reject(MISSING_FIELD, "field 'region' is missing or empty", event_id)
        if type(region) is not str:
            return _reject(WRONG_TYPE, "field 'region' must be a string", event_id)
        return _reject(UNKNOWN_REGION, f"field 'region' has unknown value {region[:40]!r}", event_id)

    priority = get("priority")
    if type(priority) is not str or priority not in limits.priorities:
        if priority is None or priority == "":
            return _reject(MISSING_FIELD, "field 'priority' is missing or empty", event_id)
        if type(priority) is not str:
            return _reject(WRONG_TYPE, "field 'priority' must be a string", event_id)
        return _reject(UNKNOWN_PRIORITY, f"field 'priority' has unknown value {priority[:40]!r}", event_id)

    occurred_at = get("occurred_at")
    if type(occurred_at) is not str:
        if occurred_at is None:
            return _reject(MISSING_FIELD, "field 'occurred_at' is missing", event_id)
        return _reject(WRONG_TYPE, "field 'occurred_at' must be a string", event_id)
    occurred_at_ms = parse_timestamp_ms(occurred_at)
    if occurred_at_ms is None:
        return _reject(
            BAD_TIMESTAMP,
            "field 'occurred_at' must be ISO-8601 in UTC, e.g. 2026-11-28T17:00:00.123Z",
            event_id,
        )

    recipient = _parse_recipient(get("recipient"), limits.channels, event_id)
    if isinstance(recipient, Rejection):
        return recipient

    payload = get("payload")
    if payload is None:
        payload = {}
    elif type(payload) is not dict:
        return _reject(WRONG_TYPE, "field 'payload' must be an object", event_id)

    traceparent = get("traceparent")
    if traceparent is not None and type(traceparent) is not str:
        return _reject(WRONG_TYPE, "field 'traceparent' must be a string", event_id)

    return _make_event(
        event_id,
        etype,
        user_id,
        region,
        priority,
        occurred_at,
        occurred_at_ms,
        recipient,
        payload,
        traceparent,
    )


def with_traceparent(event: Event, traceparent: str) -> Event:
    """Return ``event`` with another traceparent (the router's normalised one)."""
    return _make_event(
        event.event_id,
        event.type,
        event.user_id,
        event.region,
        event.priority,
        event.occurred_at,
        event.occurred_at_ms,
        event.recipient,
        event.payload,
        traceparent,
    )


def recipient_to_dict(recipient: Recipient) -> dict[str, Any]:
    """Return the contract JSON object for a recipient (contains PII; not for logs)."""
    out: dict[str, Any] = {}
    if recipient.email is not None:
        out["email"] = recipient.email
    if recipient.phone is not None:
        out["phone"] = recipient.phone
    if recipient.push_token is not None:
        out["push_token"] = recipient.push_token
    out["app_installed"] = recipient.app_installed
    out["opt_out"] = list(recipient.opt_out)
    return out


def event_to_dict(event: Event) -> dict[str, Any]:
    """Return the contract JSON object for an event; ``parse_event`` of it round-trips."""
    out: dict[str, Any] = {
        "event_id": event.event_id,
        "type": event.type,
        "user_id": event.user_id,
        "region": event.region,
        "priority": event.priority,
        "occurred_at": event.occurred_at,
        "recipient": recipient_to_dict(event.recipient),
        "payload": event.payload,
    }
    if event.traceparent is not None:
        out["traceparent"] = event.traceparent
    return out


def event_to_json(event: Event) -> bytes:
    """Serialise an event to contract JSON bytes (contains PII; not for logs)."""
    return orjson.dumps(event_to_dict(event))


def event_log_fields(event: Event) -> dict[str, Any]:
    """Return the loggable fields of an event: identifiers and flags, never addresses."""
    rec = event.recipient
    return {
        "event_id": event.event_id,
        "type": event.type,
        "user_id": event.user_id,
        "region": event.region,
        "priority": event.priority,
        "occurred_at_ms": event.occurred_at_ms,
        "has_email": bool(rec.email),
        "has_phone": bool(rec.phone),
        "has_push_token": bool(rec.push_token),
        "app_installed": rec.app_installed,
        "opt_out": list(rec.opt_out),
        "traceparent": event.traceparent,
    }


def rejection_log_fields(rejection: Rejection) -> dict[str, Any]:
    """Return the loggable fields of a rejection (it never carries PII values)."""
    return {
        "reason": rejection.reason,
        "stage": rejection.stage,
        "detail": rejection.detail,
        "event_id": rejection.event_id,
    }
