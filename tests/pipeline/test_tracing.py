"""Tracing on the MiniCluster: one trace per event through its branches, outcome, DLQ, logs and spans.

Thread-mode operators run in the MiniCluster JVM's embedded interpreter (started by this
test process), whose logging is not pytest's: the job appends its JSON log lines to
``tracing.log_file``, which the test reads. Spans go to ``tracing.file``.
"""

from __future__ import annotations

import re

import orjson
import pytest

from ops.kafka_io import produce
from tests.builders import DELETE, event_bytes, make_recipient
from tests.pipeline.harness import CHANNELS, run_job
from udfs.generator import generate_events
from udfs.tracing import child_of, new_root

pytestmark = pytest.mark.pipeline

KEPT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
DLQ_TP = "00-11111111111111111111111111111111-2222222222222222-01"
PII_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
PII_PHONE = re.compile(r"\+\d{7,15}")


def _inputs() -> tuple[list[bytes], dict[str, str]]:
    """Generated events plus hand-made ones; return the records and the expected traceparents."""
    recipient = make_recipient(email="dora@example.com", phone="+15550009999", push_token="tok-feedbeef0001")

    def ev(event_id: str, traceparent) -> bytes:
        return event_bytes(event_id=event_id, priority="high", recipient=recipient, traceparent=traceparent)

    special = {
        "tp-kept": ev("tp-kept", KEPT),
        "tp-absent": ev("tp-absent", DELETE),
        "tp-invalid": ev("tp-invalid", "x"),
        # producers' mistakes: addresses inside event ids must not reach a log line
        "evt-bob@example.org": ev("evt-bob@example.org", DELETE),
        "evt+4915123456789": ev("evt+4915123456789", DELETE),
    }
    expected = {
        "tp-kept": KEPT,
        **{eid: new_root(eid) for eid in special if eid != "tp-kept"},
    }
    invalid = event_bytes(event_id="bad-region", region="mars-1", traceparent=DLQ_TP)
    generated = list(generate_events(150, seed=31, dup_rate=0.0, bad_rate=0.0, late_rate=0.0))
    for raw in generated:
        ev = orjson.loads(raw)
        expected[ev["event_id"]] = ev["traceparent"]
    return [*generated, *special.values(), invalid], expected


def _pii(records: list[bytes]) -> set[str]:
    found: set[str] = set()
    for raw in records:
        text = raw.decode()
        found.update(PII_EMAIL.findall(text))
        found.update(PII_PHONE.findall(text))
        found.update(re.findall(r"tok-[0-9a-f]{8,}", text))
    return found


def test_one_trace_per_event_through_records_outcomes_dlq_logs_and_spans(kafka, topics, tmp_path):
    records, expected = _inputs()
    produce(kafka.bootstrap, topics.events, records)
    log_file = tmp_path / "job.log"
    spans_file = tmp_path / "spans.jsonl"
    out = run_job(
        kafka,
        topics,
        "fanout",
        2,
        "trace",
        extra=[
            "events.log_decisions=true",
            f"tracing.log_file={log_file}",
            "tracing.exporter=file",
            f"tracing.file={spans_file}",
        ],
    )

    # outcomes: the event's traceparent (kept, or a root derived from the event id)
    outcomes = {o["event_id"]: o for o in out["outcomes"]}
    assert set(outcomes) == set(expected)
    for eid, tp in expected.items():
        assert outcomes[eid]["traceparent"] == tp and outcomes[eid]["trace_id"] == tp[3:35], eid

    # channel records: per message the branch's span, a child of the event's
    children: dict[str, tuple[int, set[str]]] = {}  # batch id -> (size, branch span ids)
    per_event: dict[str, set[str]] = {}
    for ch in CHANNELS:
        for batch in out[ch]:
            spans = set()
            for msg in batch["messages"]:
                (eid,) = msg["event_ids"]
                parent = expected[eid]
                assert msg["parent_traceparent"] == parent
                assert msg["traceparent"] == child_of(parent, f"{eid}:{ch}")
                spans.add(msg["traceparent"][36:52])
                per_event.setdefault(eid, set()).add(ch)
            children[batch["batch_id"]] = (batch["size"], spans)
    assert per_event["tp-kept"] == {"email", "sms", "push"}

    # DLQ: an invalid event keeps its traceparent
    (dead,) = out["dlq"]
    assert dead["reason"] == "unknown_region" and dead["traceparent"] == DLQ_TP
    assert dead["trace_id"] == DLQ_TP[3:35]

    # logs: JSON lines from the TaskManager's interpreter, with the trace ids, without PII
    lines = [orjson.loads(line) for line in log_file.read_text().splitlines()]
    routes = [line for line in lines if line["msg"] == "route"]
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    logged = {line["event_id"]: line["trace_id"] for line in routes}
    assert len(routes) == len(expected), "one decision line per valid event"
    for eid, tp in expected.items():
        if "@" not in eid and "+" not in eid:
            assert logged[eid] == tp[3:35], eid
    masked = [line for line in routes if line["event_id"].startswith("evt<") or "<email>" in line["event_id"]]
    assert {line["trace_id"] for line in masked} == {
        expected["evt-bob@example.org"][3:35],
        expected["evt+4915123456789"][3:35],
    }, "an address in an event id is masked; the line keeps its trace id"
    text = log_file.read_text()
    pii = _pii(records)
    assert pii and "dora@example.com" in pii and "evt-bob@example.org" in pii
    assert [p for p in pii if p in text] == [], "no address of the input in any log line"

    # spans: one per delivered batch per branch, linked to the branch spans of its messages
    spans = [orjson.loads(line) for line in spans_file.read_text().splitlines()]
    by_batch = {s["attributes"]["batch_id"]: s for s in spans}
    assert len(by_batch) == len(spans) and set(by_batch) == set(children)
    for batch_id, (size, span_ids) in children.items():
        span = by_batch[batch_id]
        assert span["name"] == f"deliver-{span['attributes']['channel']}"
        assert span["attributes"]["messages"] == size and span["attributes"]["status"] == "delivered"
        assert {lk["context"]["span_id"][2:] for lk in span["links"]} == span_ids
