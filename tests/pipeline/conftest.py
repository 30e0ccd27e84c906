"""Pipeline-layer fixtures: a fresh set of topics for one fan-out job run."""

from __future__ import annotations

import pytest

from tests.pipeline.harness import CHANNELS, Topics


@pytest.fixture
def topics(kafka, topic) -> Topics:
    t = Topics(
        topic("events"), topic("outcomes"), topic("dlq"), topic("metrics"), topic("rules", 1), topic("ch")
    )
    kafka.create_topics([t.channel(ch) for ch in CHANNELS])
    return t
