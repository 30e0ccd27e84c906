"""udfs.tracing: traceparent creation, child spans, propagation through the stages, span export."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.builders import DELETE, event_bytes, make_recipient
from udfs import stages
from udfs.fanin import outcome_to_dict
from udfs.routing import load_ruleset_file
from udfs.tracing import (
    BatchSpan,
    SpanExport,
    TracingSettings,
    child_of,
    ensure_traceparent,
    extract,
    format_traceparent,
    is_canonical,
    new_root,
    traceparent_of_raw,
)

VALID = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
RULES = load_ruleset_file("conf/routing.yaml")
WINDOW = stages.Window("eu-west|0|1000", "eu-west", 1000, 2000)


def _parts(tp: str) -> tuple[str, str, str, str]:
    version, trace_id, span_id, flags = tp.split("-")
    return version, trace_id, span_id, flags


# --- creation and validation ------------------------------------------------------------------
def test_a_root_is_valid_sampled_and_derived_from_its_key():
    root = new_root("evt-1")
    assert is_canonical(root) and extract(root) is not None
    assert root == new_root("evt-1"), "a replayed event gets the same trace"
    assert _parts(root)[1] != _parts(new_root("evt-2"))[1]
    assert root.endswith("-01"), "sampled"


def test_valid_traceparents_are_kept_and_invalid_or_absent_ones_replaced():
    assert ensure_traceparent(VALID, "k") == VALID
    assert ensure_traceparent(None, "k") == new_root("k")
    invalid = [
        "",
        "garbage",
        VALID.upper(),  # W3C: lowercase hex only
        VALID[:-1],
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # zero span id
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # forbidden version
        VALID + "-extra",  # version 00 has exactly four fields
        5,
    ]
    for tp in invalid:
        assert ensure_traceparent(tp, "k") == new_root("k"), tp


def test_valid_but_non_canonical_traceparents_are_rewritten_by_the_propagator():
    assert ensure_traceparent(f"  {VALID}\t", "k") == VALID
    future = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future-field"
    assert ensure_traceparent(future, "k") == VALID, "a higher version: parse the known fields"


_HEX = "0123456789abcdef"
_pieces = st.one_of(
    st.sampled_from(["00", "01", "ff", "0g", "0A"]),
    st.text(alphabet=_HEX, min_size=0, max_size=3),
)


@st.composite
def traceparent_like(draw) -> str:
    version = draw(_pieces)
    trace_id = draw(st.one_of(st.just("0" * 32), st.text(alphabet=_HEX + "A", min_size=30, max_size=33)))
    span_id = draw(st.one_of(st.just("0" * 16), st.text(alphabet=_HEX + "-", min_size=15, max_size=17)))
    flags = draw(st.text(alphabet=_HEX + "G", min_size=1, max_size=3))
    tail = draw(st.sampled_from(["", " ", "\t", "-x", "-"]))
    head = draw(st.sampled_from(["", " "]))
    return f"{head}{version}-{trace_id}-{span_id}-{flags}{tail}"


@settings(max_examples=400, deadline=None)
@given(tp=st.one_of(traceparent_like(), st.text(max_size=60), st.just(VALID)))
def test_the_fast_path_agrees_with_the_propagator(tp):
    sc = extract(tp)
    if is_canonical(tp):
        assert sc is not None and format_traceparent(sc) == tp, "fast path: a subset of the propagator"
    expected = format_traceparent(sc) if sc is not None else new_root("k")
    assert ensure_traceparent(tp, "k") == expected


def test_a_child_span_keeps_the_trace_and_flags_and_gets_its_own_stable_span_id():
    child = child_of(VALID, "e-1:email")
    version, trace_id, span_id, flags = _parts(child)
    assert (version, trace_id, flags) == ("00", VALID[3:35], "01") and span_id != VALID[36:52]
    assert extract(child) is not None
    assert child == child_of(VALID, "e-1:email"), "the same on retries and replays"
    assert child != child_of(VALID, "e-1:sms") != child_of(VALID, "e-2:sms"), "one span per (event, branch)"
    unsampled = VALID[:-2] + "00"
    assert child_of(unsampled, "e-1:email").endswith("-00")
    assert child_of("bad", "e-1:email", "e-1")[:36] == new_root("e-1")[:36]


# --- propagation through the stages ----------------------------------------------------------
def _route(*raws: bytes) -> stages.Routed:
    records = [stages.SourceRecord(r, "events", 0, i) for i, r in enumerate(raws)]
    return stages.route_batch(records, WINDOW, RULES, stages.StageConfig())


def test_the_router_gives_every_valid_event_a_traceparent_and_carries_it_everywhere():
    kept = event_bytes(event_id="keep", priority="high", recipient=make_recipient(), traceparent=VALID)
    absent = event_bytes(event_id="absent", priority="high", traceparent=DELETE)
    invalid = event_bytes(event_id="invalid", priority="high", traceparent="00-nope")
    routed = _route(kept, absent, invalid)
    expected = {"keep": VALID, "absent": new_root("absent"), "invalid": new_root("invalid")}
    assert {p.event_id: p.traceparent for p in routed.plans} == expected
    assert {d["event_id"]: d["trace_id"] for d in routed.decisions} == {
        k: v[3:35] for k, v in expected.items()
    }
    assert _route(absent).plans[0].traceparent == expected["absent"], "the same after a replay"
    seen = set()
    for batch in routed.batches:
        delivered = stages.deliver_to_topic(batch, WINDOW.key, now_ms=5000)
        for msg in orjson.loads(delivered.record)["messages"]:
            (eid,) = msg["event_ids"]
            assert msg["parent_traceparent"] == expected[eid]
            assert msg["traceparent"] == child_of(expected[eid], f"{eid}:{batch.channel}")
            seen.add((eid, batch.channel))
    assert ("keep", "email") in seen and ("keep", "sms") in seen
    states: stages.FanInStates = {}
    stages.fanin_plans(states, routed.plans, 5000, 60_000)
    outcomes = []
    for batch in routed.batches:
        out, _ = stages.fanin_results(states, stages.deliver_to_topic(batch, WINDOW.key, 5000).results, 5000)
        outcomes.extend(out)
    for o in map(outcome_to_dict, outcomes):
        assert o["traceparent"] == expected[o["event_id"]] and o["trace_id"] == expected[o["event_id"]][3:35]


def test_an_invalid_event_keeps_its_traceparent_in_its_dlq_record():
    bad = event_bytes(event_id="bad-1", region="mars-1", traceparent=VALID)
    no_tp = event_bytes(event_id="bad-2", region="mars-1", traceparent=DELETE)
    routed = _route(bad, no_tp, b'{"event_id": "x", ')
    d1, d2, d3 = (orjson.loads(r) for r in routed.dlq)
    assert d1["reason"] == "unknown_region" and d1["traceparent"] == VALID and d1["trace_id"] == VALID[3:35]
    assert d2["traceparent"] == new_root("bad-2")
    assert d3["reason"] == "malformed_json" and is_canonical(d3["traceparent"])
    assert d3["traceparent"] == orjson.loads(_route(b'{"event_id": "x", ').dlq[0])["traceparent"]
    assert traceparent_of_raw(b"\xff\xfe{}", None) == traceparent_of_raw(b"\xff\xfe{}", None)


def test_linear_mode_traces_like_fanout():
    raw = event_bytes(event_id="lin", priority="high", traceparent=DELETE)
    result = stages.deliver_linear(stages.SourceRecord(raw), RULES, stages.StageConfig(), now_ms=5000)
    assert result.outcome is not None and result.outcome.traceparent == new_root("lin")
    assert result.decision is not None and result.decision["trace_id"] == new_root("lin")[3:35]
    for channel, record in result.channel_records:
        (msg,) = orjson.loads(record)["messages"]
        assert msg["traceparent"] == child_of(new_root("lin"), f"lin:{channel}")


# --- span export --------------------------------------------------------------------------
def test_spans_export_off_by_default():
    assert SpanExport.get(TracingSettings()) is None


def test_one_span_per_batch_is_written_to_the_file_with_links_to_the_branch_spans(tmp_path):
    path = tmp_path / "spans.jsonl"
    export = SpanExport.get(TracingSettings(exporter="file", file=str(path)))
    assert export is not None and export is SpanExport.get(TracingSettings(exporter="file", file=str(path)))
    children = [child_of(VALID, "e-1:email"), child_of(new_root("e-2"), "e-2:email")]
    export.export(
        BatchSpan(
            "email", "eu-west|0:email:1000:0", "eu-west", "eu-west|0|1000", 1_000, 1_250, "partial", 3, 1, 1,
            ((children[0], "e-1:email", ("e-1",)), (children[1], "e-2:email", ("e-2",))),
        )
    )  # fmt: skip
    (line,) = path.read_text().splitlines()
    span = orjson.loads(line)
    assert span["name"] == "deliver-email" and span["parent_id"] is None
    attrs = span["attributes"]
    assert attrs["channel"] == "email" and attrs["batch_id"] == "eu-west|0:email:1000:0"
    assert (attrs["messages"], attrs["attempts"], attrs["status"]) == (2, 3, "partial")
    assert span["status"]["status_code"] == "ERROR"
    linked = [(lk["context"]["trace_id"], lk["context"]["span_id"]) for lk in span["links"]]
    assert linked == [(f"0x{c[3:35]}", f"0x{c[36:52]}") for c in children]
    assert span["links"][0]["attributes"]["event_ids"] == ["e-1"]
    assert span["start_time"].startswith("1970-01-01T00:00:01")


def test_an_exporter_without_its_target_is_a_configuration_error():
    with pytest.raises(ValueError, match=r"tracing\.file"):
        SpanExport(TracingSettings(exporter="file"))
    with pytest.raises(ValueError, match="otlp_endpoint"):
        SpanExport(TracingSettings(exporter="otlp"))


def test_the_otlp_exporter_posts_protobuf_spans_to_the_endpoint():
    """A loopback HTTP server stands in for an OpenTelemetry collector (OTLP/HTTP, protobuf)."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[tuple[str, str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1/traces"
        export = SpanExport(TracingSettings(exporter="otlp", otlp_endpoint=url))
        child = child_of(VALID, "e-1:sms")
        export.export(
            BatchSpan(
                "sms",
                "b-1",
                "eu-west",
                "k",
                1_000,
                1_100,
                "delivered",
                1,
                1,
                0,
                ((child, "e-1:sms", ("e-1",)),),
            )
        )
        export.flush()
        export.provider.shutdown()
    finally:
        server.shutdown()
        server.server_close()
    ((path, content_type, body),) = received
    assert path == "/v1/traces" and content_type == "application/x-protobuf"
    request = ExportTraceServiceRequest.FromString(body)
    (span,) = request.resource_spans[0].scope_spans[0].spans
    assert span.name == "deliver-sms" and span.links[0].trace_id.hex() == VALID[3:35]
    assert span.links[0].span_id.hex() == child[36:52]
