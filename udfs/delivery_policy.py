"""Retry policy and error classification for provider deliveries (pure logic, no I/O).

Field names follow Temporal's ``RetryPolicy`` (``initial_interval``, ``backoff_coefficient``,
``maximum_interval``, ``maximum_attempts``, ``non_retryable_errors``) so the knobs read the
same as in the system most engineers know; durations are plain float seconds. ``jitter`` is
an addition (Temporal jitters on the server side): ``full`` (AWS "full jitter", the
default), ``equal`` or ``none``.

Example::

    >>> import random
    >>> p = RetryPolicy.from_dict({"initial_interval": 0.5, "maximum_attempts": 3})
    >>> next_delay(p, attempt=1, rng=random.Random(7), retry_after_s=None) <= 0.5
    True
    >>> next_delay(p, attempt=3, rng=random.Random(7), retry_after_s=None) is None
    True
    >>> classify(429, "rate_limited", timed_out=False, policy=p)
    <ErrorClass.RETRYABLE: 'retryable'>
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["ErrorClass", "RetryPolicy", "classify", "next_delay"]

JITTER_MODES = ("full", "equal", "none")

#: Temporal's default cap is 100 x initial_interval when maximum_interval is not set.
DEFAULT_MAXIMUM_INTERVAL_FACTOR = 100.0


class ErrorClass(enum.Enum):
    """Outcome class of one delivery attempt."""

    SUCCESS = "success"
    RETRYABLE = "retryable"
    NON_RETRYABLE = "non_retryable"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how fast a failed delivery is retried (Temporal field names).

    ``maximum_interval=None`` means ``100 * initial_interval`` (Temporal's default);
    ``maximum_attempts`` counts all attempts including the first, ``0`` = unlimited.
    """

    initial_interval: float = 1.0
    backoff_coefficient: float = 2.0
    maximum_interval: float | None = None
    maximum_attempts: int = 0
    non_retryable_errors: tuple[str, ...] = ()
    jitter: str = "full"

    def __post_init__(self) -> None:
        """Validate every field; raise ``ValueError`` naming the field."""
        _check_number("initial_interval", self.initial_interval)
        if self.initial_interval <= 0:
            raise ValueError(f"initial_interval must be > 0 seconds, got {self.initial_interval}")
        _check_number("backoff_coefficient", self.backoff_coefficient)
        if self.backoff_coefficient < 1:
            raise ValueError(f"backoff_coefficient must be >= 1, got {self.backoff_coefficient}")
        if self.maximum_interval is not None:
            _check_number("maximum_interval", self.maximum_interval)
            if self.maximum_interval < self.initial_interval:
                raise ValueError(
                    f"maximum_interval ({self.maximum_interval}) must be >= "
                    f"initial_interval ({self.initial_interval})"
                )
        if isinstance(self.maximum_attempts, bool) or not isinstance(self.maximum_attempts, int):
            raise ValueError(
                f"maximum_attempts must be an integer, got {type(self.maximum_attempts).__name__}"
            )
        if self.maximum_attempts < 0:
            raise ValueError(f"maximum_attempts must be >= 0 (0 = unlimited), got {self.maximum_attempts}")
        if not isinstance(self.non_retryable_errors, tuple) or not all(
            isinstance(c, str) and c for c in self.non_retryable_errors
        ):
            raise ValueError("non_retryable_errors must be a tuple of non-empty strings")
        if self.jitter not in JITTER_MODES:
            raise ValueError(f"jitter must be one of {', '.join(JITTER_MODES)}; got {self.jitter!r}")

    @property
    def interval_cap(self) -> float:
        """The effective maximum interval in seconds."""
        if self.maximum_interval is not None:
            return self.maximum_interval
        return self.initial_interval * DEFAULT_MAXIMUM_INTERVAL_FACTOR

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RetryPolicy:
        """Build a policy from a config mapping (e.g. parsed YAML); unknown keys are errors.

        ``non_retryable_error_types`` (Temporal's spelling) is accepted as an alias.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"retry policy must be a mapping, got {type(d).__name__}")
        data = dict(d)
        if "non_retryable_error_types" in data:
            if "non_retryable_errors" in data:
                raise ValueError("give either non_retryable_errors or non_retryable_error_types, not both")
            data["non_retryable_errors"] = data.pop("non_retryable_error_types")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown retry policy key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
            )
        if "non_retryable_errors" in data:
            codes = data["non_retryable_errors"]
            if codes is None:
                codes = ()
            if isinstance(codes, str) or not isinstance(codes, list | tuple):
                raise ValueError("non_retryable_errors must be a list of error codes")
            data["non_retryable_errors"] = tuple(codes)
        for name in ("initial_interval", "backoff_coefficient", "maximum_interval"):
            value = data.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                data[name] = float(value)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (inverse of :meth:`from_dict`)."""
        return {
            "initial_interval": self.initial_interval,
            "backoff_coefficient": self.backoff_coefficient,
            "maximum_interval": self.maximum_interval,
            "maximum_attempts": self.maximum_attempts,
            "non_retryable_errors": list(self.non_retryable_errors),
            "jitter": self.jitter,
        }


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")


def backoff(policy: RetryPolicy, attempt: int) -> float:
    """Un-jittered delay after failed attempt ``attempt`` (1-based), capped at the maximum."""
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    cap = policy.interval_cap
    try:
        delay = policy.initial_interval * float(policy.backoff_coefficient) ** (attempt - 1)
    except OverflowError:  # huge attempt numbers
        return cap
    return min(cap, delay)


def next_delay(
    policy: RetryPolicy,
    attempt: int,
    rng: random.Random,
    retry_after_s: float | None = None,
) -> float | None:
    """Seconds to wait before the next attempt after attempt ``attempt`` failed; None = give up.

    ``attempt`` is the 1-based number of the attempt that just failed. The base delay is
    ``min(maximum_interval, initial_interval * backoff_coefficient ** (attempt - 1))``;
    jitter ``full`` draws uniform(0, base), ``equal`` draws base/2 + uniform(0, base/2),
    ``none`` returns base. A provider's ``Retry-After`` is a lower bound on the result
    (it may exceed ``maximum_interval``: the provider said so).
    """
    if policy.maximum_attempts and attempt >= policy.maximum_attempts:
        return None
    base = backoff(policy, attempt)
    if policy.jitter == "full":
        delay = rng.uniform(0.0, base)
    elif policy.jitter == "equal":
        delay = base / 2 + rng.uniform(0.0, base / 2)
    else:
        delay = base
    if retry_after_s is not None and retry_after_s > delay:
        delay = float(retry_after_s)
    return delay


def classify(
    status_code: int | None,
    error_code: str | None,
    timed_out: bool,
    policy: RetryPolicy,
) -> ErrorClass:
    """Classify one attempt's outcome.

    Precedence: an ``error_code`` listed in ``policy.non_retryable_errors`` is
    NON_RETRYABLE whatever the status; then timeouts and connection errors
    (``status_code is None``) are RETRYABLE; 2xx is SUCCESS; 408, 429 and 5xx are
    RETRYABLE; every other status (other 4xx, unexpected 1xx/3xx) is NON_RETRYABLE.
    """
    if error_code is not None and error_code in policy.non_retryable_errors:
        return ErrorClass.NON_RETRYABLE
    if timed_out or status_code is None:
        return ErrorClass.RETRYABLE
    if not 100 <= status_code <= 599:
        raise ValueError(f"not an HTTP status code: {status_code}")
    if 200 <= status_code < 300:
        return ErrorClass.SUCCESS
    if status_code in (408, 429) or status_code >= 500:
        return ErrorClass.RETRYABLE
    return ErrorClass.NON_RETRYABLE
