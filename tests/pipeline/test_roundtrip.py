"""The foundation round trip on the local MiniCluster against a real broker.

KafkaSource → Python keyed state → transactional KafkaSink; the output is read with
read_committed, so only records of committed checkpoints count.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from jobs.config import load_config
from jobs.flink_env import kafka_sink, kafka_source, make_env, source_watermarks
from jobs.roundtrip import build, user_of
from ops.kafka_io import consume_all, produce

pytestmark = pytest.mark.pipeline


def _inputs(n: int) -> tuple[list[bytes], Counter[str]]:
    values = [json.dumps({"user_id": f"u-{i % 7}", "event_id": f"e-{i}"}).encode() for i in range(n)]
    values += [b"not json", b"[1, 2]", json.dumps({"event_id": "no-user"}).encode()]
    return values, Counter(f"u-{i % 7}" for i in range(n))


@pytest.mark.parametrize("parallelism", [1, 2])
def test_round_trip_is_exactly_once(kafka, topic, parallelism):
    events, out = topic("events"), topic("roundtrip")
    values, per_user = _inputs(150)
    produce(kafka.bootstrap, events, values)
    cfg = load_config(
        overrides=[
            f"kafka.bootstrap={kafka.bootstrap}",
            "kafka.bounded=true",
            f"kafka.group_id=g-{out}",
            f"kafka.transactional_id_prefix=tx-{out}",
            f"topics.events={events}",
            f"topics.roundtrip={out}",
            f"job.parallelism={parallelism}",
            "job.checkpoint_interval_ms=500",
        ]
    )
    env = make_env(cfg)
    source = env.from_source(kafka_source(cfg, events), source_watermarks(), "kafka: events")
    build(env, source, kafka_sink(cfg, out, "roundtrip"), cfg)
    env.execute("roundtrip-test")

    records = [json.loads(v) for v in consume_all(kafka.bootstrap, out, expect=150)]
    assert len(records) == 150
    assert sorted(r["event_id"] for r in records) == sorted(f"e-{i}" for i in range(150))
    for user, count in per_user.items():
        seqs = sorted(r["seq"] for r in records if r["user_id"] == user)
        assert seqs == list(range(1, count + 1)), user


def test_user_of_tolerates_bad_records():
    assert user_of('{"user_id": "u-1", "event_id": "e"}') == ("u-1", "e")
    assert user_of("not json") == ("", "")
    assert user_of("[1]") == ("", "")
