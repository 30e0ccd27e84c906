"""Deduplication by ``event_id`` with a time-to-live.

Semantics: the state per ``event_id`` is the time of its *first* sighting. A repeat seen
less than ``ttl_ms`` after the first sighting is a duplicate and does not refresh the
state; a sighting at or after ``first_seen + ttl_ms`` is treated as new and restarts the
TTL. A clock that goes backwards (``now < first_seen``) still counts as within the TTL.

``dedup_step`` is the pure transition a Flink ``KeyedProcessFunction`` (``ValueState`` plus
state TTL or a cleanup timer) calls; :class:`LocalDeduper` is the same logic over a dict
for sequential, non-Flink runs (the ``linear`` reference pipeline and tests).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DedupConfig:
    """How long an ``event_id`` is remembered after its first sighting."""

    ttl_ms: int = 24 * 3600 * 1000

    def __post_init__(self) -> None:
        """Reject a non-positive TTL (a configuration error, not bad input)."""
        if self.ttl_ms <= 0:
            raise ValueError(f"ttl_ms must be positive, got {self.ttl_ms}")


def dedup_step(first_seen_ms: int | None, now_ms: int, ttl_ms: int) -> tuple[bool, int | None]:
    """Return ``(is_duplicate, new_first_seen_ms)`` for one sighting of an event_id."""
    if first_seen_ms is None or now_ms - first_seen_ms >= ttl_ms:
        return False, now_ms
    return True, first_seen_ms


class LocalDeduper:
    """In-memory deduper: a dict of first sightings plus a FIFO of them for expiry.

    Memory stays bounded by the number of ids first seen within the last ``ttl_ms``
    provided ``now_ms`` is non-decreasing (expiry pops from the oldest end in O(1)).
    """

    __slots__ = ("_order", "_seen", "ttl_ms")

    def __init__(self, ttl_ms: int) -> None:
        if ttl_ms <= 0:
            raise ValueError(f"ttl_ms must be positive, got {ttl_ms}")
        self.ttl_ms = ttl_ms
        self._seen: dict[str, int] = {}
        self._order: deque[tuple[int, str]] = deque()

    def seen(self, event_id: str, now_ms: int) -> bool:
        """Record a sighting; return True if it is a duplicate within the TTL."""
        if self._order and self._order[0][0] <= now_ms - self.ttl_ms:
            self.expire(now_ms)
        dup, new = dedup_step(self._seen.get(event_id), now_ms, self.ttl_ms)
        if not dup and new is not None:
            self._seen[event_id] = new
            self._order.append((new, event_id))
        return dup

    def expire(self, now_ms: int) -> int:
        """Drop entries whose TTL has passed; return how many were dropped."""
        seen = self._seen
        order = self._order
        cutoff = now_ms - self.ttl_ms
        dropped = 0
        while order and order[0][0] <= cutoff:
            ts, key = order.popleft()
            if seen.get(key) == ts:  # not re-inserted since
                del seen[key]
                dropped += 1
        return dropped

    def __len__(self) -> int:
        """Return the number of remembered event ids."""
        return len(self._seen)

    def __contains__(self, event_id: object) -> bool:
        """Return True if the event id is currently remembered (expired or not)."""
        return event_id in self._seen
