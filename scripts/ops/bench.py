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
import os
import signal
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
from ops.worktree import worktrees

CHANNELS = ("email", "sms", "push")


def _header(experiment: str) -> dict[str, str]:
    """Return what every report starts with: experiment, the command, date and commit."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return {
        "experiment": experiment,
        "command": f"scripts/bench {experiment} " + " ".join(sys.argv[2:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit.stdout.strip(),
    }


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
    report = {
        **_header("isolation"),
        "runs": runs,
    }
    for ch in ("email", "push"):
        fast, slow, blocked = (r[ch]["latency_ms_p99"] for r in runs)
        if fast and slow:
            report[f"{ch}_p99_ratio_slow_sms_vs_fast"] = round(slow / fast, 3)
        if fast and blocked:
            report[f"{ch}_p99_ratio_slow_sms_blocking_vs_fast"] = round(blocked / fast, 3)
    out = ROOT / "docs" / "benchmarks" / f"isolation-{args.rate}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def _by(runs: list[dict], **kw: Any) -> dict | None:
    for r in runs:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def divergence(args: argparse.Namespace) -> int:
    """Run the main experiment: linear vs fanout by provider latency, scaling, anchors, load.

    All in one invocation on one stack (docs/benchmarks.md explains each choice):

    - every job run gets ``--warmup`` seconds after its first output before the measured
      ``--seconds`` (the JIT keeps compiling for about a minute on this machine);
    - backlogs are dense in event time (``--density`` events per second of ``occurred_at``,
      20,000 = the throughput target) because window batch sizes follow the traffic's rate;
      one fanout run repeats at 1,000/s to show what small batches cost;
    - the latency runs offer live events at 25/50/80/100/120% of fanout's own maximum at
      20 ms providers, with a 500 ms watermark delay (the latency floor is window + delay);
    - dedup state scaling runs the job's JVM front alone over 10^6 distinct ids;
    - the memory run keeps fanout at 50% load for ``--memory-minutes``.
    """
    from ops.benchrun import RunSpec, Stack, kafka_perf, plain_consumer, run_job, write_json

    quick = args.quick
    secs = 10 if quick else args.seconds
    warm = 5 if quick else args.warmup
    lats = (0, 20) if quick else (0, 20, 200)
    density = args.density
    runs: list[dict] = []
    anchors: list[dict] = []

    def record(result: dict) -> None:
        runs.append(result)
        brief = {k: v for k, v in result.items() if k not in ("vertices", "rss_series", "state_growth")}
        print(json.dumps(brief), flush=True)

    def backlog(expected_eps: float) -> int:
        # enough for warm-up + measurement at the expected rate, +50%; within sane bounds
        return int(min(400_000, max(2_000, expected_eps * (warm + secs) * 1.5)))

    def spec(name: str, job: str, p: int, lat: int, expected: float, **kw: Any) -> RunSpec:
        return RunSpec(
            name,
            job,
            p,
            lat,
            events=kw.pop("events", backlog(expected)),
            seconds=secs,
            warmup_s=kw.pop("warmup_s", warm),
            density=kw.pop("density", density),
            **kw,
        )

    # expected events/s per run, to size backlogs (generous: the run stops at `seconds`)
    fan_fast = 4_000
    lin = {0: 1_500, 20: 60, 200: 8}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, Stack(Path(tmp)) as stack:
        anchors.append(kafka_perf(stack, 100_000 if quick else 500_000))
        print(json.dumps(anchors[-1]), flush=True)
        # a discarded fanout run first: class loading and JIT for every later run
        run_job(stack, spec("warm-up", "fanout", 2, 0, fan_fast))
        # the engine's ceiling drains a backlog at ~50k/s: a large one, a short warm-up
        record(
            run_job(
                stack,
                spec("passthrough", "passthrough", 2, 0, 0, events=150_000 if quick else 500_000, warmup_s=2),
            )
        )
        for lat in lats:
            anchors.append(plain_consumer(stack, lat, secs))
            print(json.dumps(anchors[-1]), flush=True)
            record(run_job(stack, spec(f"fanout-p2-{lat}ms", "fanout", 2, lat, fan_fast)))
            record(run_job(stack, spec(f"linear-p2-{lat}ms", "linear", 2, lat, lin[lat])))
        for p in (1, 4):
            record(run_job(stack, spec(f"fanout-p{p}-0ms", "fanout", p, 0, fan_fast)))
        record(run_job(stack, spec("fanout-p2-noprovider", "fanout", 2, 0, fan_fast, provider=False)))
        if not quick:
            record(run_job(stack, spec("fanout-p2-0ms-sparse", "fanout", 2, 0, 2_000, density=1_000)))
        # latency vs offered load at 20 ms providers (live events: occurred_at = send time)
        # the load points are % of the live capacity (a dense backlog's maximum overstates it:
        # live batches hold only what arrives in a window), found from the sparse side
        top, capacity_runs = _live_capacity(stack, (), warm, secs, 2_000, 2 if quick else 4)
        runs.extend(capacity_runs)
        for pct in (50,) if quick else (25, 50, 80, 100, 120):
            rate = max(10, int(top * pct / 100))
            r = run_job(stack, _live_spec(f"fanout-p2-20ms-load{pct}", rate, secs, warm))
            r["load_pct_of_max"] = pct
            record(r)
        # dedup state and checkpoints vs distinct ids (JVM front alone)
        ids = 20_000 if quick else args.dedup_ids
        record(
            run_job(
                stack,
                RunSpec(
                    "dedup-state",
                    "dedup",
                    2,
                    provider=False,
                    events=0,
                    distinct_ids=ids,
                    seconds=600,
                    density=density,
                ),
            )
        )
        # memory over time at half load
        if not quick and args.memory_minutes > 0:
            r = run_job(stack, _memory_spec(max(10, int(top * 0.5)), args.memory_minutes))
            r["load_pct_of_max"] = 50
            record(r)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    eps = lambda name: (_by(runs, name=name) or {}).get("events_per_s")  # noqa: E731
    passthrough = eps("passthrough")
    cpu_bound = eps("fanout-p2-0ms")
    perf = next((a for a in anchors if a["name"] == "kafka-perf"), {})
    knee = _by(runs, name="fanout-p2-20ms-load80") or _by(runs, name="fanout-p2-20ms-load50") or {}
    mem = _by(runs, name="fanout-p2-20ms-memory") or {}
    summary = {
        "command": "scripts/bench run " + " ".join(sys.argv[2:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit.stdout.strip(),
        "machine": f"{os.cpu_count()} cores",
        "backlog_density_events_per_s": density,
        "warmup_s": warm,
        "measured_s": secs,
        "fanout_linear_throughput_ratio_0ms": _ratio(cpu_bound, eps("linear-p2-0ms")),
        "fanout_linear_throughput_ratio_20ms": _ratio(eps("fanout-p2-20ms"), eps("linear-p2-20ms")),
        "fanout_linear_throughput_ratio_200ms": _ratio(eps("fanout-p2-200ms"), eps("linear-p2-200ms")),
        "events_per_s_cpu_bound": cpu_bound,
        "events_per_s_cpu_bound_sparse_batches": eps("fanout-p2-0ms-sparse"),
        "passthrough_events_per_s": passthrough,
        "fraction_of_passthrough": _ratio(cpu_bound, passthrough),
        "p99_latency_ms_at_80pct_load": (knee.get("latency_ms") or {}).get("p99"),
        "latency_load_pct": knee.get("load_pct_of_max"),
        "latency_live_capacity_events_per_s_20ms": top,
        "latency_by_load_pct": {
            str(r["load_pct_of_max"]): {"offered": r["offered_rate"], **(r.get("latency_ms") or {})}
            for r in runs
            if r.get("load_pct_of_max") is not None and "memory" not in r["name"]
        },
        "peak_rss_mb": max((r.get("peak_rss_mb") or 0) for r in runs),
        "memory_run": _memory_summary(mem),
        "dedup_state": _dedup_summary(_by(runs, name="dedup-state") or {}),
        "taskmanager_crashes": [r["name"] for r in runs if r.get("taskmanager_crash")],
        "plain_consumer_events_per_s": {
            a["name"]: a["events_per_s"] for a in anchors if "plain" in a["name"]
        },
        "kafka_producer_records_per_s": perf.get("producer_records_per_s"),
        "kafka_consumer_records_per_s": perf.get("consumer_records_per_s"),
    }
    out_dir = ROOT / "docs" / "benchmarks"
    suffix = "-quick" if quick else ""
    write_json(out_dir / f"results{suffix}.json", {"summary": summary, "runs": runs, "anchors": anchors})
    if not quick:
        write_json(out_dir / "summary.json", summary)
    (out_dir / f"results{suffix}.md").write_text(_markdown(summary, runs, anchors))
    _plots(runs, out_dir, suffix)
    print(json.dumps(summary, indent=2))
    return 0


def _slope_mb_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) points, in MB per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    var = sum((p[0] - mx) ** 2 for p in points)
    return round(60 * sum((p[0] - mx) * (p[1] - my) for p in points) / var, 1) if var else None


def _memory_summary(run: dict, skip_s: float | None = None) -> dict[str, Any] | None:
    """Flat or growing? RSS (whole stack and per role) after start-up and warm-up.

    The series starts at job submission: the first ``skip_s`` seconds (start-up + warm-up,
    default: the run's start-up time + its warm-up) are the JVMs and interpreters filling
    up, not the steady state, and are left out. Reports the mean of the first and last tenth
    of the rest and the least-squares slope in MB/min, for the stack and for each process.
    """
    series = run.get("rss_series") or []
    if skip_s is None:
        skip_s = (run.get("startup_s") or 0) + (run.get("warmup_s") or 0)
    steady = [p for p in series if p[0] >= skip_s]
    if len(steady) < 10:
        return None
    tenth = max(1, len(steady) // 10)
    first = sum(p[1] for p in steady[:tenth]) / tenth
    last = sum(p[1] for p in steady[-tenth:]) / tenth
    span_min = (steady[-1][0] - steady[0][0]) / 60
    roles = sorted({r for p in steady for r in (p[2] if len(p) > 2 else {})})
    by_role = {
        role: {
            "first_mb": steady[0][2].get(role),
            "last_mb": steady[-1][2].get(role),
            "slope_mb_per_min": _slope_mb_per_min([(p[0], p[2][role]) for p in steady if role in p[2]]),
        }
        for role in roles
    }
    return {
        "minutes": round(span_min, 1),
        "left_out_s": round(skip_s),
        "offered_events_per_s": run.get("offered_rate"),
        "achieved_offered_events_per_s": run.get("achieved_offered_rate"),
        "rss_mb_first_tenth": round(first),
        "rss_mb_last_tenth": round(last),
        "growth_mb_per_min": round((last - first) / span_min, 1) if span_min else None,
        "slope_mb_per_min": _slope_mb_per_min([(p[0], p[1]) for p in steady]),
        "by_role": by_role,
        "peak_rss_mb": run.get("peak_rss_mb"),
        "latency_ms": run.get("latency_ms"),
        "checkpoint_state_bytes_by_vertex": (run.get("checkpoint") or {}).get("state_bytes_by_vertex"),
        "extra_sets": run.get("extra_sets"),
    }


def _dedup_summary(
    run: dict, targets: tuple[int, ...] = (10_000, 100_000, 1_000_000)
) -> list[dict[str, Any]]:
    """Checkpoint size/duration at the points closest to ``targets`` deduplicated ids."""
    growth = [g for g in run.get("state_growth") or [] if g.get("checkpoint_id")]
    out = []
    for target in targets:
        # the first checkpoint completed after the dedup had seen `target` ids; the REST
        # metrics refresh every few seconds, so a sample far past the target is not reported
        after = [g for g in growth if g["dedup_records_in"] >= target]
        if not after or after[0]["dedup_records_in"] > 1.5 * target:
            continue
        first_id = after[0]["checkpoint_id"]
        later = [g for g in after if g["checkpoint_id"] != first_id]
        g = later[0] if later else after[0]
        out.append(
            {
                "distinct_ids": target,
                "dedup_records_in_at_sample": g["dedup_records_in"],
                "checkpoint_size_bytes": g["checkpoint_size_bytes"],
                "checkpoint_full_size_bytes": g["checkpoint_full_size_bytes"],
                "checkpoint_duration_ms": g["checkpoint_duration_ms"],
            }
        )
    return out


def _markdown(summary: dict, runs: list[dict], anchors: list[dict]) -> str:
    lines = [
        f"Produced by `{summary['command']}` on {summary['date']} at commit {summary['commit']}",
        f"({summary['machine']}). Throughput is measured from broker append times of committed outputs.",
        "",
        "| run | job | p | provider latency | offered | events/s | deliveries/s | latency p50/p99 ms "
        "| TM CPU cores | peak RSS MB | last checkpoint ms / bytes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        lat = r.get("latency_ms") or {}
        cp = r.get("checkpoint") or {}
        lines.append(
            f"| {r['name']} | {r['job']} | {r['parallelism']} | {r.get('provider_latency_ms')} "
            f"| {r['offered_rate']} "
            f"| {r.get('events_per_s')} | {r.get('deliveries_per_s', '')} "
            f"| {lat.get('p50', '')}/{lat.get('p99', '')} "
            f"| {r.get('tm_cpu_cores')} | {r.get('peak_rss_mb')} "
            f"| {cp.get('last_duration_ms')} / {cp.get('last_size_bytes')} |"
        )
    lines += ["", "| anchor | figures |", "| --- | --- |"]
    for a in anchors:
        figures = ", ".join(
            f"{k}={v}" for k, v in a.items() if k not in ("name", "producer_tail", "consumer_tail")
        )
        lines.append(f"| {a['name']} | {figures} |")
    lines += ["", "Summary:", "", "```json", json.dumps(summary, indent=2), "```", ""]
    return "\n".join(lines)


def _plot_memory(mem: dict | None, out_dir: Path, suffix: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not mem or not mem.get("rss_series"):
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    series = mem["rss_series"]
    for role in series[0][2]:
        ax.plot([p[0] / 60 for p in series], [p[2].get(role, 0) for p in series], label=role)
    ax.plot([p[0] / 60 for p in series], [p[1] for p in series], label="total", linewidth=2)
    warm = (mem.get("startup_s") or 0) + (mem.get("warmup_s") or 0)
    ax.axvline(warm / 60, linestyle=":", color="grey", label="start-up + warm-up")
    ax.set_xlabel("minutes since submission")
    ax.set_ylabel("RSS (MB)")
    sets = ", ".join(mem.get("extra_sets") or [])
    ax.set_title(f"stack RSS at {mem['offered_rate']} events/s" + (f"\n{sets}" if sets else ""), fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / f"memory{suffix}.png", dpi=110)
    plt.close(fig)


def _plots(runs: list[dict], out_dir: Path, suffix: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lats = sorted(
        {
            r["provider_latency_ms"]
            for r in runs
            if r["job"] in ("fanout", "linear")
            and r["parallelism"] == 2
            and r["offered_rate"] == "backlog"
            and r["provider_latency_ms"] is not None
        }
    )
    fig, ax = plt.subplots(figsize=(6, 4))
    for job in ("fanout", "linear"):
        ys = [(_by(runs, name=f"{job}-p2-{lat}ms") or {}).get("events_per_s") or 0 for lat in lats]
        ax.plot([str(x) for x in lats], ys, marker="o", label=job)
    ax.set_yscale("log")
    ax.set_xlabel("provider latency (ms)")
    ax.set_ylabel("events/s (log)")
    ax.set_title("linear vs fanout, parallelism 2")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / f"throughput-vs-latency{suffix}.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    ps = [p for p in (1, 2, 4) if _by(runs, name=f"fanout-p{p}-0ms")]
    ax.bar(
        [str(p) for p in ps],
        [(_by(runs, name=f"fanout-p{p}-0ms") or {}).get("events_per_s") or 0 for p in ps],
    )
    ax.set_xlabel("parallelism")
    ax.set_ylabel("events/s")
    ax.set_title("fanout, zero-latency providers (2 cores)")
    fig.tight_layout()
    fig.savefig(out_dir / f"scaling{suffix}.png", dpi=110)
    plt.close(fig)
    load = sorted(
        (r for r in runs if r.get("load_pct_of_max") is not None and "memory" not in r["name"]),
        key=lambda r: r["offered_rate"],
    )
    if load:
        fig, ax = plt.subplots(figsize=(6, 4))
        for q in ("p50", "p95", "p99"):
            ax.plot(
                [r["offered_rate"] for r in load],
                [(r.get("latency_ms") or {}).get(q) or 0 for r in load],
                marker="o",
                label=q,
            )
        ax.set_xlabel("offered events/s (live, 20 ms providers)")
        ax.set_ylabel("occurred_at -> provider accepted (ms)")
        ax.set_title("fanout p2: latency vs offered load")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / f"latency-vs-load{suffix}.png", dpi=110)
        plt.close(fig)
    _plot_memory(_by(runs, name="fanout-p2-20ms-memory"), out_dir, suffix)
    dedup = _by(runs, name="dedup-state")
    growth = [g for g in (dedup or {}).get("state_growth") or [] if g.get("checkpoint_size_bytes")]
    if growth:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(
            [g["dedup_records_in"] for g in growth],
            [g["checkpoint_full_size_bytes"] / 1e6 for g in growth],
            marker=".",
            label="state size (MB)",
        )
        ax2 = ax.twinx()
        ax2.plot(
            [g["dedup_records_in"] for g in growth],
            [g["checkpoint_duration_ms"] for g in growth],
            color="tab:red",
            marker=".",
            label="checkpoint ms",
        )
        ax.set_xlabel("distinct event ids in the dedup window")
        ax.set_ylabel("checkpointed state (MB)")
        ax2.set_ylabel("checkpoint duration (ms)")
        ax.set_title("dedup state vs distinct ids")
        fig.tight_layout()
        fig.savefig(out_dir / f"dedup-state{suffix}.png", dpi=110)
        plt.close(fig)


def front(args: argparse.Namespace) -> int:
    """Time the JVM front (source + computed columns, + dedup, + window batches) per variant."""
    from pyflink.table import Schema, StreamTableEnvironment, TableDescriptor

    from jobs import fanout
    from jobs.config import load_config
    from jobs.flink_env import make_env
    from udfs.generator import generate_events

    variants = {"legacy": ["job.front=legacy"], "current": []}
    # Each stage selects what the job uses downstream (unused computed columns would be pruned).
    stages = {
        "source": "SELECT `raw`, event_id, region_key, redrive_id, CAST(rowtime AS TIMESTAMP(3)) AS rt{ht} "
        "FROM events_in",
        "dedup": "SELECT `raw`, region_key, dedup_key, CAST(rowtime AS TIMESTAMP(3)) AS rt, windowed, "
        "is_late FROM deduped",
        "window": "SELECT * FROM batches",
    }
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-front-") as tmp:
        kafka = LocalKafka(home=Path(tmp) / "kafka", port=free_port(), heap="1g")
        kafka.start()
        try:
            topic = fresh_name("front")
            kafka.create_topics([topic])
            produce(kafka.bootstrap, topic, generate_events(args.events, seed=3, rate_per_s=1000.0))
            # a discarded warm-up job first (class loading, JIT), then alternate the order of
            # the variants per stage so neither always runs first
            plan = [("warm-up", stages["source"], "current")]
            for n, (stage, view) in enumerate(stages.items()):
                order = list(variants) if n % 2 == 0 else list(reversed(variants))
                plan += [(stage, view, name) for name in order]
            for stage, view, name in plan:
                sets = variants[name]
                cfg = load_config(
                    overrides=[
                        f"kafka.bootstrap={kafka.bootstrap}",
                        f"kafka.group_id=g-{fresh_name('f')}",
                        "kafka.bounded=true",
                        f"topics.events={topic}",
                        *sets,
                    ]
                )
                env = make_env(cfg)
                t_env = StreamTableEnvironment.create(env)
                t_env.get_config().set("table.local-time-zone", "UTC")
                t_env.get_config().set("table.exec.state.ttl", f"{cfg.events.dedup_ttl_ms} ms")
                t_env.get_config().set("table.exec.source.idle-timeout", f"{cfg.events.idle_timeout_ms} ms")
                fanout.kafka_events_table(t_env, cfg)
                fanout.front_sql(t_env, cfg)
                query = view.format(ht=", has_time" if name == "legacy" else "")
                table = t_env.sql_query(query)
                schema = Schema.new_builder().from_row_data_type(table.get_schema().to_row_data_type())
                sink = TableDescriptor.for_connector("blackhole").schema(schema.build()).build()
                t_env.create_temporary_table("sink", sink)
                t0 = time.monotonic()
                table.execute_insert("sink").wait()
                elapsed = time.monotonic() - t0
                if stage == "warm-up":
                    continue
                results.append(
                    {
                        "stage": stage,
                        "variant": name,
                        "seconds": round(elapsed, 2),
                        "events_per_s_incl_startup": round(args.events / elapsed),
                    }
                )
                print(json.dumps(results[-1]), flush=True)
        finally:
            kafka.stop()
    report = {
        **_header("front"),
        "events": args.events,
        "results": results,
    }
    (ROOT / "docs" / "benchmarks" / "front.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


def profile(args: argparse.Namespace) -> int:
    """Profile the fan-out job on a backlog: JFR + py-spy on the TaskManager (docs/benchmarks.md)."""
    from ops.benchprofile import markdown, profile_during
    from ops.benchrun import RunSpec, Stack, run_job, write_json

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, Stack(Path(tmp)) as stack:
        spec = RunSpec(
            "profile",
            args.mode,
            args.parallelism,
            args.latency_ms,
            provider=not args.no_provider,
            events=args.events,
            density=args.density,
            seconds=args.seconds,  # throughput over the first, unprofiled, interval
            warmup_s=args.warmup,
            extra_sets=tuple(args.set),
        )
        run = run_job(stack, spec, during=profile_during(args.seconds))
    report = {
        **_header("profile"),
        "run": run,
    }
    out = ROOT / "docs" / "benchmarks" / f"profile-{args.label}"
    write_json(out.with_suffix(".json"), report)
    out.with_suffix(".md").write_text(markdown(report))
    print(out.with_suffix(".md").read_text())
    return 0


def ab(args: argparse.Namespace) -> int:
    """Before/after in one run: the same fanout workload on several commits, alternating.

    Each revision in ``--revs`` is checked out as a git worktree (sharing this checkout's
    jar cache); ``HEAD`` means this checkout as it is. The TaskManager is restarted before
    every run: thread-mode Python keeps the modules of the first job it ran, so each
    variant needs a fresh interpreter. Rounds alternate the order (first run of a round is
    not always the same variant).
    """
    from ops.benchrun import RunSpec, Stack, run_job, write_json

    revs = [r.strip() for r in args.revs.split(",") if r.strip()]
    configs = _variants(args.variant)
    plain = len(configs) == 1 and not configs[0][1]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp, worktrees(revs, Path(tmp)) as roots:
        # every revision x configuration pair is one variant: name -> (revision's name, --set values)
        variant_of = {(rn if plain else f"{rn}-{cn}"): (rn, sets) for rn in roots for cn, sets in configs}
        names = list(variant_of)
        with Stack(Path(tmp) / "stack") as stack:
            for n in range(args.rounds):
                order = names if n % 2 == 0 else list(reversed(names))
                for name in order:
                    stack.cluster.restart_taskmanager()
                    spec = RunSpec(
                        f"{name}-{n}",
                        "fanout",
                        2,
                        args.latency_ms,
                        events=args.events,
                        seconds=args.seconds,
                        warmup_s=args.warmup,
                        density=args.density,
                        root=roots[variant_of[name][0]],
                        extra_sets=variant_of[name][1],
                    )
                    r = run_job(stack, spec)
                    r["variant"] = name
                    results.append(r)
                    brief = ("name", "events_per_s", "tm_cpu_cores", "cpu_cores", "failure")
                    print(json.dumps({k: r.get(k) for k in brief}), flush=True)

    def median(name: str) -> float | None:
        xs = sorted(r["events_per_s"] for r in results if r["variant"] == name and r.get("events_per_s"))
        return xs[len(xs) // 2] if xs else None

    first = median(names[0])
    report = {
        **_header("ab"),
        "configurations": {n: list(sets) for n, sets in configs},
        "variants": [
            {
                "rev": name,
                "events_per_s_median": median(name),
                "events_per_s_all": [r.get("events_per_s") for r in results if r["variant"] == name],
                "tm_cpu_cores_all": [r.get("tm_cpu_cores") for r in results if r["variant"] == name],
                "machine_cpu_cores_all": [
                    (r.get("cpu_cores") or {}).get("machine") for r in results if r["variant"] == name
                ],
                "ratio_to_first": _ratio(median(name), first),
            }
            for name in names
        ],
        "runs": [{k: v for k, v in r.items() if k not in ("vertices", "rss_series")} for r in results],
    }
    label = args.label or f"{names[0]}-{names[-1].split('-')[0]}"
    write_json(ROOT / "docs" / "benchmarks" / f"ab-{label}.json", report)
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))
    return 0


def tune(args: argparse.Namespace) -> int:
    """Two tuning choices, measured in one run: the state backend and the async capacity.

    - Dedup state at ``--dedup-ids`` distinct ids (the JVM front alone) on the heap
      (``hashmap``) and on RocksDB with incremental checkpoints: checkpoint size/duration and
      throughput.
    - ``max_in_flight`` (provider calls in flight per branch subtask) at 200 ms providers.
    - The other side of the divergence: linear and fanout latency at a low live rate
      (``--low-rate``, 20 ms providers), where the window, not throughput, decides.
    """
    from ops.benchrun import RunSpec, Stack, run_job, write_json

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, Stack(Path(tmp)) as stack:
        # one run per (size, backend): each ends at the first checkpoint after its last id
        for ids in args.dedup_ids:
            for backend in args.backends:
                r = run_job(
                    stack,
                    RunSpec(
                        f"dedup-{backend}-{ids}",
                        "dedup",
                        2,
                        provider=False,
                        events=0,
                        distinct_ids=ids,
                        seconds=900,
                        density=20_000,
                        extra_sets=(f"job.state_backend={backend}",),
                    ),
                )
                r["state_backend"] = backend
                r["distinct_ids"] = ids
                r["dedup_state"] = _dedup_summary(r, (ids,))
                runs.append(r)
                print(
                    json.dumps({k: r.get(k) for k in ("name", "events_per_s", "dedup_state", "failure")}),
                    flush=True,
                )
        for cap in args.in_flight:
            r = run_job(
                stack,
                RunSpec(
                    f"fanout-p2-200ms-inflight{cap}",
                    "fanout",
                    2,
                    200,
                    # must outlast start-up + warm-up + the measured interval at ~3,000/s
                    # (60,000 drained within the warm-up at 8 and 32 in flight)
                    events=250_000,
                    seconds=args.seconds,
                    warmup_s=args.warmup,
                    density=20_000,
                    max_in_flight=cap,
                ),
            )
            r["max_in_flight"] = cap
            runs.append(r)
            print(
                json.dumps({k: r.get(k) for k in ("name", "events_per_s", "deliveries_per_s", "failure")}),
                flush=True,
            )
        # the other side of the divergence: at a low rate, latency (linear has no window)
        for job in ("linear", "fanout") if args.low_rate > 0 else ():
            spec = _live_spec(
                f"{job}-p2-20ms-live{args.low_rate}", args.low_rate, args.seconds, args.warmup, job=job
            )
            r = run_job(stack, spec)
            runs.append(r)
            print(
                json.dumps({k: r.get(k) for k in ("name", "events_per_s", "latency_ms", "failure")}),
                flush=True,
            )
    report = {
        **_header("tune"),
        "runs": [{k: v for k, v in r.items() if k not in ("vertices", "rss_series")} for r in runs],
    }
    write_json(ROOT / "docs" / "benchmarks" / "tune.json", report)
    return 0


def _variants(given: list[str] | None) -> list[tuple[str, tuple[str, ...]]]:
    """Parse ``--variant NAME:section.key=value,...`` options (none: one default variant)."""
    out: list[tuple[str, tuple[str, ...]]] = []
    for v in given or ["default:"]:
        name, _, sets = v.partition(":")
        out.append((name, tuple(s for s in sets.split(",") if s)))
    return out


def _merge_summary(header: dict[str, Any], figures: dict[str, Any]) -> None:
    """Update ``summary.json`` with figures measured by a later, narrower experiment.

    Each merged key is listed under ``sources`` with the command, date and commit that
    produced it, so the summary never claims one run produced every number.
    """
    from ops.benchrun import write_json

    path = ROOT / "docs" / "benchmarks" / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary.update(figures)
    sources = summary.setdefault("sources", {})
    for key in figures:
        sources[key] = {k: header[k] for k in ("command", "date", "commit")}
    write_json(path, summary)


def _live_spec(
    name: str,
    rate: int,
    secs: int,
    warm: int,
    sets: tuple[str, ...] = (),
    job: str = "fanout",
    root: str = "",
) -> Any:
    """Return a live run at 20 ms providers, p=2: ``rate`` events/s, occurred_at = send time.

    ``events`` is only a cap (the producer stops when the measured interval ends); the 500 ms
    watermark delay makes the latency floor window + 0.5 s.
    """
    from ops.benchrun import RunSpec

    return RunSpec(
        name,
        job,
        2,
        20,
        events=rate * (warm + secs + 180),
        rate=rate,
        seconds=secs,
        warmup_s=warm,
        root=root,
        extra_sets=("events.max_out_of_orderness_ms=500", *sets),
    )


def _live_capacity(
    stack: Any, sets: tuple[str, ...], warm: int, secs: int, density: int, iterations: int
) -> tuple[int, list[dict[str, Any]]]:
    """Return fanout's live capacity at 20 ms providers (events/s) and the runs that found it.

    Two steps. (1) A fixed point on backlogs: drain a backlog of event-time density
    ``density``, measure its rate, repeat with the density set to that rate until the two
    agree within 10%. (2) That overstates live traffic on this machine (measured: the job
    fell behind live traffic at 80% of it; the paced producer and the simulator share the 2
    cores with the job), so live probes follow at 90%, 80%, 70%, ... of it: the first rate
    whose committed outcomes keep up with what was offered (≥ 95%) and whose p95 latency
    stays under 5 s is the capacity. See :func:`load`.
    """
    from ops.benchrun import RunSpec, run_job

    runs: list[dict[str, Any]] = []
    backlog_rate = density
    while len(runs) < iterations:
        m = run_job(
            stack,
            RunSpec(
                f"fanout-p2-20ms-capacity-d{density}",
                "fanout",
                2,
                20,
                events=int(density * (warm + secs) * 1.5),
                seconds=secs,
                warmup_s=warm,
                density=density,
                extra_sets=sets,
            ),
        )
        runs.append({k: v for k, v in m.items() if k not in ("vertices", "rss_series")})
        print(json.dumps({k: m.get(k) for k in ("name", "events_per_s", "failure")}), flush=True)
        rate = m.get("events_per_s")
        if not rate:
            break
        backlog_rate = int(rate)
        if abs(rate - density) <= 0.1 * density:
            break
        density = backlog_rate
    for pct in (90, 80, 70, 60, 50):
        offered = int(backlog_rate * pct / 100)
        p = run_job(stack, _live_spec(f"fanout-p2-20ms-probe{offered}", offered, secs, warm, sets))
        p["probe_pct_of_backlog_capacity"] = pct
        runs.append({k: v for k, v in p.items() if k not in ("vertices", "rss_series")})
        brief = ("name", "achieved_offered_rate", "events_per_s", "latency_ms", "failure")
        print(json.dumps({k: p.get(k) for k in brief}), flush=True)
        achieved = p.get("achieved_offered_rate") or offered
        kept_up = (p.get("events_per_s") or 0) >= 0.95 * achieved
        p95 = (p.get("latency_ms") or {}).get("p95") or 1e9
        if kept_up and p95 < 5_000:
            return int(achieved), runs
    return int(backlog_rate * 0.5), runs


def load(args: argparse.Namespace) -> int:
    """Latency vs offered load (the knee), live events at 20 ms providers, fanout p=2.

    The 100% point is the job's **live** capacity: a window batch holds what arrived in its
    window, so live traffic at R events/s makes batches of R/keys events, and a dense
    backlog's maximum (big batches) overstates what live traffic can get (measured: 2,395
    events/s on a 20k-dense backlog, yet the job fell behind live traffic at 1,900). See
    :func:`_live_capacity` for how it is found (``--max`` skips that). Each load point
    then offers ``pct`` % of it as live events (occurred_at = send
    time), after ``--warmup``, for ``--seconds``; latency is the provider ledger's receive
    time minus occurred_at. ``--variant name:section.key=value,...`` runs each load point
    once per variant, alternating, so configurations are compared in one run.
    """
    from ops.benchrun import Stack, run_job, write_json

    revs = [r.strip() for r in (args.revs or "HEAD").split(",") if r.strip()]
    if len(revs) > 1 and not args.max:
        raise SystemExit("error: bench load --revs compares revisions at one rate: give --max")
    configs = _variants(args.variant)
    runs: list[dict[str, Any]] = []
    header = _header("load")
    with (
        tempfile.TemporaryDirectory(prefix="bench-") as tmp,
        worktrees(revs, Path(tmp)) as roots,
        Stack(Path(tmp) / "stack") as stack,
    ):
        # (name, checkout root, --set values): configurations, times revisions when given
        variants = [
            (cn if len(roots) == 1 else (rn if len(configs) == 1 and not sets else f"{rn}-{cn}"), root, sets)
            for rn, root in roots.items()
            for cn, sets in configs
        ]
        # each variant's own live capacity: "% of its maximum load" is per configuration
        tops: dict[str, int] = {}
        maxima: list[dict[str, Any]] = []
        for name, _, sets in variants:
            if args.max:
                tops[name] = args.max
                continue
            tops[name], found = _live_capacity(
                stack, sets, args.warmup, args.seconds, args.start_density, args.max_iterations
            )
            maxima.extend({**r, "variant": name} for r in found)
        for i, pct in enumerate(args.pcts):
            # alternate the order: the first run on a fresh stack is slower (cold JIT, caches)
            for name, root, sets in variants if i % 2 == 0 else variants[::-1]:
                if len(roots) > 1:  # a thread-mode TaskManager keeps the first code it loaded
                    stack.cluster.restart_taskmanager()
                rate = max(10, int(tops[name] * pct / 100))
                spec = _live_spec(
                    f"fanout-p2-20ms-load{pct}-{name}", rate, args.seconds, args.warmup, sets, root=root
                )
                r = run_job(stack, spec)
                r["load_pct_of_max"] = pct
                r["variant"] = name
                runs.append(r)
                print(
                    json.dumps(
                        {
                            k: r.get(k)
                            for k in (
                                "name",
                                "achieved_offered_rate",
                                "events_per_s",
                                "latency_ms",
                                "late_outcomes",
                                "failure",
                            )
                        }
                    ),
                    flush=True,
                )
    suffix = f"-{args.label}" if args.label else ""
    report = {
        **header,
        "live_capacity_events_per_s": tops[variants[0][0]],
        "live_capacity_by_variant": tops,
        "capacity_runs": maxima,
        "variants": {n: list(s) for n, _, s in variants},
        "revisions": list(roots) if len(roots) > 1 else [],
        "runs": [{k: v for k, v in r.items() if k not in ("vertices", "rss_series")} for r in runs],
    }
    write_json(ROOT / "docs" / "benchmarks" / f"load{suffix}.json", report)
    _plot_load(runs, ROOT / "docs" / "benchmarks" / f"latency-vs-load{suffix}.png")
    if args.summary_variant:
        chosen = [r for r in runs if r["variant"] == args.summary_variant]
        by_pct = {
            str(r["load_pct_of_max"]): {
                "offered": r["offered_rate"],
                "achieved": r.get("achieved_offered_rate"),
                **(r.get("latency_ms") or {}),
            }
            for r in chosen
        }
        _merge_summary(
            header,
            {
                "p99_latency_ms_at_80pct_load": by_pct.get("80", {}).get("p99"),
                "latency_load_pct": 80,
                "latency_by_load_pct": by_pct,
                "latency_live_capacity_events_per_s_20ms": tops[args.summary_variant],
            },
        )
    return 0


def _plot_load(runs: list[dict], out: Path) -> None:
    """Latency (p50, p99) vs achieved offered load, one line pair per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in sorted({r["variant"] for r in runs}):
        pts = sorted(
            (
                (r.get("achieved_offered_rate") or r["offered_rate"], r.get("latency_ms") or {})
                for r in runs
                if r["variant"] == name and r.get("latency_ms")
            ),
            key=lambda pt: pt[0],  # repeated load points share a rate: never compare the dicts
        )
        if not pts:
            continue
        for q, style in (("p50", "--"), ("p99", "-")):
            ax.plot(
                [p[0] for p in pts], [p[1].get(q) or 0 for p in pts], style, marker="o", label=f"{name} {q}"
            )
    ax.set_xlabel("offered events/s (achieved)")
    ax.set_ylabel("occurred_at → provider, ms")
    ax.set_title("fanout p2, 20 ms providers: latency vs offered load")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _memory_spec(rate: int, minutes: int, sets: tuple[str, ...] = (), warmup_s: int = 60) -> Any:
    """Return the memory run: fanout p=2, 20 ms providers, ``rate`` live events/s for ``minutes``.

    The series starts at submission; :func:`_memory_summary` leaves out start-up and warm-up.
    """
    return _live_spec("fanout-p2-20ms-memory", rate, minutes * 60, warmup_s, sets)


def memory(args: argparse.Namespace) -> int:
    """Stack memory over ``--minutes`` at a fixed live rate (fanout p=2, 20 ms providers)."""
    from ops.benchrun import Stack, run_job, write_json

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, Stack(Path(tmp)) as stack:
        r = run_job(stack, _memory_spec(args.rate, args.minutes, tuple(args.set)))
        r["extra_sets"] = list(args.set)
    report = {
        **_header("memory"),
        "summary": _memory_summary(r),
        "run": {k: v for k, v in r.items() if k != "vertices"},
    }
    suffix = f"-{args.label}" if args.label else ""
    write_json(ROOT / "docs" / "benchmarks" / f"memory{suffix}.json", report)
    _plot_memory(r, ROOT / "docs" / "benchmarks", suffix)
    if report["summary"] is not None:
        _merge_summary(report, {"memory_run": report["summary"]})
    print(json.dumps(report["summary"], indent=2))
    return 0


def micro(args: argparse.Namespace) -> int:
    """Measure the Python operators' work per event without Flink (scripts/ops/micro.py)."""
    from ops import micro as m

    report = {**_header("micro"), **m.run(args.events, args.window, args.profile)}
    text = report.pop("profile", None)
    print(json.dumps(report, indent=2))
    if text:
        print(text)
    if args.out:
        from ops.benchrun import write_json

        write_json(ROOT / "docs" / "benchmarks" / f"micro-{args.out}.json", report)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the experiment and run it."""
    # SIGTERM (and SIGINT, which a background shell job ignores) end the run through the
    # context managers, so the run's Kafka, cluster and simulator are stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="experiment", required=True)
    iso = sub.add_parser("isolation", help="a slow channel vs the others")
    iso.add_argument("--rate", type=int, default=200, help="events/s offered")
    iso.add_argument("--seconds", type=int, default=20)
    iso.add_argument("--slow-ms", type=int, default=200)
    run = sub.add_parser("run", help="linear vs fanout, anchors, scaling, load (docs/benchmarks.md)")
    run.add_argument("--seconds", type=int, default=30, help="measured seconds per run")
    run.add_argument("--events", type=int, default=60_000, help="backlog per run")
    run.add_argument("--quick", action="store_true", help="a small smoke run (results-quick.*)")
    run.add_argument("--warmup", type=int, default=20, help="seconds after the first output, not measured")
    run.add_argument("--density", type=int, default=20_000, help="backlog's event-time rate (events/s)")
    run.add_argument("--dedup-ids", type=int, default=1_000_000, help="distinct ids for the state run")
    run.add_argument("--memory-minutes", type=int, default=10, help="length of the memory run (0: skip)")
    fr = sub.add_parser("front", help="the JVM front alone, legacy vs current SQL")
    fr.add_argument("--events", type=int, default=200_000)
    pr = sub.add_parser("profile", help="JFR + py-spy on the TaskManager while the job runs")
    pr.add_argument("--mode", default="fanout", choices=("fanout", "linear"))
    pr.add_argument("--parallelism", type=int, default=2)
    pr.add_argument("--latency-ms", type=int, default=0, help="every provider's latency")
    pr.add_argument("--no-provider", action="store_true", help="channel topics are the delivery")
    pr.add_argument("--events", type=int, default=100_000, help="backlog (must outlast the profile)")
    pr.add_argument("--seconds", type=int, default=20, help="profiled seconds")
    pr.add_argument("--density", type=int, default=1000, help="backlog's event-time rate (events/s)")
    pr.add_argument("--warmup", type=int, default=60, help="seconds after the first output before sampling")
    pr.add_argument("--label", default="fanout", help="output: docs/benchmarks/profile-<label>.{json,md}")
    pr.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    abp = sub.add_parser("ab", help="before/after: the same fanout run on several commits, alternating")
    abp.add_argument(
        "--revs", required=True, help="comma-separated git revisions, oldest first (HEAD = this checkout)"
    )
    abp.add_argument("--rounds", type=int, default=2, help="runs per variant (alternating order)")
    abp.add_argument("--latency-ms", type=int, default=0)
    abp.add_argument("--events", type=int, default=200_000)
    abp.add_argument("--density", type=int, default=20_000)
    abp.add_argument("--warmup", type=int, default=20)
    abp.add_argument("--seconds", type=int, default=30)
    abp.add_argument(
        "--variant", action="append", metavar="NAME:SECTION.KEY=VALUE,...", help="configurations (x each rev)"
    )
    abp.add_argument("--label", default="", help="output: docs/benchmarks/ab-<label>.json")
    tu = sub.add_parser("tune", help="state backend at 10^6 dedup ids; provider calls in flight at 200 ms")
    tu.add_argument("--dedup-ids", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    tu.add_argument("--backends", nargs="*", default=["hashmap", "rocksdb"], help="state backends to compare")
    tu.add_argument("--in-flight", type=int, nargs="+", default=[2, 8, 32])
    tu.add_argument("--warmup", type=int, default=20)
    tu.add_argument("--low-rate", type=int, default=20, help="events/s of the low-load latency runs")
    tu.add_argument("--seconds", type=int, default=30)
    me = sub.add_parser("memory", help="stack memory over time at a fixed live rate")
    me.add_argument("--minutes", type=int, default=10)
    me.add_argument("--rate", type=int, default=1300, help="live events/s (~50%% of max at 20 ms)")
    me.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    me.add_argument("--label", default="", help="output: docs/benchmarks/memory-<label>.{json,png}")
    lo = sub.add_parser("load", help="latency vs offered load at 20 ms providers (the knee)")
    lo.add_argument("--max", type=int, default=0, help="live capacity in events/s at 20 ms (0: measure it)")
    lo.add_argument(
        "--start-density", type=int, default=2000, help="first backlog density of the capacity search"
    )
    lo.add_argument("--max-iterations", type=int, default=4, help="capacity search runs at most")
    lo.add_argument("--pcts", type=int, nargs="+", default=[25, 50, 80, 100])
    lo.add_argument("--seconds", type=int, default=30)
    lo.add_argument("--warmup", type=int, default=20)
    lo.add_argument(
        "--variant", action="append", metavar="NAME:SECTION.KEY=VALUE,...", help="configurations to compare"
    )
    lo.add_argument("--summary-variant", default="", help="merge this variant's figures into summary.json")
    lo.add_argument(
        "--revs",
        default="",
        help="comma-separated git revisions to compare at --max (default: this checkout)",
    )
    lo.add_argument(
        "--label", default="", help="output: docs/benchmarks/load-<label>.json, latency-vs-load-<label>.png"
    )
    mi = sub.add_parser("micro", help="the Python operators' work per event, without Flink")
    mi.add_argument("--events", type=int, default=20_000)
    mi.add_argument("--window", type=int, default=1667, help="events per window batch (20k/s over 12 keys)")
    mi.add_argument("--profile", action="store_true", help="cProfile, top 25 by own time")
    mi.add_argument("--out", default="", help="write docs/benchmarks/micro-<out>.json")
    args = parser.parse_args(argv)
    experiments = {
        "micro": micro,
        "load": load,
        "memory": memory,
        "isolation": isolation,
        "run": divergence,
        "front": front,
        "profile": profile,
        "ab": ab,
        "tune": tune,
    }
    return experiments[args.experiment](args)


if __name__ == "__main__":
    sys.exit(main())
