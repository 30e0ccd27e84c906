"""The README's first command: run the main job on real data and say what happened.

Starts (or reuses) the local Kafka broker and Flink cluster, produces generated events,
submits the job with ``flink run``, reads its committed output and prints a summary.
Kafka and the cluster keep running afterwards so the finished job can be inspected in the
Flink UI; ``scripts/demo stop`` stops both (only what these scripts started).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from ops.cluster import LocalFlinkCluster, saved_rest_port
from ops.cluster import default_home as cluster_home
from ops.kafka import LocalKafka
from ops.kafka import default_home as kafka_home
from ops.kafka_io import consume_all, produce
from ops.paths import ROOT
from ops.proc import StackError, free_port, port_in_use
from ops.provider_sim import ProviderSim, SimClient

CHANNELS = ("email", "sms", "push")


def _port(home_file: Path, preferred: int) -> int:
    if home_file.exists():
        return int(home_file.read_text())
    return preferred if not port_in_use(preferred) else free_port()


def stack() -> tuple[LocalKafka, LocalFlinkCluster]:
    """Return the demo's broker and cluster handles (the same ones scripts/kafka|cluster use)."""
    kafka = LocalKafka(home=kafka_home(), port=_port(kafka_home() / "port", 9092))
    home = cluster_home()
    rest_port = saved_rest_port(home, 8081 if not port_in_use(8081) else free_port())
    cluster = LocalFlinkCluster(home=home, rest_port=rest_port)
    return kafka, cluster


def _submit(cluster: LocalFlinkCluster, job: str, sets: list[str]) -> tuple[str, float]:
    args = ["run", "-py", str(ROOT / "jobs" / job), "-pyfs", f"{ROOT / 'jobs'},{ROOT / 'udfs'}"]
    for item in sets:
        args += ["--set", item]
    t0 = time.monotonic()
    result = cluster.run(*args)
    if result.returncode != 0:
        text = result.stdout + result.stderr
        cut = text.find("Traceback")
        print(text[cut : cut + 4000] if cut >= 0 else text[-3000:], file=sys.stderr)
        raise StackError("the job failed; its output is above and the cluster logs are in .run/flink/log")
    job_id = next((line.split()[-1] for line in result.stdout.splitlines() if "JobID" in line), "?")
    return job_id, time.monotonic() - t0


def run(events: int, seed: int) -> int:
    """Run the fan-out job on generated events end to end and print its summary."""
    from udfs.generator import generate_events

    kafka, cluster = stack()
    t0 = time.monotonic()
    print(f"demo: starting Kafka on {kafka.bootstrap} ...", flush=True)
    kafka.start()
    print(f"demo: starting the Flink cluster (UI {cluster.rest_url}) ...", flush=True)
    cluster.start()
    run_id = time.strftime("%Y%m%d-%H%M%S")
    base = f"demo-{run_id}"
    topics = {
        "events": f"{base}.events",
        "rules": f"{base}.rules",
        "outcomes": f"{base}.outcomes",
        "dlq": f"{base}.dlq",
        "metrics": f"{base}.metrics",
        **{ch: f"{base}.{ch}" for ch in CHANNELS},
    }
    kafka.create_topics(list(topics.values()), partitions=2)
    # The providers: the shipped simulator, in this process for the demo's lifetime, with a
    # 5% transient error rate per message so that retries (and idempotency) show up.
    sim = ProviderSim(str(ROOT / "conf" / "providers.yaml"), ROOT / ".run" / f"{base}-ledger.db", seed=seed)
    (ROOT / ".run").mkdir(exist_ok=True)
    sim.start("127.0.0.1", 0)
    admin = SimClient(sim.url)
    for ch in CHANNELS:
        admin.set_behaviour(ch, {"error_rate": 0.05})
    print(f"demo: provider simulator on {sim.url} (5% transient errors)", flush=True)
    # event times end "now", at 1,000 events/s, so occurred->delivered latency means something
    records = list(generate_events(events, seed=seed, start_ms=int(time.time() * 1000) - events))
    produce(kafka.bootstrap, topics["events"], records)
    print(
        f"demo: produced {len(records)} events to {topics['events']}; submitting the fan-out job", flush=True
    )
    try:
        job_id, job_s = _submit(
            cluster,
            "fanout.py",
            [
                f"kafka.bootstrap={kafka.bootstrap}",
                "kafka.bounded=true",
                f"kafka.group_id={base}",
                f"kafka.transactional_id_prefix={base}",
                *(f"topics.{k}={v}" for k, v in topics.items() if k not in CHANNELS),
                f"topics.channel_prefix={base}.",
                "job.parallelism=2",
                "job.checkpoint_interval_ms=1000",
                f"delivery.provider_url={sim.url}",
            ],
        )
        ledger = admin.ledger()
        provider = admin.stats()["channels"]
    finally:
        sim.stop()
    out = {
        k: [json.loads(v) for v in consume_all(kafka.bootstrap, t)]
        for k, t in topics.items()
        if k != "events"
    }
    distinct = len(set(records))
    outcomes = out["outcomes"]
    reasons = Counter(d["reason"] for d in out["dlq"])
    late = sum(1 for o in outcomes if o["late"])
    status = Counter(line["status"] for o in outcomes for line in o["channels"].values())
    latencies = sorted(
        line["latency_ms"]
        for o in outcomes
        for line in o["channels"].values()
        if line.get("latency_ms") is not None
    )
    print()
    print("== notification fan-out: Kafka -> validate/dedup/route -> region x channel -> fan-in ==")
    print(f"  events in          {len(records)} on {topics['events']}")
    print(f"  duplicates dropped {len(records) - distinct} (same event_id within the dedup TTL)")
    print(f"  dead-lettered      {len(out['dlq'])} {dict(reasons)}")
    print(f"  outcomes           {len(outcomes)} (one per valid event; {late} marked late)")
    print(f"  branch statuses    {dict(status)}")
    for ch in CHANNELS:
        batches = out[ch]
        msgs = sum(len(b["messages"]) for b in batches)
        print(f"  {ch:<18} {msgs} messages in {len(batches)} delivery records -> {topics[ch]}")
    accepted = Counter(row["channel"] for row in ledger for _ in row["event_ids"])
    keys = [(row["channel"], row["idempotency_key"]) for row in ledger]
    retried = sum(1 for row in ledger if (row.get("attempts") or 1) > 1)
    errors = sum(sum(c["errors"].values()) for c in provider.values())
    print(
        f"  at the providers   {sum(accepted.values())} accepted {dict(accepted)}; {errors} transient "
        f"errors retried, {retried} messages needed >1 attempt; accepted twice: {len(keys) - len(set(keys))}"
    )
    if latencies:
        p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
        print(f"  occurred->delivered p50 {p(0.5)} ms, p99 {p(0.99)} ms (events produced before job start)")
    ok = len(outcomes) + len(out["dlq"]) == distinct
    print(f"  nothing lost       {'yes' if ok else 'NO'}: outcomes + DLQ = distinct inputs ({distinct})")
    once = status.get("delivered", 0) == sum(accepted.values()) and len(keys) == len(set(keys))
    print(f"  exactly once       {'yes' if once else 'NO'}: delivered branches = provider acceptances")
    ok = ok and once
    print(
        f"  job                {job_id}, {job_s:.1f} s submit to finish; "
        f"demo total {time.monotonic() - t0:.1f} s"
    )
    print()
    print(f"Flink UI: {cluster.rest_url}/#/job/completed/{job_id}  (the job graph with its named operators)")
    print(f"Kafka:    {kafka.bootstrap}   (scripts/kafka topics)")
    print("Stop both with: scripts/demo stop")
    return 0 if ok else 1


def stop() -> int:
    """Stop the demo's cluster and broker (only ours, by pid file)."""
    kafka, cluster = stack()
    print("flink cluster stopped" if cluster.stop() else "flink cluster was not running")
    print("kafka stopped" if kafka.stop() else "kafka was not running")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``scripts/demo``."""
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.split("\n")[0])
    parser.add_argument("action", nargs="?", default="run", choices=["run", "stop"])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    try:
        if args.action == "stop":
            return stop()
        return run(args.events, args.seed)
    except StackError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
