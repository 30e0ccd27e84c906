"""The fan-out job on the local MiniCluster against a real broker (read_committed outputs).

The pure functions are the oracle for *what* each event should become (they are unit-tested
on their own); these tests check the wiring: every valid event yields exactly one outcome,
every invalid one a DLQ record, every planned (event, channel) appears exactly once in its
channel topic, duplicates are dropped, and linear and fanout modes agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import orjson
import pytest
from pyflink.table import StreamTableEnvironment

from jobs import fanout
from jobs.config import PipelineConfig, load_config
from jobs.flink_env import kafka_source, make_env, source_watermarks
from ops.kafka_io import consume_all, produce
from udfs.events import Event, ValidationLimits, parse_event
from udfs.generator import generate_events
from udfs.routing import decide, load_ruleset_file

pytestmark = pytest.mark.pipeline
CHANNELS = ("email", "sms", "push")


@dataclass
class Topics:
    events: str
    outcomes: str
    dlq: str
    metrics: str
    rules: str
    prefix: str

    def channel(self, ch: str) -> str:
        return f"{self.prefix}.{ch}"


@pytest.fixture
def topics(kafka, topic) -> Topics:
    t = Topics(
        topic("events"), topic("outcomes"), topic("dlq"), topic("metrics"), topic("rules", 1), topic("ch")
    )
    kafka.create_topics([t.channel(ch) for ch in CHANNELS])
    return t


def job_config(kafka, t: Topics, mode: str, parallelism: int, tag: str) -> PipelineConfig:
    return load_config(
        overrides=[
            f"kafka.bootstrap={kafka.bootstrap}",
            "kafka.bounded=true",
            f"kafka.group_id=g-{t.events}-{tag}",
            f"kafka.transactional_id_prefix=tx-{t.events}-{tag}",
            f"topics.events={t.events}",
            f"topics.outcomes={t.outcomes}-{tag}",
            f"topics.dlq={t.dlq}-{tag}",
            f"topics.metrics={t.metrics}-{tag}",
            f"topics.rules={t.rules}",
            f"topics.channel_prefix={t.prefix}-{tag}.",
            f"job.mode={mode}",
            f"job.parallelism={parallelism}",
            "job.checkpoint_interval_ms=500",
        ]
    )


def run_job(kafka, t: Topics, mode: str, parallelism: int, tag: str) -> dict[str, list[dict]]:
    """Run the bounded job once; return every output topic's committed records, decoded."""
    cfg = job_config(kafka, t, mode, parallelism, tag)
    outputs = {
        "outcomes": cfg.topics.outcomes,
        "dlq": cfg.topics.dlq,
        "metrics": cfg.topics.metrics,
        **{ch: cfg.topics.channel(ch) for ch in CHANNELS},
    }
    kafka.create_topics(list(outputs.values()))
    env = make_env(cfg)
    t_env = StreamTableEnvironment.create(env)
    t_env.get_config().set("table.local-time-zone", "UTC")
    fanout.kafka_events_table(t_env, cfg)
    rules = env.from_source(kafka_source(cfg, cfg.topics.rules), source_watermarks(), "kafka: rules")
    fanout.build(env, t_env, fanout.KafkaSinks(cfg), cfg, rules_stream=rules)
    env.execute(f"fanout-test-{mode}-{tag}")
    return {
        kind: [json.loads(v) for v in consume_all(kafka.bootstrap, topic)] for kind, topic in outputs.items()
    }


def expected(records: list[bytes]) -> tuple[dict[str, tuple[str, ...]], int]:
    """Return {event_id: planned channels} for distinct valid events, and the invalid count."""
    rules = load_ruleset_file("conf/routing.yaml")
    limits = ValidationLimits()
    planned: dict[str, tuple[str, ...]] = {}
    invalid = 0
    seen_raw: set[bytes] = set()
    for raw in records:
        parsed = parse_event(raw, limits)
        if isinstance(parsed, Event):
            if parsed.event_id not in planned:
                planned[parsed.event_id] = decide(parsed, rules).channels  # type: ignore[arg-type]
        elif raw not in seen_raw:
            invalid += 1
        seen_raw.add(raw)
    return planned, invalid


def delivered_pairs(out: dict[str, list[dict]]) -> list[tuple[str, str]]:
    pairs = []
    for ch in CHANNELS:
        for batch in out[ch]:
            assert batch["channel"] == ch
            pairs.extend((eid, ch) for msg in batch["messages"] for eid in msg["event_ids"])
    return pairs


@pytest.mark.parametrize("parallelism", [1, 2])
def test_fanout_delivers_every_event_exactly_once(kafka, topics, parallelism):
    records = list(generate_events(400, seed=11, dup_rate=0.05, bad_rate=0.03, late_rate=0.02))
    produce(kafka.bootstrap, topics.events, records)
    planned, invalid = expected(records)
    out = run_job(kafka, topics, "fanout", parallelism, f"p{parallelism}")

    outcomes = out["outcomes"]
    ids = [o["event_id"] for o in outcomes]
    assert len(ids) == len(set(ids)), "an event got more than one outcome"
    assert set(ids) == set(planned)
    assert all(o["version"] == 1 and o["complete"] for o in outcomes)
    for o in outcomes:
        delivered = sorted(ch for ch, line in o["channels"].items() if line["status"] == "delivered")
        assert delivered == sorted(planned[o["event_id"]])
    pairs = delivered_pairs(out)
    assert len(pairs) == len(set(pairs)), "an (event, channel) was delivered twice"
    assert set(pairs) == {(eid, ch) for eid, chs in planned.items() for ch in chs}
    assert len(out["dlq"]) == invalid
    assert all(
        d["reason"] and d["stage"] == "validate" and d["source"]["topic"] == topics.events for d in out["dlq"]
    )
    assert sum(1 for o in outcomes if o["late"]) >= 1, "the generator's late events are marked late"
    # per-batch metrics: every delivered (event, channel) is counted once
    assert sum(m["counts"].get("delivered", 0) for m in out["metrics"]) == len(pairs)


def _projection(outcomes: list[dict]) -> dict[str, tuple]:
    return {
        o["event_id"]: (
            tuple(sorted((ch, line["status"], line.get("reason")) for ch, line in o["channels"].items())),
            o["rule"],
            o["rules_version"],
            o["complete"],
        )
        for o in outcomes
    }


def test_linear_and_fanout_modes_agree(kafka, topics):
    records = list(generate_events(300, seed=5, dup_rate=0.05, bad_rate=0.03, late_rate=0.0))
    produce(kafka.bootstrap, topics.events, records)
    fan = run_job(kafka, topics, "fanout", 2, "fan")
    lin = run_job(kafka, topics, "linear", 2, "lin")
    assert len(fan["outcomes"]) == len(lin["outcomes"]) > 250
    assert _projection(fan["outcomes"]) == _projection(lin["outcomes"])
    assert sorted(d["reason"] for d in fan["dlq"]) == sorted(d["reason"] for d in lin["dlq"])
    assert sorted(delivered_pairs(fan)) == sorted(delivered_pairs(lin))


def test_bad_input_becomes_dlq_records_with_reasons(kafka, topics):
    good = orjson.loads(next(iter(generate_events(1, seed=1, dup_rate=0, bad_rate=0, late_rate=0))))
    bad = {
        "malformed_json": b'{"event_id": "x", ',
        "not_utf8": b"\xff\xfe{}",
        "missing_field": orjson.dumps({k: v for k, v in good.items() if k != "user_id"} | {"event_id": "m1"}),
        "wrong_type": orjson.dumps(good | {"event_id": "w1", "priority": 5}),
        "unknown_region": orjson.dumps(good | {"event_id": "r1", "region": "mars-1"}),
        "oversized": orjson.dumps(good | {"event_id": "o1", "payload": {"blob": "x" * 70_000}}),
        "unknown_channel": orjson.dumps(
            good | {"event_id": "c1", "recipient": good["recipient"] | {"opt_out": ["pigeon"]}}
        ),
    }
    produce(kafka.bootstrap, topics.events, [orjson.dumps(good), *bad.values()])
    out = run_job(kafka, topics, "fanout", 1, "bad")
    assert [o["event_id"] for o in out["outcomes"]] == [good["event_id"]]
    by_reason = {d["reason"]: d for d in out["dlq"]}
    assert set(by_reason) == set(bad)
    assert by_reason["not_utf8"]["original_b64"] and "original" not in by_reason["not_utf8"]
    assert by_reason["malformed_json"]["original"] == bad["malformed_json"].decode()
    coords = {(d["source"]["partition"], d["source"]["offset"]) for d in out["dlq"]}
    assert len(coords) == len(bad) and all(isinstance(p, int) and isinstance(o, int) for p, o in coords)
