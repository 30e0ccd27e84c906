from __future__ import annotations

import dataclasses
import pickle

import orjson
import pytest

from tests.builders import (
    DEFAULT_OCCURRED_AT_MS,
    DELETE,
    event_bytes,
    make_event,
    make_recipient,
)
from udfs.events import (
    Event,
    Recipient,
    Rejection,
    ValidationLimits,
    event_log_fields,
    event_to_dict,
    event_to_json,
    fast_constructor,
    format_timestamp_ms,
    parse_event,
    parse_timestamp_ms,
    rejection_log_fields,
)

LIMITS = ValidationLimits()
PII = ("a@example.com", "+15550000042", "tok-0000000000000042")


def ok(raw: bytes, limits: ValidationLimits = LIMITS) -> Event:
    ev = parse_event(raw, limits)
    assert isinstance(ev, Event), ev
    return ev


def rejected(raw: bytes, reason: str, limits: ValidationLimits = LIMITS) -> Rejection:
    rej = parse_event(raw, limits)
    assert isinstance(rej, Rejection), rej
    assert rej.reason == reason, rej
    assert rej.stage == "validate"
    for value in PII:
        assert value not in rej.detail
    return rej


def test_valid_event_parses_every_field() -> None:
    ev = ok(event_bytes(event_id="e-1", priority="high", payload={"order_id": "o-9"}))
    assert ev.event_id == "e-1"
    assert ev.type == "order_shipped"
    assert ev.user_id == "u-42"
    assert ev.region == "eu-west"
    assert ev.priority == "high"
    assert ev.occurred_at == "2026-11-28T17:00:00.123Z"
    assert ev.occurred_at_ms == DEFAULT_OCCURRED_AT_MS == 1_795_885_200_123
    assert ev.recipient == Recipient("a@example.com", "+15550000042", "tok-0000000000000042", True, ())
    assert ev.payload == {"order_id": "o-9"}
    assert ev.traceparent is not None and ev.traceparent.startswith("00-")


def test_optional_fields_default() -> None:
    raw = event_bytes(payload=DELETE, traceparent=DELETE, recipient={"email": "a@example.com"})
    ev = ok(raw)
    assert ev.payload == {}
    assert ev.traceparent is None
    assert ev.recipient == Recipient(email="a@example.com")
    assert ev.recipient.app_installed is False
    assert ev.recipient.opt_out == ()


def test_nulls_for_optional_fields_are_defaults() -> None:
    rec = make_recipient(phone=None, app_installed=None, opt_out=None)
    ev = ok(event_bytes(payload=None, traceparent=None, recipient=rec))
    assert ev.payload == {}
    assert ev.traceparent is None
    assert ev.recipient.phone is None
    assert ev.recipient.app_installed is False
    assert ev.recipient.opt_out == ()


def test_unknown_top_level_keys_are_ignored() -> None:
    ev = ok(event_bytes(schema="v2", extra={"x": 1}))
    assert "schema" not in event_to_dict(ev)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28T17:00:00.123Z", 1_795_885_200_123),
        ("2026-11-28T17:00:00Z", 1_795_885_200_000),
        ("2026-11-28T17:00:00.123+00:00", 1_795_885_200_123),
        ("2026-11-28T17:00:00-00:00", 1_795_885_200_000),
        ("2026-11-28T17:00:00.123999Z", 1_795_885_200_123),  # truncates to the ms
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:59:59.999Z", -1),
    ],
)
def test_parse_timestamp_ms_accepts_utc(text: str, expected: int) -> None:
    assert parse_timestamp_ms(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-28T17:00:00",  # naive: ambiguous
        "2026-11-28T18:00:00+01:00",  # not UTC
        "2026-11-28",
        "yesterday",
        "",
        "2026-13-01T00:00:00Z",
        "2026-11-28T25:00:00Z",
    ],
)
def test_parse_timestamp_ms_rejects(text: str) -> None:
    assert parse_timestamp_ms(text) is None


def test_format_timestamp_round_trips() -> None:
    for ms in (0, 1_795_885_200_123, 1_795_885_200_000, 1_795_885_259_999):
        assert parse_timestamp_ms(format_timestamp_ms(ms)) == ms
    assert format_timestamp_ms(1_795_885_200_123) == "2026-11-28T17:00:00.123Z"


def test_bad_timestamp_is_rejected_with_event_id() -> None:
    rej = rejected(event_bytes(event_id="e-7", occurred_at="2026-11-28T17:00:00"), "bad_timestamp")
    assert rej.event_id == "e-7"
    assert "occurred_at" in rej.detail


def test_oversized_is_checked_before_parsing() -> None:
    limits = ValidationLimits(max_event_bytes=100)
    raw = b"\xff" * 101  # would be not_utf8 if it were parsed
    rej = rejected(raw, "oversized", limits)
    assert "101" in rej.detail and "100" in rej.detail
    assert isinstance(parse_event(b"{" * 100, limits), Rejection)  # exactly at the limit: parsed


def test_not_utf8() -> None:
    rej = rejected(b"\xff\xfe" + event_bytes(), "not_utf8")
    assert "UTF-8" in rej.detail


@pytest.mark.parametrize("raw", [b"", b"{", b"{'a': 1}", b"nul", event_bytes()[:-1]])
def test_malformed_json(raw: bytes) -> None:
    rejected(raw, "malformed_json")


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"x"', b"null", b"true"])
def test_not_an_object(raw: bytes) -> None:
    rejected(raw, "not_an_object")


@pytest.mark.parametrize(
    "field", ["event_id", "type", "user_id", "region", "priority", "occurred_at", "recipient"]
)
def test_missing_required_field(field: str) -> None:
    rej = rejected(event_bytes(**{field: DELETE}), "missing_field")
    assert field in rej.detail


@pytest.mark.parametrize("field", ["event_id", "type", "user_id", "region", "priority"])
def test_empty_required_string_is_missing(field: str) -> None:
    rejected(event_bytes(**{field: ""}), "missing_field")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"event_id": 7}, "event_id"),
        ({"type": ["x"]}, "type"),
        ({"user_id": {"id": 1}}, "user_id"),
        ({"region": ["eu-west"]}, "region"),  # unhashable: must not crash the set lookup
        ({"priority": 3}, "priority"),
        ({"priority": {"a": 1}}, "priority"),
        ({"occurred_at": 1_795_885_200_123}, "occurred_at"),
        ({"recipient": "a@example.com"}, "recipient"),
        ({"recipient": make_recipient(email=1)}, "recipient.email"),
        ({"recipient": make_recipient(phone=15550000042)}, "recipient.phone"),
        ({"recipient": make_recipient(push_token=["t"])}, "recipient.push_token"),
        ({"recipient": make_recipient(app_installed="yes")}, "recipient.app_installed"),
        ({"recipient": make_recipient(app_installed=1)}, "recipient.app_installed"),
        ({"recipient": make_recipient(opt_out="sms")}, "recipient.opt_out"),
        ({"recipient": make_recipient(opt_out={})}, "recipient.opt_out"),
        ({"recipient": make_recipient(opt_out=False)}, "recipient.opt_out"),
        ({"recipient": make_recipient(opt_out=[1])}, "recipient.opt_out"),
        ({"payload": [1, 2]}, "payload"),
        ({"traceparent": 5}, "traceparent"),
    ],
)
def test_wrong_type(overrides: dict[str, object], field: str) -> None:
    rej = rejected(event_bytes(**overrides), "wrong_type")
    assert f"'{field}'" in rej.detail


def test_unknown_region_and_priority() -> None:
    assert "mars" in rejected(event_bytes(region="mars-north"), "unknown_region").detail
    rejected(event_bytes(priority="urgent"), "unknown_priority")


def test_unknown_channel_in_opt_out() -> None:
    rej = rejected(event_bytes(recipient=make_recipient(opt_out=["sms", "pigeon"])), "unknown_channel")
    assert "pigeon" in rej.detail


def test_limits_are_configuration() -> None:
    limits = ValidationLimits(regions=frozenset({"sa-east"}), channels=frozenset({"email", "webhook"}))
    ev = ok(event_bytes(region="sa-east", recipient=make_recipient(opt_out=["webhook"])), limits)
    assert ev.recipient.opt_out == ("webhook",)
    rejected(event_bytes(region="eu-west"), "unknown_region", limits)
    rejected(
        event_bytes(region="sa-east", recipient=make_recipient(opt_out=["sms"])),
        "unknown_channel",
        limits,
    )


def test_rejection_detail_never_contains_pii() -> None:
    bad = [
        event_bytes(region="nowhere"),
        event_bytes(priority="x"),
        event_bytes(occurred_at="bad"),
        event_bytes(recipient=make_recipient(opt_out=["x"])),
        event_bytes(payload="p"),
        event_bytes(recipient=make_recipient(app_installed="a@example.com")),
    ]
    for raw in bad:
        rej = parse_event(raw, LIMITS)
        assert isinstance(rej, Rejection)
        text = str(rejection_log_fields(rej)) + repr(rej)
        for value in PII:
            assert value not in text


def test_repr_and_log_fields_hide_pii() -> None:
    ev = ok(event_bytes())
    fields = event_log_fields(ev)
    text = repr(ev) + orjson.dumps(fields).decode()
    for value in PII:
        assert value not in text
    assert fields["has_email"] is True and fields["has_phone"] is True
    assert fields["event_id"] == ev.event_id


def test_round_trip_through_contract_json() -> None:
    for overrides in (
        {},
        {"traceparent": DELETE, "payload": {"nested": {"a": [1, 2.5, None]}}},
        {"recipient": {"push_token": "t", "opt_out": ["sms", "email"]}},
        {"occurred_at": "2026-11-28T17:00:00+00:00"},
    ):
        ev = ok(event_bytes(**overrides))
        assert ok(event_to_json(ev)) == ev
        assert ok(orjson.dumps(event_to_dict(ev))) == ev


def test_event_to_dict_matches_contract_keys() -> None:
    d = event_to_dict(ok(event_bytes()))
    assert set(d) == {
        "event_id", "type", "user_id", "region", "priority", "occurred_at",
        "recipient", "payload", "traceparent",
    }  # fmt: skip
    assert set(d["recipient"]) == {"email", "phone", "push_token", "app_installed", "opt_out"}


def test_event_is_hashable_despite_payload_dict() -> None:
    ev = ok(event_bytes())
    assert hash(ev) == hash(ok(event_bytes(event_id=ev.event_id)))


def test_make_event_is_valid_and_fresh() -> None:
    a, b = make_event(), make_event()
    assert a["event_id"] != b["event_id"]
    ok(orjson.dumps(a))


def test_fast_construction_equals_dataclass_construction() -> None:
    ev = ok(event_bytes(event_id="e-1", traceparent=DELETE))
    built = Event(
        "e-1",
        "order_shipped",
        "u-42",
        "eu-west",
        "normal",
        "2026-11-28T17:00:00.123Z",
        DEFAULT_OCCURRED_AT_MS,
        Recipient("a@example.com", "+15550000042", "tok-0000000000000042", True, ()),
        {"order_id": "o-1"},
        None,
    )
    assert ev == built
    assert pickle.loads(pickle.dumps(ev)) == ev
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.region = "us-east"  # type: ignore[misc]


def test_fast_constructor_builds_equal_frozen_objects() -> None:
    make = fast_constructor(Recipient)
    r = make("a@example.com", None, "t", True, ("sms",))
    assert r == Recipient("a@example.com", None, "t", True, ("sms",))
    assert type(r) is Recipient
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.email = "b@example.com"  # type: ignore[misc]
    with pytest.raises(TypeError):
        make("a@example.com")  # every field is required, positionally


def test_str_input_is_accepted() -> None:
    ev = ok(event_bytes(event_id="e-s").decode())
    assert ev.event_id == "e-s"
    assert parse_event("{nope", LIMITS) == Rejection("malformed_json", "input is not valid JSON")
    rej = parse_event('{"event_id": "\ud800"}', LIMITS)
    assert isinstance(rej, Rejection) and rej.reason == "not_utf8"


def test_bytearray_and_memoryview_input() -> None:
    raw = event_bytes()
    assert isinstance(parse_event(bytearray(raw), LIMITS), Event)
    assert parse_event(memoryview(b"\xff{"), LIMITS).reason == "not_utf8"  # type: ignore[arg-type,union-attr]


def test_fast_constructor_requires_slots() -> None:
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    with pytest.raises(TypeError):
        fast_constructor(NoSlots)
