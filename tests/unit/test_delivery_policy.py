import random

import pytest

from udfs.delivery_policy import ErrorClass, RetryPolicy, backoff, classify, next_delay

NONE = RetryPolicy(initial_interval=1.0, backoff_coefficient=2.0, maximum_interval=10.0, jitter="none")


def test_defaults_follow_temporal() -> None:
    p = RetryPolicy()
    assert (p.initial_interval, p.backoff_coefficient, p.maximum_attempts) == (1.0, 2.0, 0)
    assert p.maximum_interval is None
    assert p.interval_cap == 100.0  # 100 x initial_interval
    assert p.jitter == "full"
    assert RetryPolicy(initial_interval=0.5).interval_cap == 50.0


def test_from_dict_round_trip_and_alias() -> None:
    p = RetryPolicy.from_dict(
        {
            "initial_interval": 1,
            "backoff_coefficient": 3,
            "maximum_interval": 30,
            "maximum_attempts": 5,
            "non_retryable_error_types": ["invalid_recipient"],
            "jitter": "equal",
        }
    )
    assert p.non_retryable_errors == ("invalid_recipient",)
    assert isinstance(p.initial_interval, float)
    assert RetryPolicy.from_dict(p.to_dict()) == p


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"initial_intervall": 1}, "unknown retry policy key.*initial_intervall"),
        ({"initial_interval": 0}, "initial_interval must be > 0"),
        ({"initial_interval": "1s"}, "initial_interval must be a number"),
        ({"initial_interval": float("inf")}, "must be finite"),
        ({"backoff_coefficient": 0.5}, "backoff_coefficient must be >= 1"),
        ({"initial_interval": 5, "maximum_interval": 1}, "maximum_interval .* must be >="),
        ({"maximum_attempts": -1}, "maximum_attempts must be >= 0"),
        ({"maximum_attempts": 2.5}, "maximum_attempts must be an integer"),
        ({"maximum_attempts": True}, "maximum_attempts must be an integer"),
        ({"non_retryable_errors": "invalid_recipient"}, "must be a list"),
        ({"non_retryable_errors": [""]}, "non-empty strings"),
        ({"jitter": "partial"}, "jitter must be one of full, equal, none"),
        (
            {"non_retryable_errors": [], "non_retryable_error_types": []},
            "either non_retryable_errors or",
        ),
    ],
)
def test_from_dict_rejects_bad_input(d: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RetryPolicy.from_dict(d)


def test_from_dict_rejects_non_mapping() -> None:
    with pytest.raises(ValueError, match="must be a mapping"):
        RetryPolicy.from_dict([1, 2])  # type: ignore[arg-type]


def test_unjittered_schedule_is_exponential_and_capped() -> None:
    rng = random.Random(0)
    delays = [next_delay(NONE, a, rng) for a in range(1, 8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert backoff(NONE, 10_000) == 10.0
    assert next_delay(RetryPolicy(jitter="none"), 5000, random.Random(0)) == 100.0


def test_attempt_is_one_based() -> None:
    with pytest.raises(ValueError, match="1-based"):
        next_delay(NONE, 0, random.Random(0))


def test_full_jitter_stays_within_zero_and_base_over_many_seeds() -> None:
    p = RetryPolicy(initial_interval=1.0, backoff_coefficient=2.0, maximum_interval=10.0)
    for attempt in (1, 3, 6):
        base = min(10.0, 2.0 ** (attempt - 1))
        draws = [next_delay(p, attempt, random.Random(seed)) for seed in range(2000)]
        assert all(d is not None and 0.0 <= d <= base for d in draws)
        values = [d for d in draws if d is not None]
        mean = sum(values) / len(values)
        assert 0.45 * base < mean < 0.55 * base  # uniform(0, base)
        assert min(values) < 0.05 * base and max(values) > 0.95 * base  # really spread


def test_equal_jitter_stays_within_half_and_base() -> None:
    p = RetryPolicy(initial_interval=2.0, maximum_interval=100.0, jitter="equal")
    draws = [next_delay(p, 3, random.Random(seed)) for seed in range(1000)]
    assert all(d is not None and 4.0 <= d <= 8.0 for d in draws)
    assert len(set(draws)) > 900


def test_jitter_is_reproducible_with_a_seed() -> None:
    p = RetryPolicy()
    a = [next_delay(p, n, random.Random(42)) for n in range(1, 6)]
    b = [next_delay(p, n, random.Random(42)) for n in range(1, 6)]
    assert a == b


def test_retry_after_is_a_lower_bound() -> None:
    p = RetryPolicy(initial_interval=1.0, maximum_interval=2.0)
    for seed in range(500):
        d = next_delay(p, 1, random.Random(seed), retry_after_s=5.0)
        assert d == 5.0  # even above maximum_interval: the provider said so
    # a Retry-After below the computed delay changes nothing
    assert next_delay(NONE, 4, random.Random(0), retry_after_s=1.0) == 8.0
    assert next_delay(NONE, 4, random.Random(0), retry_after_s=9.0) == 9.0


def test_maximum_attempts_gives_up() -> None:
    p = RetryPolicy(maximum_attempts=3, jitter="none")
    assert next_delay(p, 1, random.Random(0)) == 1.0
    assert next_delay(p, 2, random.Random(0)) == 2.0
    assert next_delay(p, 3, random.Random(0)) is None
    assert next_delay(p, 4, random.Random(0), retry_after_s=1.0) is None
    one = RetryPolicy(maximum_attempts=1)
    assert next_delay(one, 1, random.Random(0)) is None


def test_unlimited_attempts_never_give_up() -> None:
    p = RetryPolicy(maximum_attempts=0)
    assert all(next_delay(p, a, random.Random(a)) is not None for a in range(1, 500))


POLICY = RetryPolicy(non_retryable_errors=("invalid_recipient", "opted_out"))


@pytest.mark.parametrize(
    ("status", "code", "timed_out", "expected"),
    [
        (200, None, False, ErrorClass.SUCCESS),
        (202, None, False, ErrorClass.SUCCESS),
        (None, None, True, ErrorClass.RETRYABLE),  # client timeout
        (None, "connection_error", False, ErrorClass.RETRYABLE),
        (504, "timeout", True, ErrorClass.RETRYABLE),
        (408, None, False, ErrorClass.RETRYABLE),
        (429, "rate_limited", False, ErrorClass.RETRYABLE),
        (500, None, False, ErrorClass.RETRYABLE),
        (502, None, False, ErrorClass.RETRYABLE),
        (503, "unavailable", False, ErrorClass.RETRYABLE),
        (503, "outage", False, ErrorClass.RETRYABLE),
        (400, "invalid_recipient", False, ErrorClass.NON_RETRYABLE),
        (400, "missing_recipient", False, ErrorClass.NON_RETRYABLE),
        (401, None, False, ErrorClass.NON_RETRYABLE),
        (404, "unknown_channel", False, ErrorClass.NON_RETRYABLE),
        (413, None, False, ErrorClass.NON_RETRYABLE),
        (422, None, False, ErrorClass.NON_RETRYABLE),
        (302, None, False, ErrorClass.NON_RETRYABLE),
        # the policy's list wins over the status
        (503, "opted_out", False, ErrorClass.NON_RETRYABLE),
        (None, "invalid_recipient", True, ErrorClass.NON_RETRYABLE),
    ],
)
def test_classification_table(
    status: int | None, code: str | None, timed_out: bool, expected: ErrorClass
) -> None:
    assert classify(status, code, timed_out, POLICY) is expected


def test_classify_rejects_non_http_status() -> None:
    with pytest.raises(ValueError, match="not an HTTP status"):
        classify(42, None, False, POLICY)
