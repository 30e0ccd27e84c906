"""Event and record builders shared by every test layer (unit, pipeline, e2e).

``make_event(**overrides)`` returns a valid contract dict; an override of ``DELETE``
removes the key, ``recipient=`` replaces the recipient (use ``make_recipient`` to tweak
one field). ``event_bytes`` is the same as JSON bytes. ``make_events`` wraps the seeded
generator in ``udfs.generator``.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from udfs.fanin import BranchResult, BranchStatus, Plan
from udfs.generator import DEFAULT_START_MS, generate_events

DELETE: Final = object()
DEFAULT_OCCURRED_AT: Final = "2026-11-28T17:00:00.123Z"
DEFAULT_OCCURRED_AT_MS: Final = DEFAULT_START_MS + 123

_counter = 0


def _next_id() -> str:
    global _counter
    _counter += 1
    return f"evt-{_counter:06d}"


def _apply(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        if value is DELETE:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def make_recipient(**overrides: Any) -> dict[str, Any]:
    """Return a recipient with every address set, app installed and no opt-outs."""
    return _apply(
        {
            "email": "a@example.com",
            "phone": "+15550000042",
            "push_token": "tok-0000000000000042",
            "app_installed": True,
            "opt_out": [],
        },
        overrides,
    )


def make_event(**overrides: Any) -> dict[str, Any]:
    """Return a valid event dict (fresh event_id unless overridden)."""
    return _apply(
        {
            "event_id": _next_id(),
            "type": "order_shipped",
            "user_id": "u-42",
            "region": "eu-west",
            "priority": "normal",
            "occurred_at": DEFAULT_OCCURRED_AT,
            "recipient": make_recipient(),
            "payload": {"order_id": "o-1"},
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        },
        overrides,
    )


def event_bytes(**overrides: Any) -> bytes:
    """Return ``make_event(**overrides)`` encoded as contract JSON bytes."""
    return orjson.dumps(make_event(**overrides))


def make_events(n: int, seed: int, dup_rate: float = 0.02, bad_rate: float = 0.01) -> list[bytes]:
    """Return ``n`` seeded raw records with duplicates and invalid records mixed in."""
    return list(generate_events(n, seed, dup_rate=dup_rate, bad_rate=bad_rate))


def make_plan(
    event_id: str = "evt-plan",
    channels: tuple[str, ...] = ("email", "push"),
    skipped: tuple[tuple[str, str], ...] = (),
    **overrides: Any,
) -> Plan:
    """Return a fan-in plan with sensible defaults."""
    fields: dict[str, Any] = {
        "region": "eu-west",
        "rule": "order_shipped",
        "rules_version": "test.1",
        "occurred_at_ms": DEFAULT_OCCURRED_AT_MS,
        "late": False,
        "traceparent": None,
    }
    fields.update(overrides)
    return Plan(event_id=event_id, channels=channels, skipped=skipped, **fields)


def make_result(
    channel: str,
    status: BranchStatus = BranchStatus.DELIVERED,
    event_id: str = "evt-plan",
    **overrides: Any,
) -> BranchResult:
    """Return a branch result; delivered 50 ms after the default occurred_at."""
    fields: dict[str, Any] = {
        "attempts": 1,
        "latency_ms": 20,
        "error": None,
        "delivered_at_ms": DEFAULT_OCCURRED_AT_MS + 50 if status is BranchStatus.DELIVERED else None,
        "batch_id": None,
    }
    fields.update(overrides)
    return BranchResult(event_id=event_id, channel=channel, status=status, **fields)
