import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udfs.breaker import BreakerConfig, CircuitBreaker, State

CFG = BreakerConfig(
    failure_rate_threshold=50,
    sliding_window_size=4,
    minimum_number_of_calls=4,
    wait_duration_in_open_state=10,
    permitted_number_of_calls_in_half_open_state=2,
)


def call(b: CircuitBreaker, now: float, ok: bool) -> bool:
    """Acquire and record one call; return whether it was admitted."""
    if not b.try_acquire(now):
        return False
    if ok:
        b.on_success(now)
    else:
        b.on_failure(now)
    return True


def opened(at: float = 0.0, cfg: BreakerConfig = CFG) -> CircuitBreaker:
    b = CircuitBreaker(cfg)
    for _ in range(cfg.sliding_window_size):
        call(b, at, ok=False)
    assert b.state(at) is State.OPEN
    return b


def test_defaults_are_resilience4j_defaults() -> None:
    c = BreakerConfig()
    assert (c.failure_rate_threshold, c.sliding_window_size, c.minimum_number_of_calls) == (
        50.0,
        100,
        100,
    )
    assert (c.wait_duration_in_open_state, c.permitted_number_of_calls_in_half_open_state) == (
        60.0,
        10,
    )
    assert CircuitBreaker().state(0.0) is State.CLOSED


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"failure_rate_threshold": 0}, "failure_rate_threshold"),
        ({"failure_rate_threshold": 101}, "failure_rate_threshold"),
        ({"sliding_window_size": 0}, "sliding_window_size"),
        ({"minimum_number_of_calls": 1.5}, "minimum_number_of_calls"),
        ({"permitted_number_of_calls_in_half_open_state": 0}, "permitted_number"),
        ({"wait_duration_in_open_state": -1}, "wait_duration_in_open_state"),
        ({"wait_duration_in_open_state": "60s"}, "wait_duration_in_open_state"),
        ({"slidingWindowSize": 3}, "unknown circuit breaker key"),
    ],
)
def test_config_validation(d: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BreakerConfig.from_dict(d)


def test_gauge_values() -> None:
    assert [int(s) for s in (State.CLOSED, State.OPEN, State.HALF_OPEN)] == [0, 1, 2]
    b = opened()
    assert b.gauge(0.0) == 1
    assert b.gauge(10.0) == 2


def test_stays_closed_below_minimum_number_of_calls() -> None:
    b = CircuitBreaker(CFG)
    for _ in range(3):
        assert call(b, 0.0, ok=False)
    assert b.state(0.0) is State.CLOSED
    assert b.failure_rate() == -1.0
    call(b, 0.0, ok=False)
    assert b.state(0.0) is State.OPEN


def test_opens_at_threshold_not_below() -> None:
    b = CircuitBreaker(CFG)
    for ok in (True, True, True, False):  # 25 %
        call(b, 0.0, ok)
    assert b.state(0.0) is State.CLOSED
    assert b.failure_rate() == 25.0
    call(b, 0.0, ok=False)  # window: T T F F -> 50 % >= 50 %
    assert b.state(0.0) is State.OPEN


def test_sliding_window_forgets_old_failures() -> None:
    cfg = BreakerConfig(failure_rate_threshold=75, sliding_window_size=4, minimum_number_of_calls=4)
    b = CircuitBreaker(cfg)
    for ok in (False, False, True, True, True, True, False, False):
        call(b, 0.0, ok)
        assert b.state(0.0) is State.CLOSED
    assert b.failure_rate() == 50.0


def test_minimum_calls_above_window_size_evaluates_when_window_full() -> None:
    cfg = BreakerConfig(sliding_window_size=3, minimum_number_of_calls=10)
    b = CircuitBreaker(cfg)
    for _ in range(3):
        call(b, 0.0, ok=False)
    assert b.state(0.0) is State.OPEN


def test_open_rejects_until_wait_then_half_open() -> None:
    b = opened(at=5.0)
    assert not b.try_acquire(5.0)
    assert not b.try_acquire(14.999)
    assert b.state(14.999) is State.OPEN
    assert b.state(15.0) is State.HALF_OPEN
    assert b.try_acquire(15.0)


def test_late_outcomes_in_open_are_ignored() -> None:
    b = opened()
    b.on_success(1.0)
    b.on_failure(1.0)
    assert b.state(1.0) is State.OPEN
    assert b.snapshot()["window"] == [1, 1, 1, 1]


def test_half_open_permits_only_the_trial_calls() -> None:
    b = opened()
    assert b.try_acquire(10.0)
    assert b.try_acquire(10.0)
    assert not b.try_acquire(10.0)
    assert not b.try_acquire(11.0)
    assert b.state(11.0) is State.HALF_OPEN


def test_half_open_closes_when_trials_succeed() -> None:
    b = opened()
    assert b.try_acquire(10.0) and b.try_acquire(10.0)
    b.on_success(10.5)
    assert b.state(10.5) is State.HALF_OPEN  # decision waits for all trials
    b.on_success(11.0)
    assert b.state(11.0) is State.CLOSED
    assert b.failure_rate() == -1.0  # a fresh window
    assert b.try_acquire(11.0)


def test_half_open_reopens_when_trials_fail_with_a_new_wait() -> None:
    b = opened()
    assert b.try_acquire(10.0) and b.try_acquire(10.0)
    b.on_success(10.0)
    b.on_failure(12.0)  # 50 % >= threshold
    assert b.state(12.0) is State.OPEN
    assert not b.try_acquire(21.9)
    assert b.state(22.0) is State.HALF_OPEN


def test_release_returns_a_half_open_permit() -> None:
    b = opened()
    assert b.try_acquire(10.0) and b.try_acquire(10.0)
    b.release(10.0)
    assert b.try_acquire(10.0)
    assert not b.try_acquire(10.0)


def test_max_wait_in_half_open_reopens_stuck_trials() -> None:
    cfg = BreakerConfig(
        sliding_window_size=2,
        minimum_number_of_calls=2,
        wait_duration_in_open_state=10,
        permitted_number_of_calls_in_half_open_state=1,
        max_wait_duration_in_half_open_state=5,
    )
    b = opened(cfg=cfg)
    assert b.try_acquire(10.0)  # trial whose outcome never arrives
    assert b.state(14.9) is State.HALF_OPEN
    assert b.state(15.0) is State.OPEN  # opened at 15
    assert b.state(24.9) is State.OPEN
    assert b.state(25.0) is State.HALF_OPEN
    # far in the future: cycles HALF_OPEN(5) / OPEN(10) are skipped in one step
    assert b.state(25.0 + 15 * 1000 + 1) is State.HALF_OPEN
    assert b.state(25.0 + 15 * 1000 + 6) is State.OPEN


def test_without_max_wait_half_open_waits_for_trials() -> None:
    b = opened()
    assert b.try_acquire(10.0) and b.try_acquire(10.0)
    assert b.state(1e9) is State.HALF_OPEN


@pytest.mark.parametrize("where", ["closed", "open", "half_open", "half_open_one_result"])
def test_snapshot_restore_round_trip(where: str) -> None:
    b = CircuitBreaker(CFG)
    call(b, 0.0, ok=False)
    call(b, 0.0, ok=True)
    if where != "closed":
        b = opened(at=1.0)
    if where.startswith("half_open"):
        assert b.try_acquire(11.0) and b.try_acquire(11.0)
    if where == "half_open_one_result":
        b.on_failure(11.0)
    snap = json.loads(json.dumps(b.snapshot()))  # plain, JSON-safe
    r = CircuitBreaker.restore(snap)
    assert r.snapshot() == b.snapshot()
    assert r.state(11.0) is b.state(11.0)
    if where == "half_open_one_result":
        # the in-flight trial's permit is handed out again after a restore
        assert r.try_acquire(11.0)
        r.on_failure(11.0)
        assert r.state(11.0) is State.OPEN


def test_restore_with_new_config_keeps_newest_outcomes() -> None:
    b = CircuitBreaker(BreakerConfig(sliding_window_size=10, minimum_number_of_calls=10))
    for ok in (False, False, True, True, True):
        call(b, 0.0, ok)
    r = CircuitBreaker.restore(b.snapshot(), BreakerConfig(sliding_window_size=3))
    assert r.snapshot()["window"] == [0, 0, 0]
    assert r.config.sliding_window_size == 3


def test_restore_rejects_unknown_version() -> None:
    snap = CircuitBreaker().snapshot()
    snap["version"] = 99
    with pytest.raises(ValueError, match="version"):
        CircuitBreaker.restore(snap)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["acquire", "success", "failure", "call_ok", "call_fail", "restore"]),
        st.floats(0, 8, allow_nan=False),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(
    ops=OPS,
    window=st.integers(1, 6),
    minimum=st.integers(1, 6),
    permitted=st.integers(1, 3),
    threshold=st.sampled_from([1.0, 34.0, 50.0, 100.0]),
    wait=st.floats(0.5, 20),
)
def test_state_machine_invariants(
    ops: list[tuple[str, float]],
    window: int,
    minimum: int,
    permitted: int,
    threshold: float,
    wait: float,
) -> None:
    cfg = BreakerConfig(
        failure_rate_threshold=threshold,
        sliding_window_size=window,
        minimum_number_of_calls=minimum,
        wait_duration_in_open_state=wait,
        permitted_number_of_calls_in_half_open_state=permitted,
    )
    b = CircuitBreaker(cfg)
    now = 0.0
    opened_at: float | None = None  # oracle: when the breaker last went OPEN
    half_open_admitted = 0
    last = State.CLOSED
    for op, dt in ops:
        now += dt
        before = b.state(now)
        assert before in (State.CLOSED, State.OPEN, State.HALF_OPEN)
        if last is State.OPEN and opened_at is not None and now - opened_at < wait:
            assert before is State.OPEN, "left OPEN before the wait"
        if before is State.OPEN:
            assert opened_at is not None and now - opened_at < wait
            assert not b.try_acquire(now), "OPEN admitted a call before the wait"
        if op == "restore":
            b = CircuitBreaker.restore(json.loads(json.dumps(b.snapshot())))
            half_open_admitted = b.snapshot()["half_open_calls"]
        elif op == "acquire":
            admitted = b.try_acquire(now)
            if before is State.HALF_OPEN and admitted:
                half_open_admitted += 1
                assert half_open_admitted <= permitted
        elif op in ("success", "failure"):
            (b.on_success if op == "success" else b.on_failure)(now)
        else:
            admitted = b.try_acquire(now)
            if before is State.HALF_OPEN and admitted:
                half_open_admitted += 1
                assert half_open_admitted <= permitted
            if admitted:
                (b.on_success if op == "call_ok" else b.on_failure)(now)
        after = b.state(now)
        assert after in (State.CLOSED, State.OPEN, State.HALF_OPEN)
        if after is State.OPEN and before is not State.OPEN:
            opened_at = now
        last = after
        if after is not State.HALF_OPEN:
            half_open_admitted = 0  # trials are counted afresh on each HALF_OPEN entry
