"""Provider calls for one ``deliver-<channel>`` subtask: bounded concurrency, breaker, throttle.

PyFlink's ``AsyncDataStream`` only runs in process mode, and this job runs in thread mode
(~10x cheaper keyed state, see docs/architecture.md), so delivery is non-blocking by
construction instead: the operator hands a batch's bulk call to a small thread pool
(``max_in_flight`` workers, one kept-alive HTTP connection each) and polls for the answer
with a processing-time timer. What is pending lives in keyed state, so a failover loses
no delivery: the restored batch is simply sent again with the same idempotency keys.

Example (what the operator does; ``now_s`` is ``time.monotonic()``)::

    d = Dispatcher("http://127.0.0.1:8900", "email", policy, parallelism=2)
    wait_s, indexes = d.admit(pb, now_s)       # 0.0 = go; else defer this long
    if wait_s == 0.0:
        d.start(batch_id, pb, indexes)
    ...
    done = d.poll(batch_id)                    # None (not in flight) | RUNNING | (indexes, CallResult)
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final

from udfs.breaker import CircuitBreaker, State
from udfs.delivery import (
    CallResult,
    ChannelPolicy,
    PendingBatch,
    Step,
    apply_call,
    call_result_from_response,
    request_bodies,
)
from udfs.provider_client import ProviderClient
from udfs.ratelimit import TokenBucket

RUNNING: Final = "running"


class Dispatcher:
    """Provider calls of one channel subtask (not thread-safe: call it from the operator thread)."""

    def __init__(
        self,
        base_url: str,
        channel: str,
        policy: ChannelPolicy,
        parallelism: int = 1,
        address_field: str | None = None,
        seed: int | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.channel = channel
        self.policy = policy
        self.address_field = address_field
        self.breaker = CircuitBreaker(policy.breaker)
        rate = policy.rate_limit_per_s / max(1, parallelism)
        burst = (policy.rate_limit_burst or policy.rate_limit_per_s) / max(1, parallelism)
        self.bucket = TokenBucket(rate, max(1.0, burst)) if rate > 0 else None
        self.rng = random.Random(seed)
        self._pool = ThreadPoolExecutor(
            max_workers=policy.max_in_flight, thread_name_prefix=f"deliver-{channel}"
        )
        self._local = threading.local()
        self._in_flight: dict[str, tuple[Future[CallResult], list[int]]] = {}
        self.pending_batches = 0  # accepted and not complete, as seen by this process

    # -- calls ------------------------------------------------------------------------------
    def _client(self) -> ProviderClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = ProviderClient(self.base_url, timeout_s=self.policy.request_timeout_s)
            self._local.client = client
        return client

    def _call(self, bodies: list[dict]) -> CallResult:
        t0 = time.monotonic()
        response = self._client().bulk(self.channel, bodies, timeout_s=self.policy.request_timeout_s)
        return call_result_from_response(response, len(bodies), int((time.monotonic() - t0) * 1000))

    @property
    def in_flight(self) -> int:
        """Provider calls running now (the in-flight gauge)."""
        return len(self._in_flight)

    def breaker_state(self) -> int:
        """Breaker state as a gauge value: 0 closed, 1 open, 2 half-open."""
        return self.breaker.gauge(time.monotonic())

    def admit(self, pb: PendingBatch, now_s: float, blocking: bool = False) -> tuple[float, list[int]]:
        """May ``pb``'s open messages be sent now? ``(0.0, indexes)`` = yes; ``(wait_s, [])`` = defer.

        Deferral reasons: all ``max_in_flight`` workers busy, breaker OPEN (or HALF_OPEN with
        its trial calls taken), or the rate limit's tokens exhausted. None of them counts as
        an attempt. ``blocking`` callers make the call in their own thread: the pool's
        capacity does not apply to them.
        """
        indexes = pb.open_indexes
        if not indexes:
            return 0.0, []
        if not blocking and len(self._in_flight) >= self.policy.max_in_flight:
            return 0.005, []
        if not self.breaker.try_acquire(now_s):
            return self._breaker_wait(now_s), []
        if self.bucket is not None:
            indexes = indexes[: max(1, int(self.bucket.burst))]
            wait = self.bucket.try_take(now_s, len(indexes))
            if wait > 0:
                self.breaker.release(now_s)
                return wait, []
        return 0.0, indexes

    def _breaker_wait(self, now_s: float) -> float:
        cfg = self.policy.breaker
        if self.breaker.state(now_s) is State.OPEN:
            # spread the deferred batches over 10% of the open period: no thundering herd
            return cfg.wait_duration_in_open_state * (0.5 + self.rng.uniform(0.0, 0.6))
        return 0.05  # HALF_OPEN, trial calls taken: check again soon

    def start(self, key: str, pb: PendingBatch, indexes: list[int]) -> None:
        """Start one bulk call for ``indexes`` of ``pb`` in the pool (after :meth:`admit`)."""
        bodies = request_bodies(pb, indexes, self.address_field)
        self._in_flight[key] = (self._pool.submit(self._call, bodies), indexes)

    def poll(self, key: str) -> str | tuple[list[int], CallResult] | None:
        """Return None if ``key`` has no call in flight, RUNNING, or its finished call."""
        entry = self._in_flight.get(key)
        if entry is None:
            return None
        future, indexes = entry
        if not future.done():
            return RUNNING
        del self._in_flight[key]
        return indexes, future.result()

    def wait(self, key: str) -> tuple[list[int], CallResult] | None:
        """Block until ``key``'s call finishes; None if it has none in flight."""
        entry = self._in_flight.pop(key, None)
        if entry is None:
            return None
        return entry[1], entry[0].result()

    def apply(self, pb: PendingBatch, indexes: Sequence[int], call: CallResult, now_ms: int) -> Step:
        """Fold a finished call into ``pb`` and tell the breaker how it went."""
        step = apply_call(pb, indexes, call, self.policy.retry, self.rng, now_ms)
        now_s = time.monotonic()
        if step.call_failed:
            self.breaker.on_failure(now_s)
        else:
            self.breaker.on_success(now_s)
        return step

    def deliver_blocking(self, key: str, pb: PendingBatch) -> Iterator[Step]:
        """Deliver ``pb`` to the end in this thread (drain, overload, linear mode); yield each step.

        Waits out backoff, breaker and rate-limit deferrals with ``time.sleep``: this is the
        path that *does* backpressure (the operator thread is busy meanwhile).
        """
        running = self.wait(key)
        if running is not None:
            yield self.apply(pb, running[0], running[1], int(time.time() * 1000))
        while not pb.complete:
            now_ms = int(time.time() * 1000)
            if pb.next_due_ms > now_ms:
                time.sleep((pb.next_due_ms - now_ms) / 1000)
                continue
            wait, indexes = self.admit(pb, time.monotonic(), blocking=True)
            if wait > 0:
                time.sleep(min(wait, 1.0))
                continue
            call = self._call(request_bodies(pb, indexes, self.address_field))
            yield self.apply(pb, indexes, call, int(time.time() * 1000))

    def close(self) -> None:
        """Stop the workers (calls still running finish in the background; their keys are resent)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._in_flight.clear()
