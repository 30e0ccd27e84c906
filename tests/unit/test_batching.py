from __future__ import annotations

import random

import orjson
import pytest

from tests.builders import event_bytes
from udfs.batching import (
    Batch,
    DeliveryItem,
    batch_from_json,
    batch_log_fields,
    batch_to_json,
    digest_key,
    idempotency_key,
    item_for,
    make_batches,
    render_payload,
)
from udfs.events import Event, Rejection, ValidationLimits, parse_event

W0, W1 = 1_795_885_200_000, 1_795_885_201_000


def item(event_id: str, ts: int, user: str = "u-1", address: str | None = "a@example.com") -> DeliveryItem:
    return DeliveryItem(event_id, "email", "eu-west", user, address, {"n": event_id}, ts, None)


def batches(items: list[DeliveryItem], size: int = 10, digest: bool = False) -> list[Batch]:
    return make_batches(items, "eu-west", "email", W0, W1, size, digest)


def test_idempotency_key() -> None:
    assert idempotency_key("e-1", "sms") == "e-1:sms"


def test_empty_window_gives_no_batches() -> None:
    assert batches([]) == []


def test_items_sorted_and_split_with_deterministic_ids() -> None:
    items = [item(f"e-{i}", W0 + (i * 7) % 5, user=f"u-{i}") for i in range(7)]
    out = batches(items, size=3)
    assert [b.batch_id for b in out] == [f"eu-west:email:{W0}:{n}" for n in range(3)]
    assert [len(b.items) for b in out] == [3, 3, 1]
    flat = [eid for b in out for eid in b.event_ids]
    assert flat == [i.event_id for i in sorted(items, key=lambda i: (i.occurred_at_ms, i.event_id))]
    for b in out:
        assert (b.region, b.channel, b.window_start_ms, b.window_end_ms) == (
            "eu-west",
            "email",
            W0,
            W1,
        )
        assert all(m.idempotency_key == f"{m.event_ids[0]}:email" for m in b.items)


def test_input_order_does_not_matter() -> None:
    items = [item(f"e-{i}", W0 + i % 3, user=f"u-{i % 4}") for i in range(20)]
    shuffled = list(items)
    random.Random(7).shuffle(shuffled)
    for digest in (False, True):
        assert batches(items, 4, digest) == batches(shuffled, 4, digest)


def test_ties_are_broken_by_event_id() -> None:
    out = batches([item("e-b", W0), item("e-a", W0)], digest=False)
    assert out[0].event_ids == ("e-a", "e-b")


def test_duplicate_event_ids_are_dropped() -> None:
    out = batches([item("e-1", W0), item("e-1", W0), item("e-2", W0 + 1, user="u-2")])
    assert out[0].event_ids == ("e-1", "e-2")


def test_digest_folds_items_per_user_and_address() -> None:
    items = [
        item("e-3", W0 + 3, user="u-1"),
        item("e-1", W0 + 1, user="u-1"),
        item("e-2", W0 + 2, user="u-2", address="b@example.com"),
        item("e-4", W0 + 4, user="u-1", address="new@example.com"),
    ]
    (b,) = batches(items, digest=True)
    assert [m.event_ids for m in b.items] == [("e-1", "e-3"), ("e-2",), ("e-4",)]
    digest_msg = b.items[0]
    assert digest_msg.idempotency_key == digest_key("email", ("e-3", "e-1"))
    assert digest_msg.idempotency_key.startswith("digest:email:")
    assert digest_msg.payloads == ({"n": "e-1"}, {"n": "e-3"})
    assert digest_msg.occurred_at_ms == W0 + 1
    assert b.items[1].idempotency_key == "e-2:email"
    assert b.event_ids == ("e-1", "e-3", "e-2", "e-4")


def test_digest_key_is_order_independent_and_content_sensitive() -> None:
    assert digest_key("sms", ("a", "b")) == digest_key("sms", ("b", "a"))
    assert digest_key("sms", ("a", "b")) != digest_key("sms", ("a", "c"))
    assert digest_key("sms", ("a", "b")) != digest_key("push", ("a", "b"))


def test_without_digest_every_item_is_its_own_message() -> None:
    items = [item("e-1", W0), item("e-2", W0 + 1)]
    (b,) = batches(items, digest=False)
    assert [m.event_ids for m in b.items] == [("e-1",), ("e-2",)]


def test_wiring_errors_raise() -> None:
    with pytest.raises(ValueError):
        batches([item("e-1", W0)], size=0)
    with pytest.raises(ValueError):
        make_batches([item("e-1", W0)], "us-east", "email", W0, W1, 10, False)


def test_json_round_trip_and_shape() -> None:
    items = [item("e-1", W0), item("e-2", W0 + 1), item("e-3", W0 + 2, user="u-9", address=None)]
    for b in batches(items, size=2, digest=True):
        raw = batch_to_json(b)
        assert batch_from_json(raw) == b
        d = orjson.loads(raw)
        assert d["size"] == len(b.items) and d["batch_id"] == b.batch_id
        assert set(d["messages"][0]) == {
            "idempotency_key", "user_id", "address", "event_ids", "payloads",
            "occurred_at_ms", "traceparent", "parent_traceparent",
        }  # fmt: skip
    assert isinstance(batch_from_json(b"{}"), Rejection)
    assert isinstance(batch_from_json(b"nope"), Rejection)


def test_addresses_never_in_repr_or_log_fields() -> None:
    (b,) = batches([item("e-1", W0, address="secret@example.com")])
    text = repr(b) + orjson.dumps(batch_log_fields(b)).decode()
    assert "secret@example.com" not in text
    assert batch_log_fields(b)["event_ids"] == ["e-1"]


def test_item_for_event() -> None:
    ev = parse_event(event_bytes(event_id="e-5", payload={"order_id": "o-5"}), ValidationLimits())
    assert isinstance(ev, Event)
    it = item_for(ev, "sms", "+15550000042")
    assert (it.event_id, it.channel, it.region, it.user_id) == ("e-5", "sms", "eu-west", "u-42")
    assert it.address == "+15550000042"
    assert (
        it.payload
        == render_payload(ev)
        == {
            "type": "order_shipped",
            "priority": "normal",
            "data": {"order_id": "o-5"},
        }
    )
    assert it.occurred_at_ms == ev.occurred_at_ms and it.traceparent == ev.traceparent


def test_channel_record_carries_the_branch_span_as_a_child_of_the_event_span() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    items = [
        DeliveryItem("e-1", "email", "eu-west", "u-1", "a@example.com", {}, W0, parent),
        DeliveryItem("e-2", "email", "eu-west", "u-2", "b@example.com", {}, W0 + 1, parent),
    ]
    (b,) = batches(items, digest=False)
    m1, m2 = orjson.loads(batch_to_json(b))["messages"]
    for m in (m1, m2):
        assert m["parent_traceparent"] == parent
        child = m["traceparent"]
        assert child[:36] == parent[:36] and child[52:] == parent[52:], "same version, trace id, flags"
        assert child[36:52] != parent[36:52], "a span of its own"
    assert m1["traceparent"] != m2["traceparent"], "events sharing a traceparent get distinct branch spans"
    assert batch_from_json(batch_to_json(b)) == b, "the event's traceparent round-trips"
