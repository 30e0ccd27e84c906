from __future__ import annotations

import base64
import time

import orjson

from tests.builders import event_bytes
from udfs.dlq import dlq_log_fields, dlq_record, original_bytes, parse_dlq_record
from udfs.events import Rejection, ValidationLimits, parse_event


def test_utf8_original_is_kept_as_text_with_source() -> None:
    raw = event_bytes(event_id="e-1", region="mars")
    rec = orjson.loads(
        dlq_record(
            raw,
            "unknown_region",
            "field 'region' has unknown value 'mars'",
            "validate",
            topic="notifications.events",
            partition=3,
            offset=42,
            now_ms=1234,
        )
    )
    assert rec["reason"] == "unknown_region"
    assert rec["stage"] == "validate"
    assert rec["detail"].startswith("field 'region'")
    assert rec["original"] == raw.decode()
    assert "original_b64" not in rec
    assert rec["source"] == {"topic": "notifications.events", "partition": 3, "offset": 42}
    assert rec["event_id"] == "e-1"  # extracted from the original
    assert rec["dlq_at_ms"] == 1234
    assert "extra" not in rec


def test_non_utf8_original_is_base64_and_recoverable() -> None:
    raw = b"\xff\xfe{not json"
    rec = orjson.loads(dlq_record(raw, "not_utf8", "input is not valid UTF-8", "validate"))
    assert "original" not in rec
    assert base64.b64decode(rec["original_b64"]) == raw
    assert original_bytes(rec) == raw
    assert rec["source"] == {"topic": None, "partition": None, "offset": None}
    assert "event_id" not in rec


def test_original_bytes_round_trip_for_text() -> None:
    raw = '{"event_id": "é-1"'.encode()
    rec = parse_dlq_record(dlq_record(raw, "malformed_json", "d", "validate"))
    assert rec is not None
    assert original_bytes(rec) == raw


def test_explicit_event_id_and_extra() -> None:
    rec = orjson.loads(
        dlq_record(
            b"whatever",
            "exhausted",
            "5 attempts failed",
            "deliver",
            extra={"channel": "sms", "attempts": 5, "when": object()},
            event_id="e-9",
        )
    )
    assert rec["event_id"] == "e-9"
    assert rec["extra"]["channel"] == "sms"
    assert rec["extra"]["attempts"] == 5
    assert isinstance(rec["extra"]["when"], str)  # odd values never crash a DLQ write


def test_dlq_at_defaults_to_wall_clock() -> None:
    before = time.time_ns() // 1_000_000
    rec = orjson.loads(dlq_record(b"x", "r", "d", "validate"))
    after = time.time_ns() // 1_000_000
    assert before <= rec["dlq_at_ms"] <= after


def test_event_id_not_taken_from_non_object_or_non_string() -> None:
    assert "event_id" not in orjson.loads(dlq_record(b"[1]", "r", "d", "s"))
    assert "event_id" not in orjson.loads(dlq_record(b'{"event_id": 5}', "r", "d", "s"))
    assert "event_id" not in orjson.loads(dlq_record(b'{"event_id": ""}', "r", "d", "s"))


def test_from_rejection() -> None:
    raw = event_bytes(event_id="e-5", occurred_at="nope")
    rej = parse_event(raw, ValidationLimits())
    assert isinstance(rej, Rejection)
    rec = orjson.loads(dlq_record(raw, rej.reason, rej.detail, rej.stage, event_id=rej.event_id))
    assert (rec["reason"], rec["stage"], rec["event_id"]) == ("bad_timestamp", "validate", "e-5")


def test_parse_dlq_record_refuses_other_records() -> None:
    assert parse_dlq_record(b"nope") is None
    assert parse_dlq_record(b"[]") is None
    assert parse_dlq_record(b'{"reason": "x", "stage": "y"}') is None
    assert parse_dlq_record(event_bytes()) is None


def test_log_fields_drop_the_original() -> None:
    raw = event_bytes(region="mars")
    rec = parse_dlq_record(dlq_record(raw, "unknown_region", "d", "validate"))
    assert rec is not None
    fields = dlq_log_fields(rec)
    assert "original" not in fields and "original_b64" not in fields
    assert "a@example.com" not in orjson.dumps(fields).decode()
    assert fields["reason"] == "unknown_region"


def test_str_original_is_kept() -> None:
    rec = orjson.loads(dlq_record('{"event_id": "e-1", bad', "malformed_json", "d", "validate"))
    assert rec["original"] == '{"event_id": "e-1", bad'
    rec = orjson.loads(dlq_record("\ud800x", "not_utf8", "d", "validate"))
    assert base64.b64decode(rec["original_b64"]) == "\ud800x".encode("utf-8", "surrogatepass")
