from __future__ import annotations

import pickle

import orjson

from tests.builders import make_result
from udfs.aggregates import (
    BatchObservation,
    MetricsAccumulator,
    WindowMetrics,
    metrics_to_json,
    nearest_rank,
)
from udfs.fanin import BranchStatus


def test_nearest_rank_definition() -> None:
    values = list(range(1, 101))
    assert nearest_rank(values, 50) == 50
    assert nearest_rank(values, 95) == 95
    assert nearest_rank(values, 99) == 99
    assert nearest_rank(values, 100) == 100
    assert nearest_rank(values, 0) == 1
    assert nearest_rank([10, 20, 30], 50) == 20  # rank ceil(1.5) = 2
    assert nearest_rank([10, 20, 30], 95) == 30
    assert nearest_rank([7], 99) == 7
    assert nearest_rank([1, 2, 3, 4, 5], 50) == 3  # rank ceil(2.5) = 3, not round()
    assert nearest_rank([10, 20, 30], 40) == 20  # rank ceil(1.2) = 2
    assert nearest_rank([], 50) is None


def fill(acc: MetricsAccumulator, latencies: list[int], status: BranchStatus) -> MetricsAccumulator:
    for lat in latencies:
        acc.add(make_result("email", status, latency_ms=lat, attempts=2))
    return acc


def test_counts_attempts_and_percentiles() -> None:
    acc = fill(MetricsAccumulator(), list(range(1, 101)), BranchStatus.DELIVERED)
    acc.add(make_result("email", BranchStatus.FAILED, latency_ms=None, attempts=5))
    acc.add(BatchObservation(40)).add(BatchObservation(60))
    s = acc.result()
    assert s.count == 101
    assert s.counts == (("delivered", 100), ("failed", 1))
    assert s.attempts == 205
    assert (s.batches, s.batch_size_min, s.batch_size_max, s.batch_size_mean) == (2, 40, 60, 50.0)
    assert s.latency_count == 100
    assert (s.latency_p50, s.latency_p95, s.latency_p99, s.latency_max) == (50, 95, 99, 100)


def test_empty_result() -> None:
    s = MetricsAccumulator().result()
    assert s.count == 0 and s.counts == () and s.batches == 0
    assert s.latency_p50 is None and s.batch_size_mean is None and s.latency_max is None


def test_merge_equals_adding_everything_to_one() -> None:
    a = fill(MetricsAccumulator(), [5, 1, 9], BranchStatus.DELIVERED).add(BatchObservation(3))
    b = fill(MetricsAccumulator(), [7, 2], BranchStatus.DEAD_LETTERED).add(BatchObservation(2))
    one = fill(MetricsAccumulator(), [5, 1, 9], BranchStatus.DELIVERED).add(BatchObservation(3))
    fill(one, [7, 2], BranchStatus.DEAD_LETTERED).add(BatchObservation(2))
    assert a.merge(b).result() == one.result()


def test_merge_is_order_independent() -> None:
    def make(lat: list[int]) -> MetricsAccumulator:
        return fill(MetricsAccumulator(), lat, BranchStatus.DELIVERED)

    ab = make([3, 1]).merge(make([9, 4, 4]))
    ba = make([9, 4, 4]).merge(make([3, 1]))
    assert ab.result() == ba.result()


def test_accumulator_pickles() -> None:
    acc = fill(MetricsAccumulator(), [1, 2], BranchStatus.DELIVERED).add(BatchObservation(2))
    assert pickle.loads(pickle.dumps(acc)).result() == acc.result()


def test_metrics_json_shape() -> None:
    acc = fill(MetricsAccumulator(), [10, 20, 30], BranchStatus.DELIVERED).add(BatchObservation(3))
    d = orjson.loads(metrics_to_json(WindowMetrics("eu-west", "email", 0, 1000, acc.result())))
    assert d == {
        "region": "eu-west",
        "channel": "email",
        "window_start_ms": 0,
        "window_end_ms": 1000,
        "count": 3,
        "counts": {"delivered": 3},
        "attempts": 6,
        "batches": 1,
        "batch_size": {"min": 3, "max": 3, "mean": 3.0},
        "latency_ms": {"count": 3, "p50": 20, "p95": 30, "p99": 30, "max": 30},
    }
