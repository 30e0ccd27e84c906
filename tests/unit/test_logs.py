"""udfs.logs: JSON log lines with trace and event ids, PII masked in every line."""

from __future__ import annotations

import io
import logging
import time

import orjson
import pytest

from udfs import logs


@pytest.fixture
def clean_logging():
    """Restore the notify and root loggers after a test that configures them."""
    notify = logging.getLogger(logs.ROOT_LOGGER)
    root = logging.getLogger()
    saved = (list(notify.handlers), notify.level, notify.propagate, list(root.handlers), logs._configured)
    yield
    for h in notify.handlers:
        if h not in saved[0]:
            h.close()
    notify.handlers[:] = saved[0]
    notify.setLevel(saved[1])
    notify.propagate = saved[2]
    for h in root.handlers:
        h.filters[:] = [f for f in h.filters if not isinstance(f, logs.PiiFilter)]
    root.handlers[:] = saved[3]
    logs._configured = saved[4]


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("mail a@example.com now", "mail <email> now"),
        ("first.last+tag@sub.example.co.uk,", "<email>,"),
        ('{"to": "user-17@example.com"}', '{"to": "<email>"}'),
        ("call +15550000042.", "call <phone>."),
        ("call +49 151 2345 6789 or +44 (20) 7946-0958", "call <phone> or <phone>"),
        ("push tok-0000000000000042 done", "push <push_token> done"),
        ("apns " + "ab" * 32, "apns <push_token>"),
        ("fcm dGhpcyBpcyBh:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx", "fcm <push_token>"),
        ("expo ExponentPushToken[xxxxxxxxxxxxxxxxxxxxxx]", "expo <push_token>"),
        ("evt+4915123456789 evt-tok-12345678 ev@x.io", "evt<phone> evt-<push_token> <email>"),
    ],
)
def test_pii_is_masked(text, masked):
    assert logs.mask_pii(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "trace 0af7651916cd43dd8448eb211c80319c span b7ad6b7169203331",
        "event 9f3c2a1b0e8d7c6b5a4f3e2d1c0b9a8f at 2026-11-28T17:00:00.123+00:00",
        "batch eu-west|0:email:1795885200000:0 size +12 took 1795885200000 ms",
        "digest:email:0123456789abcdef and e-1:email",
    ],
)
def test_identifiers_timestamps_and_numbers_are_left_alone(text):
    assert logs.mask_pii(text) == text


def test_masking_a_long_line_takes_linear_time():
    hostile = "a" * 200_000 + "@" + "b" * 200_000 + "+" + "1" * 100_000
    t0 = time.perf_counter()
    logs.mask_pii(hostile)
    assert time.perf_counter() - t0 < 0.5


def _record(msg: str, *args, exc_info=None, **extra) -> logging.LogRecord:
    rec = logging.LogRecord("notify.fanout", logging.INFO, __file__, 1, msg, args, exc_info)
    rec.__dict__.update(extra)
    return rec


def test_a_log_line_is_one_json_object_with_trace_and_event_ids():
    extra = logs.event_extra("e-1", "0af7651916cd43dd8448eb211c80319c", channels=["email"], rule="r")
    line = logs.JsonFormatter().format(_record("route", **extra))
    assert "\n" not in line
    obj = orjson.loads(line)
    assert list(obj)[:6] == ["ts", "level", "logger", "msg", "trace_id", "event_id"]
    assert obj["level"] == "INFO" and obj["logger"] == "notify.fanout" and obj["msg"] == "route"
    assert obj["trace_id"] == "0af7651916cd43dd8448eb211c80319c" and obj["event_id"] == "e-1"
    assert obj["channels"] == ["email"] and obj["rule"] == "r"
    assert obj["ts"].endswith("Z") and obj["ts"][10] == "T"


def test_the_formatter_masks_messages_fields_and_exceptions():
    try:
        raise ValueError("bad recipient bob@example.org")
    except ValueError:
        import sys

        rec = _record("send to %s", "+15550001234", exc_info=sys.exc_info(), fields={"token": "tok-abcdef12"})
    line = logs.JsonFormatter().format(rec)
    obj = orjson.loads(line)
    assert obj["msg"] == "send to <phone>" and obj["token"] == "<push_token>"
    assert "ValueError" in obj["exc"] and "<email>" in obj["exc"]
    assert "example.org" not in line and "1555" not in line and "tok-abcdef12" not in line


def test_configure_writes_masked_json_lines_to_the_file_once(tmp_path, clean_logging, capsys):
    path = tmp_path / "logs" / "job.log"
    logs.configure(str(path))
    logs.configure(str(path))  # idempotent: every operator's open() calls it
    notify = logging.getLogger("notify")
    assert sum(isinstance(h, logs.JsonHandler) for h in notify.handlers) == 1 and not notify.propagate
    log = logging.getLogger("notify.fanout")
    log.info("route", extra=logs.event_extra("alice@example.com", "t" * 32, phone="+15550000042"))
    log.debug("not at INFO")
    (line,) = path.read_text().splitlines()
    obj = orjson.loads(line)
    assert obj["event_id"] == "<email>" and obj["phone"] == "<phone>" and obj["trace_id"] == "t" * 32
    assert capsys.readouterr().err.strip() == line, "outside a TaskManager the lines go to stderr too"


def test_configure_masks_the_lines_of_handlers_it_does_not_own(clean_logging):
    stream = io.StringIO()
    other = logging.StreamHandler(stream)
    logging.getLogger().addHandler(other)
    logs.configure()
    lib = logging.getLogger("some.library")
    lib.setLevel(logging.INFO)
    try:
        raise RuntimeError("payload had carol@example.net")
    except RuntimeError:
        lib.exception("failed for %s", "+4915123456789")
    text = stream.getvalue()
    assert "failed for <phone>" in text and "<email>" in text and "RuntimeError" in text
    assert "example.net" not in text and "4915123456789" not in text
