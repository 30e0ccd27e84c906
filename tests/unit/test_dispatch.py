"""jobs.dispatch against the provider simulator over HTTP (no JVM): in-flight bound, breaker, throttle."""

from __future__ import annotations

import time

import pytest

from jobs.dispatch import RUNNING, Dispatcher
from ops.provider_sim import ProviderSim, SimClient
from udfs.batching import Batch, Message
from udfs.breaker import BreakerConfig, State
from udfs.delivery import ChannelPolicy, new_pending
from udfs.delivery_policy import RetryPolicy


@pytest.fixture
def sim(tmp_path):
    s = ProviderSim("conf/providers.yaml", tmp_path / "ledger.db", seed=5)
    s.start("127.0.0.1", 0)
    try:
        yield s
    finally:
        s.stop()


def _pending(n: int, tag: str = "b"):
    msgs = tuple(
        Message(f"{tag}{i}:email", "u", f"user{i}@example.com", (f"{tag}{i}",), ({},), 0, None)
        for i in range(n)
    )
    return new_pending("k", Batch(f"{tag}-batch", "eu-west", "email", 0, 1, msgs), now_ms=0)


def _policy(**kw) -> ChannelPolicy:
    base = dict(
        retry=RetryPolicy(initial_interval=0.01, maximum_interval=0.05, maximum_attempts=20),
        breaker=BreakerConfig(
            minimum_number_of_calls=3,
            sliding_window_size=5,
            wait_duration_in_open_state=0.3,
            permitted_number_of_calls_in_half_open_state=1,
        ),
        request_timeout_s=2.0,
    )
    base.update(kw)
    return ChannelPolicy(**base)


def test_start_returns_at_once_and_poll_collects_the_answer(sim):
    SimClient(sim.url).set_behaviour("email", {"latency": {"model": "fixed", "ms": 150}})
    d = Dispatcher(sim.url, "email", _policy(), address_field="email")
    pb = _pending(3)
    _, idx = d.admit(pb, time.monotonic())
    t0 = time.monotonic()
    d.start("b-batch", pb, idx)
    assert time.monotonic() - t0 < 0.05 and d.poll("b-batch") == RUNNING and d.in_flight == 1
    while (done := d.poll("b-batch")) == RUNNING:
        time.sleep(0.01)
    step = d.apply(pb, done[0], done[1], 0)
    assert pb.complete and len(step.delivered) == 3 and done[1].latency_ms >= 150
    assert SimClient(sim.url).ledger_count("email") == 3
    d.close()


def test_in_flight_capacity_defers_further_calls(sim):
    SimClient(sim.url).set_behaviour("email", {"latency": {"model": "fixed", "ms": 200}})
    d = Dispatcher(sim.url, "email", _policy(max_in_flight=2))
    for tag in ("a", "b"):
        pb = _pending(1, tag)
        _, idx = d.admit(pb, time.monotonic())
        d.start(tag, pb, idx)
    wait, idx = d.admit(_pending(1, "c"), time.monotonic())
    assert wait > 0 and idx == []
    d.close()


def test_outage_opens_the_breaker_defers_calls_and_recovers(sim):
    admin = SimClient(sim.url)
    admin.set_outage("email", True)
    d = Dispatcher(sim.url, "email", _policy())
    pb = _pending(2)
    calls = 0
    for _step in _blocking_steps(d, pb, until=lambda: d.breaker.state(time.monotonic()) is State.OPEN):
        calls += 1
    assert calls == 3  # minimum_number_of_calls failures, then the breaker opened
    wait, idx = d.admit(pb, time.monotonic())
    assert wait > 0 and idx == [] and pb.attempts == [3, 3]  # deferred, not counted as attempts
    admin.set_outage("email", False)
    steps = list(d.deliver_blocking("k", pb))
    assert pb.complete and steps[-1].delivered and d.breaker.state(time.monotonic()) is State.CLOSED
    assert admin.ledger_count("email") == 2
    d.close()


def _blocking_steps(d, pb, until):
    for step in d.deliver_blocking("k", pb):
        yield step
        if until():
            return


def test_rate_limit_spaces_the_calls(sim):
    d = Dispatcher(sim.url, "email", _policy(rate_limit_per_s=20, rate_limit_burst=5))
    pb = _pending(15)
    t0 = time.monotonic()
    list(d.deliver_blocking("k", pb))
    elapsed = time.monotonic() - t0
    assert pb.complete and SimClient(sim.url).ledger_count("email") == 15
    assert elapsed >= (15 - 5) / 20 * 0.9  # the first burst is free, then 20 messages/s
    d.close()
