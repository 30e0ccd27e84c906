"""Shared fixtures: a session Kafka broker, fresh topics, an opt-in standalone Flink cluster.

Every process a fixture starts is stopped at session end, also after failures and on
SIGTERM (the handler turns it into KeyboardInterrupt so finalizers run).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import pytest

from ops.cluster import LocalFlinkCluster
from ops.kafka import LocalKafka
from ops.kafka_io import fresh_name
from ops.proc import free_port
from ops.provider_sim import ProviderSim, SimClient


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_sessionstart(session: pytest.Session) -> None:
    signal.signal(signal.SIGTERM, _sigterm)


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A real single-node KRaft broker on a free loopback port, shared by the session."""
    broker = LocalKafka(home=tmp_path_factory.mktemp("kafka"), port=free_port())
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def topic(kafka: LocalKafka) -> Callable[..., str]:
    """Return a factory of fresh, created topic names: ``topic("events", partitions=2)``."""

    def make(label: str, partitions: int = 2) -> str:
        name = fresh_name(label)
        kafka.create_topics([name], partitions=partitions)
        return name

    return make


@pytest.fixture(scope="session")
def flink_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFlinkCluster]:
    """Opt-in: a real standalone Flink session cluster (JobManager + TaskManager) on free ports.

    The Prometheus reporter is on (tests/e2e/test_prometheus.py): each daemon takes a free
    port of 9249-9260, so it costs no second cluster.
    """
    cluster = LocalFlinkCluster(
        home=tmp_path_factory.mktemp("flink"), rest_port=free_port(), slots=8, prometheus=True
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def provider_sim_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProviderSim]:
    """The provider simulator (conf/providers.yaml, SQLite ledger) on a free loopback port."""
    sim = ProviderSim("conf/providers.yaml", tmp_path_factory.mktemp("sim") / "ledger.db", seed=3)
    try:
        sim.start("127.0.0.1", 0)
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def provider_sim(provider_sim_server: ProviderSim) -> Iterator[SimClient]:
    """An admin client of the session simulator, reset (empty ledger, configured behaviour) per test."""
    with SimClient(provider_sim_server.url, timeout_s=10) as client:
        client.reset()
        yield client
        client.reset()
