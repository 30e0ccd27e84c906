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

from ops.cluster import LocalFlinkCluster
from ops.cluster import default_home as cluster_home
from ops.kafka import LocalKafka
from ops.kafka import default_home as kafka_home
from ops.kafka_io import consume_all, produce
from ops.paths import ROOT
from ops.proc import StackError, free_port, port_in_use


def _port(home_file: Path, preferred: int) -> int:
    if home_file.exists():
        return int(home_file.read_text())
    return preferred if not port_in_use(preferred) else free_port()


def stack() -> tuple[LocalKafka, LocalFlinkCluster]:
    """Return the demo's broker and cluster handles (the same ones scripts/kafka|cluster use)."""
    kafka = LocalKafka(home=kafka_home(), port=_port(kafka_home() / "port", 9092))
    cluster = LocalFlinkCluster(home=cluster_home(), rest_port=_port(cluster_home() / "rest-port", 8081))
    return kafka, cluster


def run(events: int, seed: int) -> int:
    """Run the demo end to end and print its summary."""
    from udfs.generator import generate_events

    kafka, cluster = stack()
    t0 = time.monotonic()
    print(f"demo: starting Kafka on {kafka.bootstrap} ...", flush=True)
    kafka.start()
    print(f"demo: starting the Flink cluster (UI {cluster.rest_url}) ...", flush=True)
    cluster.start()
    run_id = time.strftime("%Y%m%d-%H%M%S")
    topic_in, topic_out = f"notifications.events.demo-{run_id}", f"notifications.roundtrip.demo-{run_id}"
    kafka.create_topics([topic_in, topic_out], partitions=2)
    records = list(generate_events(events, seed=seed))
    produce(kafka.bootstrap, topic_in, records)
    with_user = 0
    users: Counter[str] = Counter()
    for raw in records:
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("user_id"):
            with_user += 1
            users[str(obj["user_id"])] += 1
    print(f"demo: produced {len(records)} events to {topic_in}; submitting the round-trip job", flush=True)
    t_job = time.monotonic()
    result = cluster.run(
        "run",
        "-py",
        str(ROOT / "jobs" / "roundtrip.py"),
        "-pyfs",
        f"{ROOT / 'jobs'},{ROOT / 'udfs'}",
        "--set",
        f"kafka.bootstrap={kafka.bootstrap}",
        "--set",
        "kafka.bounded=true",
        "--set",
        f"kafka.group_id=demo-{run_id}",
        "--set",
        f"kafka.transactional_id_prefix=demo-{run_id}",
        "--set",
        f"topics.events={topic_in}",
        "--set",
        f"topics.roundtrip={topic_out}",
        "--set",
        "job.parallelism=2",
        "--set",
        "job.checkpoint_interval_ms=1000",
    )
    job_s = time.monotonic() - t_job
    if result.returncode != 0:
        print(result.stdout[-2000:] + result.stderr[-2000:], file=sys.stderr)
        raise StackError("the job failed; its output is above and the cluster logs are in .run/flink/log")
    job_id = next((line.split()[-1] for line in result.stdout.splitlines() if "JobID" in line), "?")
    out = [json.loads(v) for v in consume_all(kafka.bootstrap, topic_out, expect=with_user, timeout_s=60)]
    max_seq = max((r["seq"] for r in out), default=0)
    print()
    print("== round trip: Kafka -> PyFlink keyed state -> transactional Kafka (exactly-once) ==")
    print(f"  input topic        {topic_in}: {len(records)} events")
    print(f"  without a user_id  {len(records) - with_user} (malformed or incomplete; skipped by this job)")
    print(f"  output topic       {topic_out}: {len(out)} records read with read_committed")
    print(f"  distinct users     {len(users)}; most events for one user: {max_seq}")
    exact = len(out) == with_user and sorted(Counter(r["user_id"] for r in out).items()) == sorted(
        users.items()
    )
    print(f"  exactly once       {'yes' if exact else 'NO'}: every event with a user_id appears once")
    print(
        f"  job                {job_id}, ran {job_s:.1f} s (submit to finish); "
        f"demo total {time.monotonic() - t0:.1f} s"
    )
    print()
    print(f"Flink UI: {cluster.rest_url}  (the finished job is under 'Completed Jobs')")
    print(f"Kafka:    {kafka.bootstrap}   (scripts/kafka topics)")
    print("Stop both with: scripts/demo stop")
    return 0 if exact else 1


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
    parser.add_argument("--events", type=int, default=500)
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
