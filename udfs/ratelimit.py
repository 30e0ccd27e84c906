"""Token bucket rate limiter with injected time (pure logic, no I/O).

The bucket holds up to ``burst`` tokens and refills at ``rate_per_s``; it starts full.
Time is the ``now_s`` argument (any monotonic seconds), so Flink timers and tests drive it
and :meth:`TokenBucket.snapshot` fits into checkpointed state.

Example::

    >>> b = TokenBucket(rate_per_s=10, burst=2)
    >>> b.try_take(0.0), b.try_take(0.0), b.try_take(0.0)
    (0.0, 0.0, 0.1)
    >>> b.try_take(0.1)
    0.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["TokenBucket"]

# Tolerance for float round-off: waiting exactly the returned time must succeed.
_EPS = 1e-9


class TokenBucket:
    """A token bucket: ``rate_per_s`` tokens per second, at most ``burst`` stored."""

    def __init__(self, rate_per_s: float, burst: float, now_s: float | None = None) -> None:
        for name, value in (("rate_per_s", rate_per_s), ("burst", burst)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {type(value).__name__}")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self._tokens = self.burst
        self._last_s = now_s  # None until the first call

    def _refill(self, now_s: float) -> None:
        if self._last_s is None:
            self._last_s = now_s
            return
        if now_s > self._last_s:  # a clock going backwards never adds or removes tokens
            self._tokens = min(self.burst, self._tokens + (now_s - self._last_s) * self.rate_per_s)
            self._last_s = now_s

    def tokens(self, now_s: float) -> float:
        """Tokens available at ``now_s``."""
        self._refill(now_s)
        return self._tokens

    def try_take(self, now_s: float, n: float = 1) -> float:
        """Take ``n`` tokens at ``now_s``: 0.0 if taken, else the seconds to wait (nothing taken).

        Raises ``ValueError`` if ``n`` exceeds ``burst`` (it could never succeed).
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n > self.burst:
            raise ValueError(f"cannot take {n} tokens from a bucket with burst {self.burst}")
        self._refill(now_s)
        if self._tokens + _EPS >= n:
            self._tokens = max(0.0, self._tokens - n)
            return 0.0
        return (n - self._tokens) / self.rate_per_s

    def snapshot(self) -> dict[str, Any]:
        """State as a plain dict (for Flink state)."""
        return {
            "rate_per_s": self.rate_per_s,
            "burst": self.burst,
            "tokens": self._tokens,
            "last_s": self._last_s,
        }

    @classmethod
    def restore(
        cls,
        snapshot: Mapping[str, Any],
        rate_per_s: float | None = None,
        burst: float | None = None,
    ) -> TokenBucket:
        """Rebuild from :meth:`snapshot`; a new ``rate_per_s``/``burst`` may replace the old."""
        b = cls(rate_per_s or snapshot["rate_per_s"], burst or snapshot["burst"])
        b._tokens = min(b.burst, float(snapshot["tokens"]))
        last = snapshot["last_s"]
        b._last_s = None if last is None else float(last)
        return b

    def __repr__(self) -> str:
        return f"TokenBucket(rate_per_s={self.rate_per_s}, burst={self.burst})"
