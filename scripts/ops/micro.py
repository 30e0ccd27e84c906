"""The fan-out job's Python work per event, without Flink: ``scripts/bench micro``.

Runs what the Python operators do for window batches in one process, stage by stage, with
the job's own functions: the router (``route_batch`` on the SQL front's row), each Python
edge (pickle both ways, as PyFlink's thread mode does), a branch's provider delivery
(request bodies, the JSON of a bulk call and of its answer, folding the answer in, the
channel record, the metrics record) and the fan-in (journal entries, one outcome JSON per
event). No JVM, no network: it is the floor the Python operators cannot go below, and it
says which stage to make cheaper. PyFlink's own per-record cost (converters, pemja calls,
metrics) comes on top; ``scripts/bench profile`` measures the whole TaskManager.

    scripts/bench micro [--events 20000] [--window 1667] [--profile]
"""

from __future__ import annotations

import base64
import cProfile
import io
import pickle
import pstats
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson


def _front_row(window: list[bytes], region: str, start_ms: int) -> tuple[Any, ...]:
    """Return the SQL front's window row: region, bucket, start, end, late, topic, records."""
    from datetime import UTC, datetime

    def ts(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]

    recs = [f"0:{i}:{base64.b64encode(raw).decode()}" for i, raw in enumerate(window)]
    return (region, 0, ts(start_ms), ts(start_ms + 1000), False, "events", recs)


def run(events: int, window: int, profile: bool) -> dict[str, Any]:
    """Measure each stage over ``events`` events in windows of ``window``; return µs per event."""
    from jobs import fanout
    from jobs.config import load_config
    from ops.benchrun import make_events
    from udfs import stages
    from udfs.delivery import (
        apply_call,
        call_result_from_response,
        delivery_record,
        load_policies,
        new_pending,
        request_bodies,
    )
    from udfs.provider_client import ProviderResponse

    cfg = load_config(None, ())
    settings = fanout.settings_for(cfg)
    from udfs.routing import RuleSet, load_ruleset_file

    rules = load_ruleset_file(settings.rules_path)
    assert isinstance(rules, RuleSet), rules
    policies = load_policies(str(fanout.ROOT / cfg.delivery.policies_file), settings.channels)
    fields = dict(settings.address_fields)
    import random

    rng = random.Random(1)
    raw = make_events(events, 7, int(time.time() * 1000) - 3_600_000, 20_000.0, "micro")
    by_region: dict[str, list[bytes]] = defaultdict(list)
    for r in raw:
        by_region[orjson.loads(r)["region"]].append(r)
    rows = []
    for region, evs in sorted(by_region.items()):
        for i in range(0, len(evs), window):
            rows.append(_front_row(evs[i : i + window], region, 1_700_000_000_000 + i))

    cost: dict[str, float] = defaultdict(float)

    @contextmanager
    def timed(name: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        cost[name] += time.perf_counter() - t

    def one_window(row: tuple[Any, ...]) -> None:
        now = int(time.time() * 1000)
        with timed("router: window + records"):
            win, recs = fanout._window(row), fanout._records(row)
        with timed("router: route_batch"):
            routed = stages.route_batch(recs, win, rules, settings.stage, log_decisions=False)
        key = win.key
        with timed("edge router→fan-in (pickle)"):
            plan_out = pickle.dumps(("plan", key, routed.plans))
        with timed("edge router→fan-in (unpickle)"):
            plans = pickle.loads(plan_out)[2]
        states: stages.FanInStates = {}
        with timed("fan-in: plans"):
            stages.fanin_apply(states, ("plans", now, 60_000, plans))
        for sent in routed.batches:
            with timed("edge router→branch (pickle)"):
                b = pickle.dumps((key, sent))
            with timed("edge router→branch (unpickle)"):
                batch = pickle.loads(b)[1]
            pb = new_pending(key, batch, now)
            idx = pb.open_indexes
            with timed("branch: request JSON"):
                orjson.dumps({"messages": request_bodies(pb, idx, fields.get(batch.channel))})
            # the provider's answer: every message accepted (its JSON is parsed in the pool thread)
            answer = orjson.dumps({"results": [{"status": 200, "id": f"p-{i}"} for i in range(len(idx))]})
            with timed("branch: answer JSON → CallResult"):
                call = call_result_from_response(ProviderResponse(200, orjson.loads(answer)), len(idx), 20)
            with timed("branch: apply answer"):
                step = apply_call(pb, idx, call, policies[batch.channel].retry, rng, now)
            with timed("branch: channel record"):
                record = delivery_record(pb, step, now)
                if record is not None:
                    record.decode()
            with timed("branch: metrics record"):
                stages.batch_metrics(pb.batch, step.results, 1000)
            with timed("edge branch→fan-in (pickle)"):
                res = pickle.dumps(("results", key, step.results))
            with timed("edge branch→fan-in (unpickle)"):
                results = pickle.loads(res)[2]
            with timed("fan-in: results"):
                outcomes, _ = stages.fanin_apply(states, ("results", now, results))
            with timed("fan-in: outcome JSON"):
                for o in outcomes:
                    stages.outcome_json(o)
        with timed("fan-in: journal snapshot (pickle)"):
            pickle.dumps(("snapshot", dict(states)))

    for row in rows[:2]:  # warm-up
        one_window(row)
    cost.clear()
    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    for row in rows:
        one_window(row)
    if prof:
        prof.disable()
    wall = time.perf_counter() - t0
    n = sum(len(r[6]) for r in rows)
    report: dict[str, Any] = {
        "events": n,
        "windows": len(rows),
        "events_per_window": round(n / len(rows)),
        "us_per_event": {k: round(v / n * 1e6, 2) for k, v in sorted(cost.items(), key=lambda kv: -kv[1])},
        "us_per_event_total": round(sum(cost.values()) / n * 1e6, 1),
        "wall_us_per_event": round(wall / n * 1e6, 1),
    }
    if prof:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
        report["profile"] = out.getvalue()
    return report
