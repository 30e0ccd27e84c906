"""Kafka client helpers (kafka-python) for tests, demo and benchmarks: produce, read committed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

from kafka import KafkaConsumer, KafkaProducer, TopicPartition


def fresh_name(label: str) -> str:
    """Return a topic name no other test uses."""
    return f"t-{label}-{uuid.uuid4().hex[:10]}"


def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[bytes],
    keys: Iterable[bytes] | None = None,
    flush_timeout_s: float = 30,
) -> int:
    """Produce ``values`` (optionally keyed) and flush; return how many were sent."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    n = 0
    try:
        key_iter = iter(keys) if keys is not None else None
        for value in values:
            key = next(key_iter) if key_iter is not None else None
            producer.send(topic, value=value, key=key)
            n += 1
        producer.flush(timeout=flush_timeout_s)
    finally:
        producer.close(timeout=10)
    return n


def consume_all(
    bootstrap: str,
    topic: str,
    isolation: str = "read_committed",
    expect: int | None = None,
    timeout_s: float = 60.0,
) -> list[bytes]:
    """Read every record of ``topic`` up to its current end (the last stable offset).

    With ``read_committed`` the end is the last stable offset, so the result is exactly the
    committed records at call time: no idle-time guessing. With ``expect``, keep reading (and
    re-reading the end) until at least that many records arrived or ``timeout_s`` passed.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level=isolation,
        enable_auto_commit=False,
        group_id=None,
    )
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        parts: set[int] = set()
        while not parts and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic) or set()
            if not parts:
                time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        while time.monotonic() < deadline:
            end = consumer.end_offsets(tps)
            while time.monotonic() < deadline and any(consumer.position(tp) < end[tp] for tp in tps):
                for recs in consumer.poll(timeout_ms=200).values():
                    values.extend(rec.value for rec in recs)
            if expect is None or len(values) >= expect:
                break
            time.sleep(0.2)
    finally:
        consumer.close()
    return values
