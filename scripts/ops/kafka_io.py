"""Kafka client helpers (kafka-python) for tests, demo and benchmarks: produce, read committed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

from kafka import KafkaConsumer, KafkaProducer, TopicPartition


def fresh_name(label: str) -> str:
    """Return a topic name no other test uses."""
    return f"t-{label}-{uuid.uuid4().hex[:10]}"


def produce(bootstrap: str, topic: str, values: Iterable[bytes], keys: Iterable[bytes] | None = None) -> int:
    """Produce ``values`` (optionally keyed) and flush; return how many were sent."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    n = 0
    try:
        key_iter = iter(keys) if keys is not None else None
        for value in values:
            key = next(key_iter) if key_iter is not None else None
            producer.send(topic, value=value, key=key)
            n += 1
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)
    return n


def end_offsets(bootstrap: str, topic: str, isolation: str = "read_committed") -> dict[int, int]:
    """Return the end offset of each partition of ``topic``."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def consume_all(
    bootstrap: str,
    topic: str,
    isolation: str = "read_committed",
    expect: int | None = None,
    timeout_s: float = 30.0,
    idle_s: float = 2.0,
) -> list[bytes]:
    """Read every record of ``topic`` from the beginning.

    Stops when ``expect`` records were read and no more arrived for ``idle_s``, or when the
    topic was idle for ``idle_s`` (no ``expect``), or at ``timeout_s``.
    """
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        isolation_level=isolation,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200)
            got = [rec.value for recs in batch.values() for rec in recs]
            if got:
                values.extend(got)
                last_new = time.monotonic()
                continue
            idle = time.monotonic() - last_new
            if (expect is None or len(values) >= expect) and idle >= idle_s:
                break
    finally:
        consumer.close()
    return values
