import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udfs.ratelimit import TokenBucket


def test_starts_full_then_limits() -> None:
    b = TokenBucket(rate_per_s=2, burst=3)
    assert [b.try_take(10.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.try_take(10.0) == pytest.approx(0.5)
    # a refused take takes nothing
    assert b.try_take(10.0) == pytest.approx(0.5)


def test_waiting_the_returned_time_succeeds() -> None:
    b = TokenBucket(rate_per_s=3, burst=1)
    now = 0.0
    assert b.try_take(now) == 0.0
    for _ in range(50):
        wait = b.try_take(now)
        assert wait > 0
        now += wait
        assert b.try_take(now) == 0.0


def test_refill_is_capped_at_burst() -> None:
    b = TokenBucket(rate_per_s=100, burst=5)
    b.try_take(0.0, 5)
    assert b.tokens(1000.0) == 5.0


def test_take_many_reports_wait_for_the_missing_tokens() -> None:
    b = TokenBucket(rate_per_s=10, burst=10)
    assert b.try_take(0.0, 8) == 0.0
    assert b.try_take(0.0, 5) == pytest.approx(0.3)
    assert b.try_take(0.3, 5) == 0.0


def test_more_than_burst_can_never_succeed() -> None:
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(rate_per_s=1, burst=2).try_take(0.0, 3)


def test_clock_going_backwards_adds_nothing() -> None:
    b = TokenBucket(rate_per_s=1, burst=1)
    assert b.try_take(100.0) == 0.0
    assert b.try_take(50.0) > 0
    assert b.try_take(100.5) == pytest.approx(0.5)
    assert b.try_take(101.0) == 0.0


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0), (float("inf"), 1), ("1", 1), (True, 1)])
def test_rejects_bad_settings(rate: object, burst: object) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)  # type: ignore[arg-type]


def test_snapshot_restore_round_trip() -> None:
    b = TokenBucket(rate_per_s=4, burst=4)
    b.try_take(1.0, 3)
    c = TokenBucket.restore(b.snapshot())
    assert c.try_take(1.0, 2) == b.try_take(1.0, 2) == pytest.approx(0.25)
    smaller = TokenBucket.restore(b.snapshot(), burst=0.5)
    assert smaller.tokens(1.0) <= 0.5


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.5, 50),
    burst=st.integers(1, 20),
    steps=st.lists(st.tuples(st.floats(0, 2), st.integers(1, 20)), max_size=60),
)
def test_never_admits_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, steps: list[tuple[float, int]]
) -> None:
    b = TokenBucket(rate, burst)
    now = 0.0
    taken = 0
    for dt, n in steps:
        now += dt
        n = min(n, burst)
        wait = b.try_take(now, n)
        assert wait >= 0
        if wait == 0:
            taken += n
        assert taken <= burst + rate * now + 1e-6
