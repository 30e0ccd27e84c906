"""W3C trace context for events, their channel branches, outcomes and DLQ records; batch spans.

Every valid event carries a ``traceparent`` (``00-<trace id>-<span id>-<flags>``). The
router keeps a valid one and replaces an absent or invalid one by a new root whose ids are
derived from the event id (:func:`new_root`): the same event replayed after a failover gets
the same ids, so the exactly-once outputs are identical across replays. Each
``deliver-<channel>`` branch gives every message its own span: a child of the event's span
(same trace id, parent = the event's span id) whose span id is derived from the parent and
the message's idempotency key (:func:`child_of`), again stable across replays and retries.

Validation is OpenTelemetry's :class:`TraceContextTextMapPropagator` (``extract``) and the
canonical form is what its ``inject`` writes. The per-event path avoids building a
``Context`` and a span object per event: a canonical version-00 header (the form every
producer using an OpenTelemetry SDK writes, and the only one this pipeline emits) is
accepted by one anchored regex that admits a strict subset of what the propagator accepts
(``tests/unit/test_tracing.py`` checks the agreement); anything else goes to the propagator.

Spans are exported only when configured (:class:`SpanExport`): one span per delivered
batch per branch, linked to the per-message child spans, never one span per event.

Example::

    tp = ensure_traceparent(event.traceparent, event.event_id)   # valid, canonical
    child = child_of(tp, "e-1:email")                             # the email branch's span
    trace_id_of(child) == trace_id_of(tp)                         # True
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeGuard

import orjson
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "SpanExport",
    "TracingSettings",
    "child_of",
    "ensure_traceparent",
    "is_canonical",
    "new_root",
    "span_id_of",
    "trace_id_of",
    "traceparent_of_raw",
]

PROPAGATOR: Final = TraceContextTextMapPropagator()
_CANONICAL_LEN: Final = 55  # "00-" + 32 + "-" + 16 + "-" + 2
# A strict subset of what the propagator accepts: version 00, lowercase hex, no trailing
# fields or whitespace, and (checked apart: cheaper than look-aheads) non-zero ids.
_CANONICAL: Final = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z")
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16
_regex_match = _CANONICAL.match


_blake2b = hashlib.blake2b


def is_canonical(traceparent: object) -> TypeGuard[str]:
    """Return True for a valid traceparent in the canonical form this pipeline writes."""
    return (
        type(traceparent) is str
        and len(traceparent) == _CANONICAL_LEN
        and _regex_match(traceparent) is not None
        and traceparent[3:35] != _ZERO_TRACE
        and traceparent[36:52] != _ZERO_SPAN
    )


def extract(traceparent: str) -> trace.SpanContext | None:
    """Return the span context of a traceparent per the W3C rules (OpenTelemetry's propagator), or None."""
    ctx = PROPAGATOR.extract({"traceparent": traceparent})
    sc = trace.get_current_span(ctx).get_span_context()
    return sc if sc.is_valid else None


def format_traceparent(sc: trace.SpanContext) -> str:
    """Return the canonical traceparent of a span context (the propagator's ``inject``)."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, trace.set_span_in_context(trace.NonRecordingSpan(sc), Context()))
    return carrier["traceparent"]


def new_root(key: str) -> str:
    """Return a sampled root traceparent whose ids are derived from ``key`` (e.g. the event id).

    Deterministic on purpose: a replayed event gets the same trace, so outputs written again
    after a failover are identical. The ids are 128/64 bits of BLAKE2b, as random-looking as
    the SDK's own; an all-zero id (invalid) is practically impossible and mapped to 1.
    """
    h = _blake2b(key.encode("utf-8", "surrogatepass"), digest_size=24, person=b"notify-root").hexdigest()
    trace_hex = h[:32] if h[:32] != "0" * 32 else f"{1:032x}"
    span_hex = h[32:] if h[32:] != "0" * 16 else f"{1:016x}"
    return f"00-{trace_hex}-{span_hex}-01"


def ensure_traceparent(traceparent: Any, key: str) -> str:
    """Return ``traceparent`` in canonical form when valid, else a new root derived from ``key``.

    The hot path (an event with a canonical header) costs one regex match; a non-canonical
    but valid header (e.g. trailing whitespace, a future version) is re-written by the
    propagator; an absent or invalid one starts a new trace (W3C: restart the trace).
    """
    if type(traceparent) is str:
        if is_canonical(traceparent):
            return traceparent
        sc = extract(traceparent)
        if sc is not None:
            return format_traceparent(sc)
    return new_root(key)


def child_of(parent: str | None, salt: str, key: str | None = None) -> str:
    """Return the traceparent of a child span of ``parent`` (same trace, flags; new span id).

    The span id is derived from the parent and ``salt`` (a message's idempotency key,
    ``event_id:channel``): unique per (event, branch) even when producers reuse one
    traceparent for many events, and the same on every retry and replay. An invalid
    ``parent`` is first replaced as :func:`ensure_traceparent` does (with ``key``, default
    ``salt``).
    """
    if not is_canonical(parent):
        parent = ensure_traceparent(parent, key if key is not None else salt)
    span_hex = _blake2b(f"{parent}|{salt}".encode(), digest_size=8, person=b"notify-child").hexdigest()
    if span_hex == "0" * 16:
        span_hex = f"{1:016x}"
    return f"{parent[:36]}{span_hex}{parent[52:]}"


def traceparent_of_raw(raw: bytes | str, event_id: str | None) -> str:
    """Return the traceparent of a rejected input record (error path: parses it again).

    A valid ``traceparent`` in the record is kept; otherwise a root is derived from the
    event id or, without one, from the record's bytes (stable across replays).
    """
    tp: Any = None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = None
    if type(obj) is dict:
        tp = obj.get("traceparent")
    if event_id is None:
        data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
        event_id = "#raw:" + _blake2b(data, digest_size=16).hexdigest()
    return ensure_traceparent(tp, event_id)


def trace_id_of(traceparent: str | None) -> str | None:
    """Return the 32-hex trace id of a canonical traceparent (None for None)."""
    return traceparent[3:35] if traceparent else None


def span_id_of(traceparent: str | None) -> str | None:
    """Return the 16-hex span id of a canonical traceparent (None for None)."""
    return traceparent[36:52] if traceparent else None


# --- span export: one span per delivered batch per branch -----------------------------------
Exporter = Literal["none", "file", "otlp"]


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """What the operators need to export spans and write logs (pickled into them)."""

    exporter: Exporter = "none"
    file: str = ""
    otlp_endpoint: str = ""
    log_file: str = ""
    log_level: str = "INFO"
    service_name: str = "notify-fanout"
    max_links: int = 1000

    @property
    def enabled(self) -> bool:
        """Return True when spans are exported."""
        return self.exporter != "none"


@dataclass(frozen=True, slots=True)
class BatchSpan:
    """One delivered batch on one branch, as exported (times in epoch ms)."""

    channel: str
    batch_id: str
    region: str
    window_key: str
    start_ms: int
    end_ms: int
    status: str  # delivered | dead_lettered | partial
    attempts: int
    delivered: int
    dead_lettered: int
    # per message: (child traceparent, idempotency key, event ids)
    messages: tuple[tuple[str, str, tuple[str, ...]], ...]


def batch_status(delivered: int, dead_lettered: int) -> str:
    """Return a batch's span status word from its message counts."""
    if dead_lettered == 0:
        return "delivered"
    return "dead_lettered" if delivered == 0 else "partial"


class _JsonLinesSpanExporter:
    """SpanExporter writing one JSON object per span and line (the SDK's ``to_json``), appending.

    One ``os.write`` per span on an ``O_APPEND`` descriptor: lines from several subtasks or
    processes never interleave.
    """

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        for span in spans:
            os.write(self.fd, (span.to_json(indent=None) + "\n").encode())
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


_shared_lock = threading.Lock()
_shared: dict[TracingSettings, SpanExport] = {}


class SpanExport:
    """A tracer that exports batch spans to a JSON-lines file or an OTLP/HTTP endpoint.

    Build with :meth:`get` (one per process and configuration: subtasks of a TaskManager
    share it). The SDK is imported only here, i.e. only when export is configured.
    """

    def __init__(self, settings: TracingSettings) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import SpanLimits, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            span_limits=SpanLimits(max_links=settings.max_links),
            shutdown_on_exit=True,
        )
        if settings.exporter == "file":
            if not settings.file:
                raise ValueError("tracing.exporter=file needs tracing.file")
            provider.add_span_processor(SimpleSpanProcessor(_JsonLinesSpanExporter(settings.file)))  # type: ignore[arg-type]
        elif settings.exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            if not settings.otlp_endpoint:
                raise ValueError("tracing.exporter=otlp needs tracing.otlp_endpoint")
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint)))
        else:
            raise ValueError(f"unknown tracing exporter {settings.exporter!r}")
        self.provider = provider
        self.tracer = provider.get_tracer("notify.fanout")

    @classmethod
    def get(cls, settings: TracingSettings) -> SpanExport | None:
        """Return the process-wide exporter for ``settings`` (None when export is off)."""
        if not settings.enabled:
            return None
        with _shared_lock:
            found = _shared.get(settings)
            if found is None:
                found = _shared[settings] = cls(settings)
            return found

    def export(self, b: BatchSpan) -> None:
        """Export one batch span: attributes, status, and a link per message to its child span."""
        links = []
        for child, idempotency_key, event_ids in b.messages:
            sc = extract(child)
            if sc is not None:
                attrs: dict[str, Any] = {"idempotency_key": idempotency_key, "event_ids": list(event_ids)}
                links.append(trace.Link(sc, attrs))
        span = self.tracer.start_span(
            f"deliver-{b.channel}",
            context=Context(),  # a root: a batch belongs to many traces, it links to them
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "channel": b.channel,
                "batch_id": b.batch_id,
                "region": b.region,
                "window_key": b.window_key,
                "messages": len(b.messages),
                "attempts": b.attempts,
                "status": b.status,
                "delivered": b.delivered,
                "dead_lettered": b.dead_lettered,
            },
            links=links,
            start_time=b.start_ms * 1_000_000,
        )
        if b.status != "delivered":
            span.set_status(trace.Status(trace.StatusCode.ERROR, b.status))
        span.end(end_time=max(b.end_ms, b.start_ms) * 1_000_000)

    def flush(self) -> None:
        """Export what is buffered (OTLP batches); called when an operator closes."""
        self.provider.force_flush()
