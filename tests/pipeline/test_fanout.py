"""The fan-out job on the local MiniCluster against a real broker (read_committed outputs).

The pure functions are the oracle for *what* each event should become (they are unit-tested
on their own); these tests check the wiring: every valid event yields exactly one outcome,
every invalid one a DLQ record, every planned (event, channel) appears exactly once in its
channel topic, duplicates are dropped, and linear and fanout modes agree.
"""

from __future__ import annotations

import orjson
import pytest

from ops.kafka_io import produce
from tests.pipeline.harness import assert_exactly_once, delivered_pairs, expected, run_job
from udfs.generator import generate_events

pytestmark = pytest.mark.pipeline


@pytest.mark.parametrize("parallelism", [1, 2])
def test_fanout_delivers_every_event_exactly_once(kafka, topics, parallelism):
    records = list(generate_events(400, seed=11, dup_rate=0.05, bad_rate=0.03, late_rate=0.02))
    produce(kafka.bootstrap, topics.events, records)
    planned, invalid = expected(records)
    out = run_job(kafka, topics, "fanout", parallelism, f"p{parallelism}")

    assert_exactly_once(out, planned, invalid, topics.events)
    # (late marking depends on watermark progress; tests/pipeline/test_rules_live.py checks it)


def _projection(outcomes: list[dict]) -> dict[str, tuple]:
    return {
        o["event_id"]: (
            tuple(sorted((ch, line["status"], line.get("reason")) for ch, line in o["channels"].items())),
            o["rule"],
            o["rules_version"],
            o["complete"],
            o["traceparent"],  # kept or derived from the event id: the same in both modes
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


def test_failover_mid_stream_keeps_every_output_exactly_once(kafka, topics, tmp_path):
    """The router raises once after some batches; the job restarts from its checkpoint."""
    marker = tmp_path / "failed-once"
    records = list(generate_events(3000, seed=21, dup_rate=0.03, bad_rate=0.02, late_rate=0.0))
    produce(kafka.bootstrap, topics.events, records)
    planned, invalid = expected(records)
    out = run_job(
        kafka,
        topics,
        "fanout",
        2,
        "failover",
        extra=[
            f"job.chaos_fail_once_file={marker}",
            "job.chaos_fail_after_batches=8",
            "job.checkpoint_interval_ms=300",
        ],
    )
    assert marker.exists(), "the injected failure did not happen"
    assert_exactly_once(out, planned, invalid, topics.events)
