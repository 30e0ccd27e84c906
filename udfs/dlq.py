"""Dead-letter records for ``notifications.dlq``: invalid input and exhausted deliveries.

Schema (one JSON object per record, UTF-8)::

    {
      "reason":       "malformed_json",          # machine code (see udfs.events, delivery)
      "stage":        "validate",                # validate | route | deliver | fanin | ...
      "detail":       "input is not valid JSON", # human sentence, never a PII value
      "original":     "<input as text>",         # the original bytes as UTF-8 text, or
      "original_b64": "gAAB...",                 # ... base64 when they are not valid UTF-8
      "source":       {"topic": "notifications.events", "partition": 0, "offset": 42},
      "event_id":     "b7c1...",                 # present only when known
      "traceparent":  "00-<trace>-<span>-01",    # the event's (validate) or the branch's span
      "trace_id":     "<trace>",                 #   (deliver); present when given
      "parent_traceparent": "00-...",            # deliver only: the event's traceparent
      "extra":        {"attempts": 5},           # optional, caller-supplied, no PII
      "dlq_at_ms":    1795885200123              # when the record was dead-lettered
    }

Exactly one of ``original`` / ``original_b64`` is present. ``source`` is always present;
its members are null when unknown (e.g. the embedded generator). The original bytes may
contain PII: the DLQ topic is a data store with restricted access, not a log; use
:func:`dlq_log_fields` for logging. :func:`original_bytes` recovers the exact input bytes
for replay.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson


def _event_id_of(raw: bytes | str) -> str | None:
    """Best-effort event_id extraction from a rejected record (error path only)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is dict:
        eid = obj.get("event_id")
        if type(eid) is str and eid:
            return eid
    return None


def dlq_record(
    raw: bytes | str,
    reason: str,
    detail: str,
    stage: str,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    extra: dict[str, Any] | None = None,
    *,
    event_id: str | None = None,
    now_ms: int | None = None,
    traceparent: str | None = None,
    parent_traceparent: str | None = None,
) -> bytes:
    """Build one DLQ record (JSON bytes) carrying the original bytes and where they came from.

    ``event_id`` is taken from the argument or, when absent, extracted from ``raw`` if it is
    a JSON object with a string ``event_id``. ``now_ms`` defaults to the wall clock.
    ``traceparent`` (canonical, see ``udfs.tracing``) adds ``traceparent`` and ``trace_id``;
    ``parent_traceparent`` names the event's span when ``traceparent`` is a branch's child.
    """
    rec: dict[str, Any] = {"reason": reason, "stage": stage, "detail": detail}
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    try:
        rec["original"] = bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        rec["original_b64"] = base64.b64encode(raw).decode("ascii")
    rec["source"] = {"topic": topic, "partition": partition, "offset": offset}
    eid = event_id if event_id is not None else _event_id_of(raw)
    if eid is not None:
        rec["event_id"] = eid
    if traceparent:
        rec["traceparent"] = traceparent
        rec["trace_id"] = traceparent[3:35]
    if parent_traceparent:
        rec["parent_traceparent"] = parent_traceparent
    if extra:
        rec["extra"] = extra
    rec["dlq_at_ms"] = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    # default=str: a caller's odd ``extra`` value must not turn a DLQ write into a crash.
    return orjson.dumps(rec, default=str, option=orjson.OPT_NON_STR_KEYS)


def parse_dlq_record(raw: bytes) -> dict[str, Any] | None:
    """Parse a DLQ record back into a dict; None if it is not a DLQ record."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict or "reason" not in obj or "stage" not in obj:
        return None
    if "original" not in obj and "original_b64" not in obj:
        return None
    return obj


def original_bytes(record: dict[str, Any]) -> bytes:
    """Return the exact original input bytes held by a parsed DLQ record (for replay)."""
    if "original" in record:
        text: str = record["original"]
        return text.encode("utf-8")
    return base64.b64decode(record["original_b64"])


def dlq_log_fields(record: dict[str, Any]) -> dict[str, Any]:
    """Return the loggable fields of a parsed DLQ record: everything except the original."""
    return {k: v for k, v in record.items() if k not in ("original", "original_b64")}
