"""Benchmarks that report numbers (never assertions): ``scripts/bench <experiment>``.

``isolation``: does a slow channel slow the others? The fan-out job runs unbounded on the
local MiniCluster against a real broker and the provider simulator; live events are
produced at a fixed rate, once with every provider fast and once with SMS answering after
200 ms. Latency is measured from the outputs, not inside the job: the provider ledger's
``received_at_ms`` minus the event's ``occurred_at``. Results go to
``docs/benchmarks/isolation.json`` and are quoted in ``docs/benchmarks.md``. A third run
repeats the slow case with blocking delivery (``max_pending_batches: 1``: every batch is
delivered in the operator thread) to show what the non-blocking design buys.

    scripts/bench isolation [--rate 200] [--seconds 20] [--slow-ms 200]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

from ops.kafka import LocalKafka
from ops.kafka_io import fresh_name, produce
from ops.paths import ROOT
from ops.proc import free_port
from ops.provider_sim import ProviderSim, SimClient

CHANNELS = ("email", "sms", "push")


def _pct(values: list[int], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return float(s[min(len(s) - 1, int(q * len(s)))])


def _events(label: str, n: int, start: int) -> tuple[list[bytes], dict[str, int]]:
    from udfs.events import format_timestamp_ms

    now = int(time.time() * 1000)
    out, times = [], {}
    for i in range(start, start + n):
        eid = f"{label}-{i}"
        ev = {
            "event_id": eid,
            "type": "order_shipped",
            "user_id": f"u-{i % 5000}",
            "region": ("eu-west", "us-east", "ap-south")[i % 3],
            "priority": "high",
            "occurred_at": format_timestamp_ms(now),
            "recipient": {
                "email": f"user{i}@example.com",
                "phone": f"+1555{i:07d}",
                "push_token": f"tok-{i:016x}",
                "app_installed": True,
            },
            "payload": {"order_id": f"o-{i}"},
        }
        out.append(orjson.dumps(ev))
        times[eid] = now
    return out, times


def _run_once(
    kafka: LocalKafka,
    sim: ProviderSim,
    slow_ms: int,
    rate: int,
    seconds: int,
    work: Path,
    blocking: bool = False,
) -> dict:
    from pyflink.table import StreamTableEnvironment

    from jobs import fanout
    from jobs.config import load_config
    from jobs.flink_env import kafka_source, make_env, source_watermarks

    admin = SimClient(sim.url)
    admin.reset()
    if slow_ms:
        admin.set_behaviour("sms", {"latency": {"model": "fixed", "ms": slow_ms}})
    tag = fresh_name("iso")
    topics = {k: f"{tag}.{k}" for k in ("events", "rules", "outcomes", "dlq", "metrics")}
    kafka.create_topics([*topics.values(), *(f"{tag}.{ch}" for ch in CHANNELS)], partitions=2)
    # blocking: every batch is delivered synchronously in the operator thread (what a
    # blocking client does); otherwise pending batches wait in state and calls run in the pool
    policy = {"max_in_flight": 16, "max_pending_batches": 1 if blocking else 10_000}
    (work / "delivery.yaml").write_text(yaml.safe_dump({"defaults": policy}))
    cfg = load_config(
        overrides=[
            f"kafka.bootstrap={kafka.bootstrap}",
            f"kafka.group_id=g-{tag}",
            f"kafka.transactional_id_prefix=tx-{tag}",
            *(f"topics.{k}={v}" for k, v in topics.items()),
            f"topics.channel_prefix={tag}.",
            "events.window_ms=500",
            "events.max_out_of_orderness_ms=500",
            "events.idle_timeout_ms=1000",
            f"delivery.provider_url={sim.url}",
            f"delivery.policies_file={work / 'delivery.yaml'}",
            "delivery.poll_ms=5",
        ]
    )
    env = make_env(cfg)
    t_env = StreamTableEnvironment.create(env)
    t_env.get_config().set("table.local-time-zone", "UTC")
    fanout.kafka_events_table(t_env, cfg)
    rules = env.from_source(kafka_source(cfg, cfg.topics.rules), source_watermarks(), "kafka: rules")
    fanout.build(env, t_env, fanout.KafkaSinks(cfg), cfg, rules_stream=rules)
    client = env.execute_async(f"bench-isolation-{slow_ms}{'-blocking' if blocking else ''}")
    occurred: dict[str, int] = {}
    try:
        time.sleep(8)  # job start-up
        n = 0
        t0 = time.monotonic()
        for second in range(seconds):
            batch, times = _events(f"e{slow_ms}", rate, n)
            occurred.update(times)
            produce(kafka.bootstrap, topics["events"], batch)
            n += rate
            time.sleep(max(0.0, t0 + second + 1 - time.monotonic()))
        for i in range(20):  # ticks move event time on so the last windows close
            batch, times = _events(f"tick{slow_ms}", 1, i)
            produce(kafka.bootstrap, topics["events"], batch)
            time.sleep(0.5)
        rows = admin.ledger()
    finally:
        client.cancel().result()
    result: dict[str, Any] = {
        "sms_latency_ms": slow_ms,
        "delivery": "blocking" if blocking else "non-blocking",
        "offered_events_per_s": rate,
        "seconds": seconds,
    }
    for ch in CHANNELS:
        lat = [
            r["received_at_ms"] - occurred[eid]
            for r in rows
            if r["channel"] == ch
            for eid in r["event_ids"]
            if eid in occurred and not eid.startswith("tick")
        ]
        result[ch] = {
            "delivered": len(lat),
            "expected": n,
            "latency_ms_p50": _pct(lat, 0.5),
            "latency_ms_p99": _pct(lat, 0.99),
            "latency_ms_max": max(lat) if lat else None,
        }
    return result


def isolation(args: argparse.Namespace) -> int:
    """Fast providers vs a 200 ms SMS provider, same workload, one invocation."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        kafka = LocalKafka(home=work / "kafka", port=free_port())
        sim = ProviderSim(str(ROOT / "conf" / "providers.yaml"), work / "ledger.db", seed=1)
        kafka.start()
        sim.start("127.0.0.1", 0)
        try:
            runs = [
                _run_once(kafka, sim, 0, args.rate, args.seconds, work),
                _run_once(kafka, sim, args.slow_ms, args.rate, args.seconds, work),
                _run_once(kafka, sim, args.slow_ms, args.rate, args.seconds, work, blocking=True),
            ]
        finally:
            sim.stop()
            kafka.stop()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    report = {
        "experiment": "isolation",
        "command": "scripts/bench isolation " + " ".join(sys.argv[2:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit.stdout.strip(),
        "runs": runs,
    }
    for ch in ("email", "push"):
        fast, slow, blocked = (r[ch]["latency_ms_p99"] for r in runs)
        if fast and slow:
            report[f"{ch}_p99_ratio_slow_sms_vs_fast"] = round(slow / fast, 3)
        if fast and blocked:
            report[f"{ch}_p99_ratio_slow_sms_blocking_vs_fast"] = round(blocked / fast, 3)
    out = ROOT / "docs" / "benchmarks" / "isolation.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the experiment and run it."""
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="experiment", required=True)
    iso = sub.add_parser("isolation", help="a slow channel vs the others")
    iso.add_argument("--rate", type=int, default=200, help="events/s offered")
    iso.add_argument("--seconds", type=int, default=20)
    iso.add_argument("--slow-ms", type=int, default=200)
    args = parser.parse_args(argv)
    return {"isolation": isolation}[args.experiment](args)


if __name__ == "__main__":
    sys.exit(main())
