"""Count-based circuit breaker with resilience4j semantics and names (pure logic, no I/O).

Why not a library: the venv has no resilience4j-like package, and the candidates on PyPI
(e.g. ``pybreaker``) read the wall clock inside and keep their state in objects that cannot
be snapshotted. Here the breaker's whole state must fit into Flink keyed/operator state
(:meth:`CircuitBreaker.snapshot` / :meth:`CircuitBreaker.restore` as plain dicts) and time
must be injected (``now_s``) so processing-time timers, replays and tests drive it.

Semantics (resilience4j ``CircuitBreakerConfig``, COUNT_BASED window):

- CLOSED: every call is permitted; outcomes go into a ring of the last
  ``sliding_window_size`` calls. Once at least ``minimum_number_of_calls`` outcomes are
  recorded (capped at the window size), a failure rate >= ``failure_rate_threshold``
  percent opens the breaker.
- OPEN: no call is permitted. After ``wait_duration_in_open_state`` seconds the breaker is
  HALF_OPEN (the transition happens automatically, evaluated at the next ``now_s`` seen).
- HALF_OPEN: only ``permitted_number_of_calls_in_half_open_state`` trial calls are
  permitted. When that many outcomes are in, their failure rate decides: >= threshold
  re-opens (a new wait starts), below closes with an empty window. If
  ``max_wait_duration_in_half_open_state`` > 0 and the trials have not completed within it,
  the breaker re-opens (guards against trial calls whose outcome never arrives).

``try_acquire`` returning False means *defer the call* (keep it, retry later), not fail it.
Outcomes reported while OPEN (calls admitted before it opened) are ignored, as the window is
discarded on the way to HALF_OPEN anyway.

Example::

    >>> b = CircuitBreaker(BreakerConfig(sliding_window_size=4, minimum_number_of_calls=4,
    ...                                  wait_duration_in_open_state=10))
    >>> for t in range(4):
    ...     b.try_acquire(t) and b.on_failure(t)
    >>> b.state(4), b.try_acquire(4), b.state(14)
    (<State.OPEN: 1>, False, <State.HALF_OPEN: 2>)
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["BreakerConfig", "CircuitBreaker", "State"]

SNAPSHOT_VERSION = 1


class State(enum.IntEnum):
    """Breaker state; the int value is the gauge value (0 closed, 1 open, 2 half-open)."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


@dataclass(frozen=True)
class BreakerConfig:
    """Breaker settings, resilience4j names and defaults; durations in seconds."""

    failure_rate_threshold: float = 50.0
    sliding_window_size: int = 100
    minimum_number_of_calls: int = 100
    wait_duration_in_open_state: float = 60.0
    permitted_number_of_calls_in_half_open_state: int = 10
    max_wait_duration_in_half_open_state: float = 0.0

    def __post_init__(self) -> None:
        """Validate every field; raise ``ValueError`` naming the field."""
        for name in ("failure_rate_threshold", "wait_duration_in_open_state"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {type(value).__name__}")
        if not 0 < self.failure_rate_threshold <= 100:
            raise ValueError(
                f"failure_rate_threshold is a percentage in (0, 100], got {self.failure_rate_threshold}"
            )
        for name in (
            "sliding_window_size",
            "minimum_number_of_calls",
            "permitted_number_of_calls_in_half_open_state",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("wait_duration_in_open_state", "max_wait_duration_in_half_open_state"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number of seconds, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BreakerConfig:
        """Build a config from a mapping; unknown keys are errors."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown circuit breaker key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
            )
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (inverse of :meth:`from_dict`)."""
        return asdict(self)


class CircuitBreaker:
    """A circuit breaker whose clock is the ``now_s`` argument of every call."""

    def __init__(self, config: BreakerConfig | None = None) -> None:
        self.config = config or BreakerConfig()
        self._state = State.CLOSED
        self._window: deque[bool] = deque(maxlen=self.config.sliding_window_size)  # True=fail
        self._window_failures = 0
        self._opened_at_s = 0.0
        self._half_open_at_s = 0.0
        self._half_open_permits = 0  # trial permits handed out in HALF_OPEN
        self._half_open_calls = 0  # trial outcomes recorded
        self._half_open_failures = 0

    # -- state --------------------------------------------------------------------------

    def state(self, now_s: float) -> State:
        """Return the state at ``now_s`` (applying due OPEN/HALF_OPEN timeouts)."""
        self._advance(now_s)
        return self._state

    def gauge(self, now_s: float) -> int:
        """State as a metric gauge value: 0 closed, 1 open, 2 half-open."""
        return int(self.state(now_s))

    def failure_rate(self) -> float:
        """Failure rate in percent of the CLOSED window; -1 while below the minimum calls."""
        n = len(self._window)
        if n == 0 or n < self._minimum_calls():
            return -1.0
        return self._window_failures * 100.0 / n

    def _minimum_calls(self) -> int:
        return min(self.config.minimum_number_of_calls, self.config.sliding_window_size)

    def _advance(self, now_s: float) -> None:
        wait = self.config.wait_duration_in_open_state
        if self._state is State.OPEN and now_s - self._opened_at_s >= wait:
            self._to_half_open(self._opened_at_s + wait)
        if self._state is State.HALF_OPEN:
            max_wait = self.config.max_wait_duration_in_half_open_state
            elapsed = now_s - self._half_open_at_s
            if max_wait > 0 and elapsed >= max_wait:
                # Skip whole HALF_OPEN(max_wait) -> OPEN(wait) cycles without trial outcomes.
                cycle = max_wait + self.config.wait_duration_in_open_state
                start = self._half_open_at_s + math.floor(elapsed / cycle) * cycle
                if now_s - start >= max_wait:
                    self._to_open(start + max_wait)
                else:
                    self._to_half_open(start)

    def _to_open(self, at_s: float) -> None:
        self._state = State.OPEN
        self._opened_at_s = at_s
        self._reset_half_open()

    def _to_half_open(self, at_s: float) -> None:
        self._state = State.HALF_OPEN
        self._half_open_at_s = at_s
        self._reset_half_open()
        self._clear_window()

    def _to_closed(self) -> None:
        self._state = State.CLOSED
        self._reset_half_open()
        self._clear_window()

    def _reset_half_open(self) -> None:
        self._half_open_permits = 0
        self._half_open_calls = 0
        self._half_open_failures = 0

    def _clear_window(self) -> None:
        self._window.clear()
        self._window_failures = 0

    # -- calls --------------------------------------------------------------------------

    def try_acquire(self, now_s: float) -> bool:
        """Ask permission for one call at ``now_s``; False = defer it (do not count it failed)."""
        self._advance(now_s)
        if self._state is State.CLOSED:
            return True
        if self._state is State.OPEN:
            return False
        if self._half_open_permits < self.config.permitted_number_of_calls_in_half_open_state:
            self._half_open_permits += 1
            return True
        return False

    def release(self, now_s: float) -> None:
        """Give back a permission acquired at ``now_s`` for a call that was not made."""
        self._advance(now_s)
        if self._state is State.HALF_OPEN and self._half_open_permits > self._half_open_calls:
            self._half_open_permits -= 1

    def on_success(self, now_s: float) -> None:
        """Record a successful call that finished at ``now_s``."""
        self._record(now_s, failed=False)

    def on_failure(self, now_s: float) -> None:
        """Record a failed call that finished at ``now_s``."""
        self._record(now_s, failed=True)

    def _record(self, now_s: float, failed: bool) -> None:
        self._advance(now_s)
        threshold = self.config.failure_rate_threshold
        if self._state is State.CLOSED:
            if len(self._window) == self._window.maxlen and self._window[0]:
                self._window_failures -= 1
            self._window.append(failed)
            self._window_failures += failed
            rate = self.failure_rate()
            if rate >= threshold:
                self._to_open(now_s)
        elif self._state is State.HALF_OPEN:
            self._half_open_calls += 1
            self._half_open_failures += failed
            self._half_open_permits = max(self._half_open_permits, self._half_open_calls)
            permitted = self.config.permitted_number_of_calls_in_half_open_state
            if self._half_open_calls >= permitted:
                rate = self._half_open_failures * 100.0 / self._half_open_calls
                if rate >= threshold:
                    self._to_open(now_s)
                else:
                    self._to_closed()
        # OPEN: a late outcome of a call admitted before the breaker opened; ignored.

    # -- checkpointing ------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Return the whole state as a plain, JSON-serialisable dict (for Flink state).

        In-flight HALF_OPEN permits are not stored: after a restore the calls that held
        them are gone, so their permits are handed out again.
        """
        return {
            "version": SNAPSHOT_VERSION,
            "config": self.config.to_dict(),
            "state": int(self._state),
            "window": [1 if f else 0 for f in self._window],
            "opened_at_s": self._opened_at_s,
            "half_open_at_s": self._half_open_at_s,
            "half_open_calls": self._half_open_calls,
            "half_open_failures": self._half_open_failures,
        }

    @classmethod
    def restore(cls, snapshot: Mapping[str, Any], config: BreakerConfig | None = None) -> CircuitBreaker:
        """Rebuild a breaker from :meth:`snapshot`; ``config`` replaces the stored one.

        With a new config (an upgrade), the window keeps its newest outcomes that fit.
        """
        version = snapshot.get("version")
        if version != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported breaker snapshot version {version!r}")
        cfg = config or BreakerConfig.from_dict(snapshot["config"])
        b = cls(cfg)
        b._state = State(int(snapshot["state"]))
        for f in list(snapshot["window"])[-cfg.sliding_window_size :]:
            b._window.append(bool(f))
            b._window_failures += bool(f)
        b._opened_at_s = float(snapshot["opened_at_s"])
        b._half_open_at_s = float(snapshot["half_open_at_s"])
        b._half_open_calls = int(snapshot["half_open_calls"])
        b._half_open_failures = int(snapshot["half_open_failures"])
        b._half_open_permits = b._half_open_calls
        return b

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(state={self._state.name}, window={len(self._window)}, "
            f"failures={self._window_failures})"
        )
