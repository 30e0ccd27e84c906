"""Helpers for running the fan-out job against the session Kafka broker in tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml
from pyflink.table import StreamTableEnvironment

from jobs import fanout
from jobs.config import PipelineConfig, load_config
from jobs.flink_env import kafka_source, make_env, source_watermarks
from ops.kafka_io import consume_all
from udfs.events import Event, ValidationLimits, parse_event
from udfs.routing import decide, load_ruleset_file

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


def job_config(kafka, t: Topics, mode: str, parallelism: int, tag: str, extra=()) -> PipelineConfig:
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
            *extra,
        ]
    )


def output_topics(cfg: PipelineConfig) -> dict[str, str]:
    return {
        "outcomes": cfg.topics.outcomes,
        "dlq": cfg.topics.dlq,
        "metrics": cfg.topics.metrics,
        **{ch: cfg.topics.channel(ch) for ch in CHANNELS},
    }


def build_job(kafka, cfg: PipelineConfig):
    """Create the environment and wire the job on Kafka; return the environment."""
    kafka.create_topics(list(output_topics(cfg).values()))
    env = make_env(cfg)
    t_env = StreamTableEnvironment.create(env)
    t_env.get_config().set("table.local-time-zone", "UTC")
    fanout.kafka_events_table(t_env, cfg)
    rules = env.from_source(kafka_source(cfg, cfg.topics.rules), source_watermarks(), "kafka: rules")
    fanout.build(env, t_env, fanout.KafkaSinks(cfg), cfg, rules_stream=rules)
    return env


def run_job(kafka, t: Topics, mode: str, parallelism: int, tag: str, extra=()) -> dict[str, list[dict]]:
    """Run the bounded job once; return every output topic's committed records, decoded."""
    cfg = job_config(kafka, t, mode, parallelism, tag, extra)
    outputs = output_topics(cfg)
    env = build_job(kafka, cfg)
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


def assert_exactly_once(out: dict[str, list[dict]], planned: dict, invalid: int, events_topic: str) -> None:
    """Every valid event: one complete outcome; every (event, channel): one delivery; invalid: DLQ."""
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
    dlq_keys = [(d["source"]["partition"], d["source"]["offset"]) for d in out["dlq"]]
    assert len(dlq_keys) == len(set(dlq_keys)), "an input was dead-lettered twice"
    assert len(out["dlq"]) == invalid, (len(out["dlq"]), invalid, sorted(d["reason"] for d in out["dlq"]))
    assert all(
        d["reason"] and d["stage"] == "validate" and d["source"]["topic"] == events_topic for d in out["dlq"]
    )
    # windowed metrics: every delivered (event, channel) is counted once, one record per
    # (region, channel, window) plus separate "late" records for batches after the window closed
    by_channel = {ch: 0 for ch in CHANNELS}
    for m in out["metrics"]:
        by_channel[m["channel"]] += m["counts"].get("delivered", 0)
    expected_by_channel = {ch: sum(1 for _, c in pairs if c == ch) for ch in CHANNELS}
    assert by_channel == expected_by_channel, (
        "metrics' delivered counts per channel differ from the channel records",
        by_channel,
        expected_by_channel,
        len(out["metrics"]),
        sum(1 for m in out["metrics"] if m["late"]),
    )
    windows = [(m["region"], m["channel"], m["window_start_ms"]) for m in out["metrics"] if not m["late"]]
    assert len(windows) == len(set(windows)), "a window's metrics were emitted twice"
    assert all(m["window_end_ms"] - m["window_start_ms"] == 1000 for m in out["metrics"])
    assert all(m["latency_ms"]["p50"] <= m["latency_ms"]["p99"] for m in out["metrics"])


def delivery_overrides(sim_url: str, policies: Path, policy: dict) -> list[str]:
    """Write a delivery policy file (``defaults`` = ``policy``) and return the job overrides."""
    policies.write_text(yaml.safe_dump({"defaults": policy}))
    return [f"delivery.provider_url={sim_url}", f"delivery.policies_file={policies}", "delivery.poll_ms=5"]


FAST_RETRIES = {
    "request_timeout_s": 2.0,
    "retry": {"initial_interval": 0.05, "maximum_interval": 0.5, "maximum_attempts": 12},
    "breaker": {"minimum_number_of_calls": 10, "sliding_window_size": 20, "wait_duration_in_open_state": 1.0},
}


def ledger_pairs(client) -> list[tuple[str, str]]:
    """Every accepted (event, channel) at the provider, one entry per accepted message."""
    return [(eid, row["channel"]) for row in client.ledger() for eid in row["event_ids"]]


def planned_pairs(planned: dict[str, tuple[str, ...]]) -> set[tuple[str, str]]:
    return {(eid, ch) for eid, chs in planned.items() for ch in chs}


def live_event(label: str, n: int, **overrides) -> bytes:
    """A valid event happening now (unbounded runs: live events move event time on)."""
    import time

    import orjson

    from tests.builders import make_event, make_recipient
    from udfs.events import format_timestamp_ms

    fields = {
        "event_id": f"{label}-{n}-{time.monotonic_ns()}",
        "priority": "high",
        "occurred_at": format_timestamp_ms(int(time.time() * 1000)),
        "recipient": make_recipient(),
        **overrides,
    }
    return orjson.dumps(make_event(**fields))


def wait_until(predicate, what: str, timeout_s: float, tick=None, every_s: float = 0.5) -> float:
    """Call ``tick`` and poll ``predicate`` until it holds; return the seconds it took."""
    import time

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if tick is not None:
            tick()
        if predicate():
            return time.monotonic() - t0
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class LiveTraffic:
    """Live events sent to a running job, and the (event, channel) pairs they should become.

    Events labelled ``tick`` only move event time on (so the last windows close); they are
    left out of :meth:`planned` unless asked for.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.sent: list[bytes] = []
        self.rules = load_ruleset_file("conf/routing.yaml")

    def send(self, label: str, n: int) -> None:
        batch = [live_event(label, i) for i in range(n)]
        from ops.kafka_io import produce

        produce(self.bootstrap, self.topic, batch)
        self.sent.extend(batch)

    def planned(self, ticks: bool = False) -> set[tuple[str, str]]:
        out = set()
        for raw in self.sent:
            ev = parse_event(raw, ValidationLimits())
            if ticks or not ev.event_id.startswith("tick-"):
                out |= {(ev.event_id, ch) for ch in decide(ev, self.rules).channels}
        return out
