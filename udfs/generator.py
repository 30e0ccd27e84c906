"""Seeded, realistic notification event generator (tests, demos, embedded source, bench).

``generate_events(n, seed)`` yields ``n`` raw records (UTF-8 JSON bytes, the input
contract of ``udfs.events``). The same arguments always yield the same bytes. The mix:

* types ``order_shipped`` / ``password_reset`` / ``price_alert`` (as in
  ``conf/routing.yaml``) plus ``newsletter`` (unknown to the rules: default rule ``*``);
* regions ``eu-west`` / ``us-east`` / ``ap-south``; priorities low..critical;
* users drawn from a fixed population, each with a stable region and recipient: fake
  addresses (``user-N@example.com``, ``+1555…``, ``tok-…``), app installed or not, and
  some opt-outs;
* ``dup_rate``: an exact re-send of one of the recent valid records (same bytes);
* ``bad_rate``: an invalid record, one of :data:`BAD_KINDS` (each has a fresh event_id
  when it has one at all, so it never collides with a valid event);
* ``late_rate``: a valid event whose ``occurred_at`` lies 5-120 s before the stream clock.

Event time advances by ``1000 / rate_per_s`` ms per record from ``start_ms``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, Final

import orjson

from udfs.events import format_timestamp_ms

#: 2026-11-28T17:00:00.000Z
DEFAULT_START_MS: Final = 1_795_885_200_000
REGIONS: Final = ("eu-west", "us-east", "ap-south")
REGION_WEIGHTS: Final = (45, 35, 20)
TYPES: Final = ("order_shipped", "password_reset", "price_alert", "newsletter")
TYPE_WEIGHTS: Final = (40, 15, 35, 10)
PRIORITIES: Final = ("low", "normal", "high", "critical")
PRIORITY_WEIGHTS: Final = (15, 55, 25, 5)
OPT_OUTS: Final = ((), ("sms",), ("email",), ("push",), ("sms", "push"))
OPT_OUT_WEIGHTS: Final = (84, 10, 3, 2, 1)
BAD_KINDS: Final = (
    "malformed_json",
    "not_utf8",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "unknown_region",
    "bad_timestamp",
    "unknown_channel",
    "oversized",
)
DEFAULT_USERS: Final = 5000
_RECENT: Final = 256


def _recipient(rng: random.Random, user_no: int) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    if rng.random() < 0.95:
        rec["email"] = f"user-{user_no}@example.com"
    if rng.random() < 0.7:
        rec["phone"] = f"+1555{user_no % 10_000_000:07d}"
    has_token = rng.random() < 0.6
    if has_token:
        rec["push_token"] = f"tok-{rng.getrandbits(64):016x}"
    rec["app_installed"] = has_token and rng.random() < 0.9
    rec["opt_out"] = list(rng.choices(OPT_OUTS, OPT_OUT_WEIGHTS)[0])
    return rec


def _payload(rng: random.Random, etype: str) -> dict[str, Any]:
    if etype == "order_shipped":
        return {"order_id": f"o-{rng.randrange(10**8)}", "carrier": rng.choice(("dhl", "ups"))}
    if etype == "password_reset":
        return {"reset_id": f"r-{rng.getrandbits(40):010x}"}
    if etype == "price_alert":
        return {"sku": f"sku-{rng.randrange(10**5)}", "price_cents": rng.randrange(100, 100_000)}
    return {"issue": rng.randrange(1, 500)}


def _bad_record(rng: random.Random, event: dict[str, Any]) -> bytes:
    kind = rng.choice(BAD_KINDS)
    if kind == "malformed_json":
        raw = orjson.dumps(event)
        return raw[: len(raw) // 2]
    if kind == "not_utf8":
        return b"\xff\xfe" + orjson.dumps(event)
    if kind == "not_an_object":
        return orjson.dumps([event["event_id"], event["type"]])
    if kind == "missing_field":
        del event[rng.choice(("event_id", "type", "user_id", "region", "occurred_at"))]
    elif kind == "wrong_type":
        event["priority"] = 3
    elif kind == "unknown_region":
        event["region"] = "mars-north"
    elif kind == "bad_timestamp":
        event["occurred_at"] = rng.choice(("yesterday", "2026-11-28T17:00:00", "2026-13-01T00:00Z"))
    elif kind == "unknown_channel":
        event["recipient"]["opt_out"] = ["pigeon"]
    else:  # oversized
        event["payload"] = {"blob": "x" * 70_000}
    return orjson.dumps(event)


def generate_events(
    n: int,
    seed: int,
    dup_rate: float = 0.02,
    bad_rate: float = 0.01,
    late_rate: float = 0.01,
    start_ms: int = DEFAULT_START_MS,
    rate_per_s: float = 1000.0,
    *,
    users: int = DEFAULT_USERS,
) -> Iterator[bytes]:
    """Yield ``n`` seeded raw event records with duplicates, invalid and late ones mixed in."""
    rng = random.Random(seed)
    profiles: dict[int, tuple[str, dict[str, Any]]] = {}  # user -> (region, recipient)
    recent: list[bytes] = []
    step_ms = 1000.0 / rate_per_s
    for i in range(n):
        roll = rng.random()
        if roll < dup_rate and recent:
            yield rng.choice(recent)
            continue
        user_no = rng.randrange(users)
        profile = profiles.get(user_no)
        if profile is None:
            urng = random.Random(seed * 1_000_003 + user_no)
            region = urng.choices(REGIONS, REGION_WEIGHTS)[0]
            profile = profiles[user_no] = (region, _recipient(urng, user_no))
        region, rec = profile
        etype = rng.choices(TYPES, TYPE_WEIGHTS)[0]
        ts = start_ms + int(i * step_ms)
        if rng.random() < late_rate:
            ts -= rng.randrange(5_000, 120_000)
        event: dict[str, Any] = {
            "event_id": f"{rng.getrandbits(128):032x}",
            "type": etype,
            "user_id": f"u-{user_no}",
            "region": region,
            "priority": rng.choices(PRIORITIES, PRIORITY_WEIGHTS)[0],
            "occurred_at": format_timestamp_ms(ts),
            "recipient": rec,
            "payload": _payload(rng, etype),
            "traceparent": f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01",
        }
        if dup_rate <= roll < dup_rate + bad_rate:
            event["recipient"] = {**rec, "opt_out": list(rec["opt_out"])}
            yield _bad_record(rng, event)
            continue
        raw = orjson.dumps(event)
        recent.append(raw)
        if len(recent) > _RECENT:
            del recent[0]
        yield raw
