"""Structured JSON logs without PII: one object per line, addresses masked as a last line of defence.

Every line of the job's loggers (``notify.*``) is a JSON object::

    {"ts": "2026-11-28T17:00:01.234Z", "level": "INFO", "logger": "notify.fanout", "msg": "route",
     "trace_id": "0af7651916cd43dd8448eb211c80319c", "event_id": "b7c1…", "channels": ["email"], …}

``trace_id`` and ``event_id`` are present when the line is about an event (pass them with
:func:`event_extra`). Code never logs addresses on purpose (``udfs.events.event_log_fields``
has none); :func:`mask_pii` still runs over every formatted line and replaces e-mail
addresses, E.164 phone numbers and push tokens, so a mistake (an address used as an event
id, an exception text quoting a payload) does not reach the logs.

:func:`configure` installs this on the ``notify`` logger, idempotently: the job calls it in
``main()`` and in every Python operator's ``open()``, because thread-mode operators run in
the TaskManager JVM's embedded interpreter, whose logging is not the client's. There the
lines go on to the TaskManager log (pemja's root handler) and, when configured, are
appended to a file (``tracing.log_file``); the masking filter is also put on the root
logger's handlers, so other libraries' Python log lines are masked too.

Example::

    configure(log_file="/tmp/notify.log")
    log = logging.getLogger("notify.fanout")
    log.info("route", extra=event_extra(event.event_id, trace_id, channels=["email"]))
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import traceback
from typing import Any, Final

import orjson

__all__ = ["JsonFormatter", "JsonHandler", "PiiFilter", "configure", "event_extra", "mask_pii"]

ROOT_LOGGER: Final = "notify"

# Each pattern starts at a literal ('+', 'tok-', ...) or only at the beginning of a run
# (look-behind), so a long line costs linear time; cheap substring tests skip the regexes on
# most lines. Over-masking (a '+' and 7+ digits inside an id) is preferred to a leak.
_EMAIL: Final = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
)
# E.164: '+', a non-zero digit, 6-14 more digits; spaces, dots, dashes or parentheses allowed
_PHONE: Final = re.compile(r"\+[1-9](?:[ ().\-]{0,2}\d){6,14}(?!\d)")
_TOKENS: Final = (
    ("tok-", re.compile(r"tok-[A-Za-z0-9_\-]{4,}")),  # our providers' push tokens
    ("APA91", re.compile(r"(?<![\w\-])[\w\-]{8,}:APA91[\w\-]{20,}")),  # FCM registration tokens
    ("PushToken[", re.compile(r"ExponentPushToken\[[^\]]+\]")),  # Expo
)
_APNS: Final = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{64}(?![0-9A-Fa-f])")  # APNs device token
_HEX64: Final = re.compile(r"[0-9A-Fa-f]{64}")


def mask_pii(text: str) -> str:
    """Replace e-mail addresses, E.164 phone numbers and push tokens in ``text``.

    >>> mask_pii("to a.b@example.com / +49 151 2345 6789 / tok-00ab12cd")
    'to <email> / <phone> / <push_token>'
    """
    if "@" in text:
        text = _EMAIL.sub("<email>", text)
    if "+" in text:
        text = _PHONE.sub("<phone>", text)
    for marker, pattern in _TOKENS:
        if marker in text:
            text = pattern.sub("<push_token>", text)
    if len(text) >= 64 and _HEX64.search(text):
        text = _APNS.sub("<push_token>", text)
    return text


def event_extra(event_id: str | None, trace_id: str | None, **fields: Any) -> dict[str, Any]:
    """Return ``extra=`` for a log call about one event: its id, trace id and more fields."""
    return {"event_id": event_id, "trace_id": trace_id, "fields": fields}


def _iso_ms(created: float) -> str:
    ms = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{ms:03d}Z"


class JsonFormatter(logging.Formatter):
    """Format a record as one masked JSON object (ts, level, logger, msg, trace_id, event_id, …)."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one JSON line (no newline), PII masked."""
        obj: dict[str, Any] = {
            "ts": _iso_ms(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        trace_id = getattr(record, "trace_id", None)
        if trace_id is not None:
            obj["trace_id"] = trace_id
        event_id = getattr(record, "event_id", None)
        if event_id is not None:
            obj["event_id"] = event_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                obj.setdefault(str(key), value)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            obj["exc"] = record.exc_text
        line = orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        return mask_pii(line)


class PiiFilter(logging.Filter):
    """Mask a record's message (and exception text) in place: for handlers we do not own."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record.msg`` as its masked, formatted message; keep the record."""
        try:
            msg = record.getMessage()
        except Exception:  # a broken format string must not lose the line
            msg = f"{record.msg!r} % {record.args!r}"
        if record.exc_info:
            msg += "\n" + "".join(traceback.format_exception(*record.exc_info))
            record.exc_info = None
            record.exc_text = None
        record.msg = mask_pii(msg)
        record.args = ()
        return True


def _platform_handlers() -> list[logging.Handler]:
    """Return the root handlers that forward to the TaskManager log (pemja's, in thread mode)."""
    return [h for h in logging.getLogger().handlers if type(h).__name__ == "PythonLogHandler"]


class JsonHandler(logging.Handler):
    """Write masked JSON lines to a file (optional) and to the platform log or stderr.

    The file is appended with one ``os.write`` per line on an ``O_APPEND`` descriptor, so
    lines of several subtasks and processes never interleave.
    """

    def __init__(self, log_file: str = "") -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.log_file = log_file
        self.fd = -1
        if log_file:
            os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
            self.fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def emit(self, record: logging.LogRecord) -> None:
        """Format once; append to the file; forward to the platform log (or stderr)."""
        try:
            line = self.format(record)
            if self.fd >= 0:
                os.write(self.fd, (line + "\n").encode())
            platform = _platform_handlers()
            if platform:
                copy = logging.makeLogRecord(
                    {**record.__dict__, "msg": line, "args": (), "exc_info": None, "exc_text": None}
                )
                for handler in platform:
                    handler.handle(copy)
            else:
                sys.stderr.write(line + "\n")
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        """Close the file."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        super().close()


_lock = threading.Lock()
_configured: tuple[str, int] | None = None


def configure(log_file: str = "", level: int | str = logging.INFO) -> None:
    """Make the ``notify`` loggers write masked JSON lines; mask the root handlers' lines too.

    Idempotent and thread-safe (operators of one TaskManager share an interpreter); a call
    with other arguments replaces the handler.
    """
    global _configured
    lvl = logging.getLevelName(level) if isinstance(level, str) else level
    if not isinstance(lvl, int):
        raise ValueError(f"unknown log level {level!r}")
    key = (log_file, lvl)
    with _lock:
        root = logging.getLogger()
        for handler in root.handlers:
            if not any(isinstance(f, PiiFilter) for f in handler.filters):
                handler.addFilter(PiiFilter())
        if _configured == key:
            return
        logger = logging.getLogger(ROOT_LOGGER)
        for handler in list(logger.handlers):
            if isinstance(handler, JsonHandler):
                logger.removeHandler(handler)
                handler.close()
        logger.addHandler(JsonHandler(log_file))
        logger.setLevel(lvl)
        logger.propagate = False
        _configured = key
