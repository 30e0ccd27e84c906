"""Windowed delivery metrics per (region, channel, window) for ``notifications.metrics``.

:class:`MetricsAccumulator` is shaped for a Flink ``AggregateFunction``:
``create_accumulator`` -> ``MetricsAccumulator()``, ``add`` -> :meth:`~MetricsAccumulator.add`
(a :class:`~udfs.fanin.BranchResult` or a :class:`BatchObservation`), ``merge`` ->
:meth:`~MetricsAccumulator.merge`, ``get_result`` -> :meth:`~MetricsAccumulator.result`.
A ``ProcessWindowFunction`` then adds the key and window bounds with :class:`WindowMetrics`.
Unlike the rest of ``udfs`` the accumulator is mutable: copying it per record would cost
O(n) per add. It pickles (``__slots__`` only, builtin containers).

Percentiles use the *nearest-rank* method: for ``n`` sorted latencies, the p-th
percentile is the value at 1-based rank ``ceil(p / 100 * n)``; it is always an observed
value and p100 is the maximum. Latencies are kept exactly (one int per result that
reports a latency, whatever its status), which is fine for per-second windows.

Record (:func:`metrics_to_json`)::

    {"region": "eu-west", "channel": "email", "window_start_ms": ..., "window_end_ms": ...,
     "count": 120, "counts": {"delivered": 118, "failed": 1, "dead_lettered": 1},
     "attempts": 125, "batches": 3, "batch_size": {"min": 20, "max": 50, "mean": 40.0},
     "latency_ms": {"count": 118, "p50": 31, "p95": 80, "p99": 120, "max": 131}}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from udfs.events import fast_pickle
from udfs.fanin import BranchResult


@fast_pickle
@dataclass(frozen=True, slots=True)
class BatchObservation:
    """One batch delivered in the window (for batch size statistics)."""

    size: int


@fast_pickle
@dataclass(frozen=True, slots=True)
class MetricsSummary:
    """The result of one accumulator: counts, batch sizes and latency percentiles."""

    count: int
    counts: tuple[tuple[str, int], ...]
    attempts: int
    batches: int
    batch_size_min: int | None
    batch_size_max: int | None
    batch_size_mean: float | None
    latency_count: int
    latency_p50: int | None
    latency_p95: int | None
    latency_p99: int | None
    latency_max: int | None


@fast_pickle
@dataclass(frozen=True, slots=True)
class WindowMetrics:
    """A summary placed in its (region, channel, window)."""

    region: str
    channel: str
    window_start_ms: int
    window_end_ms: int
    summary: MetricsSummary


def nearest_rank(sorted_values: list[int], pct: float) -> int | None:
    """Return the nearest-rank percentile of ascending values (None when empty)."""
    n = len(sorted_values)
    if n == 0:
        return None
    rank = max(1, math.ceil(pct / 100.0 * n))
    return sorted_values[min(rank, n) - 1]


class MetricsAccumulator:
    """Mutable accumulator of branch results and batch sizes for one window and key."""

    __slots__ = ("attempts", "batch_sizes", "counts", "latencies")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.attempts = 0
        self.latencies: list[int] = []
        self.batch_sizes: list[int] = []

    def add(self, item: BranchResult | BatchObservation) -> MetricsAccumulator:
        """Add one branch result or batch observation; return self (Flink style)."""
        if isinstance(item, BatchObservation):
            self.batch_sizes.append(item.size)
            return self
        status = item.status.value
        self.counts[status] = self.counts.get(status, 0) + 1
        self.attempts += item.attempts
        if item.latency_ms is not None:
            self.latencies.append(item.latency_ms)
        return self

    def merge(self, other: MetricsAccumulator) -> MetricsAccumulator:
        """Merge another accumulator into this one; return self."""
        for k, v in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + v
        self.attempts += other.attempts
        self.latencies.extend(other.latencies)
        self.batch_sizes.extend(other.batch_sizes)
        return self

    def result(self) -> MetricsSummary:
        """Summarise: counts by status (sorted), batch size stats, latency percentiles."""
        lat = sorted(self.latencies)
        sizes = self.batch_sizes
        return MetricsSummary(
            count=sum(self.counts.values()),
            counts=tuple(sorted(self.counts.items())),
            attempts=self.attempts,
            batches=len(sizes),
            batch_size_min=min(sizes) if sizes else None,
            batch_size_max=max(sizes) if sizes else None,
            batch_size_mean=sum(sizes) / len(sizes) if sizes else None,
            latency_count=len(lat),
            latency_p50=nearest_rank(lat, 50),
            latency_p95=nearest_rank(lat, 95),
            latency_p99=nearest_rank(lat, 99),
            latency_max=lat[-1] if lat else None,
        )


def metrics_to_dict(metrics: WindowMetrics) -> dict[str, Any]:
    """Return the JSON shape of a window's metrics record."""
    s = metrics.summary
    return {
        "region": metrics.region,
        "channel": metrics.channel,
        "window_start_ms": metrics.window_start_ms,
        "window_end_ms": metrics.window_end_ms,
        "count": s.count,
        "counts": dict(s.counts),
        "attempts": s.attempts,
        "batches": s.batches,
        "batch_size": {
            "min": s.batch_size_min,
            "max": s.batch_size_max,
            "mean": s.batch_size_mean,
        },
        "latency_ms": {
            "count": s.latency_count,
            "p50": s.latency_p50,
            "p95": s.latency_p95,
            "p99": s.latency_p99,
            "max": s.latency_max,
        },
    }


def metrics_to_json(metrics: WindowMetrics) -> bytes:
    """Serialise a window's metrics for ``notifications.metrics``."""
    return orjson.dumps(metrics_to_dict(metrics))
