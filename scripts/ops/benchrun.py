"""The divergence benchmark: linear vs fanout, anchors, scaling (``scripts/bench run``).

Everything is measured from the outside: output topics are created with
``message.timestamp.type=LogAppendTime`` so each committed output record carries the time
the broker received it; the provider simulator's ledger carries the time each delivery was
accepted; memory and CPU come from ``/proc`` of the cluster's JVMs (and Python workers).

One run = a fresh topic set with a pre-produced backlog (or a paced producer), one job on
the local standalone cluster, measured for ``--seconds`` after its first output, then
cancelled. Throughput = outputs in the measured interval / its length.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from ops import submit as ops_submit
from ops.cluster import LocalFlinkCluster
from ops.kafka import LocalKafka
from ops.kafka_io import fresh_name, produce
from ops.paths import JAR_DIR, ROOT
from ops.proc import free_port
from ops.provider_sim import SimClient

CHANNELS = ("email", "sms", "push")
APPEND_TIME = {"message.timestamp.type": "LogAppendTime"}


# --- the stack -------------------------------------------------------------------------------
class SimProcess:
    """The provider simulator as its own process (``scripts/provider-sim``), stopped by pid.

    Embedded in the benchmark's process it shared one GIL with the paced producer, and on 2
    cores that pair could not offer more than ~1,340 live events/s while the job ran
    (docs/benchmarks.md, "Known issues").
    """

    def __init__(self, work: Path) -> None:
        self.work = work
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the simulator on a free loopback port; wait until it answers."""
        self.work.mkdir(parents=True, exist_ok=True)
        port_file = self.work / "sim.port"
        port_file.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'scripts'}"}
        args = [sys.executable, "-m", "ops.provider_sim", "--port", "0", "--port-file", str(port_file)]
        args += ["--config", str(ROOT / "conf" / "providers.yaml"), "--ledger", str(self.work / "ledger.db")]
        args += ["--seed", "1", "--log-level", "WARNING"]
        with (self.work / "sim.log").open("ab") as log:
            self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"provider-sim exited ({self.proc.returncode}); see {self.work / 'sim.log'}"
                )
            text = port_file.read_text().strip() if port_file.exists() else ""
            if text:
                self.port = int(text)
                with contextlib.suppress(Exception):
                    SimClient(self.url, timeout_s=2).health()
                    return
            time.sleep(0.1)
        raise RuntimeError("provider-sim did not answer within 30 s")

    @property
    def pid(self) -> int:
        """The simulator's pid, 0 when not running."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else 0

    def stop(self) -> None:
        """Stop the process this object started."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@dataclass
class Stack:
    """Kafka, a standalone Flink cluster and the provider simulator, in ``work``."""

    work: Path
    kafka: LocalKafka = field(init=False)
    cluster: LocalFlinkCluster = field(init=False)
    sim: SimProcess = field(init=False)

    def __enter__(self) -> Stack:
        self.kafka = LocalKafka(home=self.work / "kafka", port=free_port(), heap="1g")
        self.cluster = LocalFlinkCluster(home=self.work / "flink", rest_port=free_port(), slots=16)
        self.sim = SimProcess(self.work / "sim")
        self.kafka.start()
        try:
            self.cluster.start()
            self.sim.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.sim.stop()
        with contextlib.suppress(Exception):
            self.cluster.stop()
        with contextlib.suppress(Exception):
            self.kafka.stop()


# --- workload --------------------------------------------------------------------------------
def make_events(n: int, seed: int, start_ms: int, rate_per_s: float, label: str) -> list[bytes]:
    """Seeded events (no duplicates or invalid ones: those are measured by the test suite)."""
    from udfs.generator import generate_events

    out = []
    for i, raw in enumerate(
        generate_events(
            n, seed, dup_rate=0.0, bad_rate=0.0, late_rate=0.0, start_ms=start_ms, rate_per_s=rate_per_s
        )
    ):
        ev = orjson.loads(raw)
        ev["event_id"] = f"{label}-{i}"
        out.append(orjson.dumps(ev))
    return out


def _committed(bootstrap: str, topic: str) -> Iterator[ConsumerRecord]:
    """Every committed record of ``topic``, from the beginning to the end offsets seen now."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False, group_id=None
    )
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        while any(consumer.position(tp) < end[tp] for tp in parts):
            for recs in consumer.poll(timeout_ms=1000, max_records=50_000).values():
                yield from recs
    finally:
        consumer.close()


def timestamps(bootstrap: str, topic: str) -> list[int]:
    """Broker append times (ms) of every committed record of ``topic``."""
    return [r.timestamp for r in _committed(bootstrap, topic)]


def late_outcomes(bootstrap: str, topic: str, since_ms: int = 0) -> int:
    """How many committed outcomes appended at or after ``since_ms`` say ``"late": true``."""
    return sum(
        1 for r in _committed(bootstrap, topic) if r.timestamp >= since_ms and json.loads(r.value)["late"]
    )


def end_offset_sum(bootstrap: str, topic: str) -> int:
    """Count the records in ``topic``, uncommitted included (a cheap progress probe)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        return sum(consumer.end_offsets(parts).values())
    finally:
        consumer.close()


# --- resources -------------------------------------------------------------------------------
def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def parse_proc_stat_cpu(text: str) -> dict[str, int]:
    """Machine-wide CPU ticks from ``/proc/stat``'s first line: busy, idle and steal.

    busy = user + nice + system + irq + softirq + steal (guest time is already inside user);
    idle = idle + iowait. Steal is time a hypervisor gave another tenant: a shared machine.
    """
    for line in text.splitlines():
        if line.startswith("cpu "):
            f = [int(x) for x in line.split()[1:]]
            f += [0] * (8 - len(f))
            user, nice, system, idle, iowait, irq, softirq, steal = f[:8]
            return {
                "busy": user + nice + system + irq + softirq + steal,
                "idle": idle + iowait,
                "steal": steal,
            }
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


def _machine_ticks() -> dict[str, int]:
    try:
        return parse_proc_stat_cpu(Path("/proc/stat").read_text())
    except (OSError, ValueError):
        return {"busy": 0, "idle": 0, "steal": 0}


def cpu_split(
    roles_before: dict[str, dict[int, int]],
    roles_after: dict[str, dict[int, int]],
    machine_before: dict[str, int],
    machine_after: dict[str, int],
    wall_s: float,
    tick_hz: int,
) -> dict[str, Any]:
    """Cores used over ``wall_s``: per role (each a process tree), the machine, and the rest.

    ``other`` is the machine's busy time not in any role: the kernel's own work, processes
    this run did not start, other tenants. Whether the machine, not the job, is the limit
    shows as ``machine`` close to the number of cores.
    """
    if wall_s <= 0:
        return {}

    def cores(ticks: float) -> float:
        return round(ticks / tick_hz / wall_s, 2)

    ticks = {role: _ticks_between(roles_before.get(role, {}), after) for role, after in roles_after.items()}
    busy = machine_after["busy"] - machine_before["busy"]
    return {
        "by_role": {role: cores(t) for role, t in ticks.items()},
        "machine": cores(busy),
        "steal": cores(machine_after["steal"] - machine_before["steal"]),
        "other": cores(max(0, busy - sum(ticks.values()))),
        "cores": os.cpu_count(),
    }


def _ticks_between(before: dict[int, int], after: dict[int, int]) -> int:
    """Ticks a process tree used between two samples (processes started since count from 0)."""
    return sum(t - before.get(p, 0) for p, t in after.items())


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out.extend(int(c) for c in (task / "children").read_text().split())
    return out


def _descendants(pid: int) -> list[int]:
    """Return every process below ``pid``.

    Process mode's Python workers are the TaskManager's great-grandchildren (TaskManager ->
    pyflink-udf-runner.sh -> beam_boot -> SDK worker), so direct children are not enough.
    """
    out: list[int] = []
    todo = _children(pid)
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(_children(child))
    return out


def _tree_cpu_ticks(pid: int) -> dict[int, int]:
    """CPU ticks (user + system) of ``pid`` and of each live descendant, by pid."""
    return {p: _cpu_ticks(p) for p in [pid, *_descendants(pid)]}


def _cpu_ticks_since(before: dict[int, int], pid: int) -> int:
    """Ticks the tree under ``pid`` used since ``before`` (processes started since count from 0)."""
    return _ticks_between(before, _tree_cpu_ticks(pid))


class Sampler(threading.Thread):
    """Samples RSS of the given processes (and all their descendants) every 0.5 s; keeps the peak."""

    def __init__(self, pids: dict[str, int], series_every_s: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peak_kb = 0
        self.peak_by_role: dict[str, int] = {}
        # (seconds since start, total RSS MB, by role) every `series_every_s`: flat or growing?
        self.series: list[tuple[float, int, dict[str, int]]] = []
        self._every = series_every_s
        self._halt = threading.Event()

    def run(self) -> None:
        """Sample until stopped."""
        t0 = time.monotonic()
        next_point = 0.0
        while not self._halt.wait(0.5):
            total = 0
            roles = {}
            for role, pid in self.pids.items():
                kb = _rss_kb(pid) + sum(_rss_kb(c) for c in _descendants(pid))
                self.peak_by_role[role] = max(self.peak_by_role.get(role, 0), kb)
                roles[role] = kb // 1024
                total += kb
            self.peak_kb = max(self.peak_kb, total)
            now = time.monotonic() - t0
            if now >= next_point:
                self.series.append((round(now, 1), total // 1024, roles))
                next_point = now + self._every

    def stop(self) -> None:
        """Stop sampling."""
        self._halt.set()
        self.join(timeout=2)


def _pcts(values: list[int]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    s = sorted(values)
    pick = lambda q: float(s[min(len(s) - 1, int(q * len(s)))])  # noqa: E731
    return {"p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99)}


# --- one job run -----------------------------------------------------------------------------
@dataclass
class RunSpec:
    """One measured run."""

    name: str
    job: str = "fanout"  # fanout | linear | passthrough | dedup (jobs/dedup_front.py)
    parallelism: int = 2
    latency_ms: int = 0  # every provider's fixed latency
    provider: bool = True
    events: int = 60_000  # backlog size (rate 0) or events to send (paced)
    rate: int = 0  # 0 = backlog (max throughput); > 0 = paced live events/s (latency)
    seconds: int = 30
    # The backlog's event-time rate: events per second of occurred_at. It sets the window
    # batch size (a 1 s window holds `density` events), as live traffic at that rate would.
    density: int = 1000
    distinct_ids: int = 0  # > 0: unique ids for the dedup scaling runs
    # Seconds after the first output before the measured interval starts (JIT warm-up: on
    # this 2-core machine C2 keeps compiling for about a minute after a job starts).
    warmup_s: int = 0
    max_in_flight: int = 16  # provider calls in flight per branch subtask (the "async capacity")
    root: str = ""  # the checkout to submit the job from ("": this one; see `scripts/bench ab`)
    extra_sets: tuple[str, ...] = ()


def run_job(
    stack: Stack, spec: RunSpec, during: Callable[[dict[str, Any]], dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Run one job (see :func:`_run_job`); a run that raises is recorded as failed, not fatal."""
    try:
        return _run_job(stack, spec, during)
    except Exception as exc:
        import traceback

        return _failed(spec, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}")


def _failed(spec: RunSpec, why: str) -> dict[str, Any]:
    """Return the result of a run that produced no figures, and why."""
    return {
        "name": spec.name,
        "job": spec.job,
        "parallelism": spec.parallelism,
        "provider_latency_ms": spec.latency_ms,
        "offered_rate": spec.rate or "backlog",
        "events_per_s": None,
        "failure": why,
    }


def _run_job(
    stack: Stack, spec: RunSpec, during: Callable[[dict[str, Any]], dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Produce the workload, run one job, measure, cancel; return the figures.

    ``during({"pids", "cluster", "job_id"})``, if given, runs once the warm-up is over (e.g.
    a profiler sampling the TaskManager); what it returns is kept under ``result["during"]``.
    """
    kafka, cluster, sim = stack.kafka, stack.cluster, stack.sim
    admin = SimClient(sim.url, timeout_s=600)  # a 10-minute run's ledger is ~10^6 rows
    admin.reset()
    for ch in CHANNELS:
        admin.set_behaviour(ch, {"latency": {"model": "fixed", "ms": spec.latency_ms}})
    tag = fresh_name(spec.name.replace(" ", "-"))
    topics = {k: f"{tag}.{k}" for k in ("events", "rules", "outcomes", "dlq", "metrics", "roundtrip")}
    kafka.create_topics([topics["events"], topics["rules"]], partitions=2)
    kafka.create_topics(
        [topics[k] for k in ("outcomes", "dlq", "metrics", "roundtrip")] + [f"{tag}.{ch}" for ch in CHANNELS],
        partitions=2,
        config=APPEND_TIME,
    )
    policy = stack.work / f"{tag}-delivery.yaml"
    policy.write_text(yaml.safe_dump({"defaults": {"max_in_flight": spec.max_in_flight}}))
    sets = [
        f"kafka.bootstrap={kafka.bootstrap}",
        f"kafka.group_id=g-{tag}",
        f"kafka.transactional_id_prefix=tx-{tag}",
        *(f"topics.{k}={v}" for k, v in topics.items()),
        f"topics.channel_prefix={tag}.",
        f"job.mode={'linear' if spec.job == 'linear' else 'fanout'}",
        f"job.name=bench-{spec.name}",
    ]
    if spec.provider and spec.job != "passthrough":
        sets += [f"delivery.provider_url={sim.url}", f"delivery.policies_file={policy}"]
    sets += spec.extra_sets  # last: a variant's settings win over the run's defaults
    occurred: dict[str, int] = {}
    if spec.rate == 0:
        start_ms = int(time.time() * 1000) - 3_600_000
        backlog = make_events(spec.events, 7, start_ms, float(spec.density), tag)
        produce(kafka.bootstrap, topics["events"], backlog, flush_timeout_s=600)
    job_file = {"passthrough": "passthrough", "dedup": "dedup_front"}.get(spec.job, "fanout")
    if spec.distinct_ids:  # the state-scaling runs: every event id distinct, dense in event time
        start_ms = int(time.time() * 1000) - 3_600_000
        backlog = make_events(spec.distinct_ids, 7, start_ms, float(spec.density), tag)
        produce(kafka.bootstrap, topics["events"], backlog, flush_timeout_s=600)
        del backlog
    # the previous run's slots must be free again (a cancelled job releases them late)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        overview = cluster.rest("/overview")
        if overview.get("slots-available") == overview.get("slots-total") and not overview.get(
            "jobs-running"
        ):
            break
        time.sleep(1)
    t_submit = time.monotonic()
    sub = ops_submit.submit(
        cluster,
        job_file,
        spec.parallelism,
        None,
        None,
        tuple(sets),
        root=Path(spec.root) if spec.root else ROOT,
    )
    try:
        ops_submit.wait_state(cluster, sub.job_id, {"RUNNING"})
    except Exception as exc:
        return _failed(spec, f"did not start: {exc}: {job_failure(cluster, sub.job_id)}")
    pids = {
        "jobmanager": cluster.pids().get("jobmanager", 0),
        "taskmanager": cluster.pids().get("taskmanager", 0),
        "kafka": kafka.pid() or 0,
    }
    sampler = Sampler({k: v for k, v in pids.items() if v})
    sampler.start()
    out_topic = topics["roundtrip"] if spec.job in ("passthrough", "dedup") else topics["outcomes"]
    producer_thread = None
    achieved: dict[str, float] = {}
    stop_producing = threading.Event()
    if spec.rate > 0:
        producer_thread = threading.Thread(
            target=_paced,
            args=(kafka, topics["events"], spec, tag, occurred, achieved, stop_producing),
            daemon=True,  # an interrupted run must not wait for it at exit
        )
        producer_thread.start()
    # wait for the first output (start-up excluded), then measure for `seconds`
    deadline = time.monotonic() + 180
    while end_offset_sum(kafka.bootstrap, out_topic) == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    t_first = time.monotonic()
    startup_s = t_first - t_submit
    time.sleep(spec.warmup_s)
    # live runs always start measuring here: events sent while the job was still starting
    # carry its start-up time, which is not the pipeline's latency
    measure_from_ms = int(time.time() * 1000) if spec.warmup_s or spec.rate else 0
    t_measure = time.monotonic()
    during_result = during({"pids": pids, "cluster": cluster, "job_id": sub.job_id}) if during else None
    cpu_roles = {**{k: v for k, v in pids.items() if v}, "simulator": sim.pid}

    def roles_ticks() -> dict[str, dict[int, int]]:
        ticks = {role: _tree_cpu_ticks(pid) for role, pid in cpu_roles.items() if pid}
        # this process alone (the paced producer, the output readers): its children are the stack
        ticks["harness"] = {os.getpid(): _cpu_ticks(os.getpid())}
        return ticks

    roles_cpu0 = roles_ticks()
    machine0 = _machine_ticks()
    t_cpu0 = time.monotonic()
    growth: list[dict[str, Any]] = []
    while time.monotonic() - t_measure < spec.seconds:
        if spec.distinct_ids:
            # until a checkpoint completed after the dedup had seen every id
            growth.append(_state_point(cluster, sub.job_id))
            full = [g for g in growth if g["dedup_records_in"] >= spec.distinct_ids]
            if full and growth[-1]["checkpoint_id"] != full[0]["checkpoint_id"]:
                break
            time.sleep(1.0)
            continue
        if spec.rate == 0 and end_offset_sum(kafka.bootstrap, out_topic) >= spec.events:
            break
        time.sleep(0.5)
    if producer_thread is not None:
        stop_producing.set()
        producer_thread.join()
        time.sleep(5)  # let the last windows close and deliver
    # Outputs become visible when the checkpoint after them completes: wait for one that was
    # triggered after the measured interval, or its tail would be aborted at cancel and the
    # rate undercounted (by up to an interval plus a checkpoint duration).
    _await_checkpoint_after(cluster, sub.job_id, int(time.time() * 1000), timeout_s=90)
    checkpoints = cluster.rest(f"/jobs/{sub.job_id}/checkpoints")
    by_vertex = _checkpoint_by_vertex(cluster, sub.job_id, checkpoints)
    vertices = ops_submit.status(cluster, sub.job_id).get("vertices", [])
    roles_cpu1 = roles_ticks()
    machine1 = _machine_ticks()
    wall_s = time.monotonic() - t_cpu0
    cpu = cpu_split(roles_cpu0, roles_cpu1, machine0, machine1, wall_s, os.sysconf("SC_CLK_TCK"))
    state = cluster.rest(f"/jobs/{sub.job_id}").get("state")
    failure = None
    if state != "RUNNING":  # record why instead of measuring a dead job silently
        failure = job_failure(cluster, sub.job_id)
    with contextlib.suppress(Exception):
        ops_submit.cancel(cluster, sub.job_id)
    with contextlib.suppress(Exception):
        ops_submit.wait_state(cluster, sub.job_id, {"CANCELED", "FAILED", "FINISHED"}, timeout_s=60)
    sampler.stop()
    crash = _taskmanager_crash(cluster, pids["taskmanager"])
    ts = sorted(timestamps(kafka.bootstrap, out_topic))
    result: dict[str, Any] = {
        "name": spec.name,
        "job": spec.job,
        "parallelism": spec.parallelism,
        "provider_latency_ms": spec.latency_ms if spec.provider else None,
        "offered_rate": spec.rate or "backlog",
        "achieved_offered_rate": achieved.get("events_per_s"),
        "startup_s": round(startup_s, 1),
        "job_state_at_end": state,
        "failure": failure,
        "outputs": len(ts),
        "events_per_s": _rate([t for t in ts if t >= measure_from_ms], spec.seconds),
        "warmup_s": spec.warmup_s,
        "tm_cpu_cores": cpu.get("by_role", {}).get("taskmanager"),
        # where the machine's cores went over the same interval (is the machine the limit?)
        "cpu_cores": cpu,
        "peak_rss_mb": round(sampler.peak_kb / 1024),
        "peak_rss_mb_by_role": {k: round(v / 1024) for k, v in sampler.peak_by_role.items()},
        "rss_series": sampler.series,
        "density": spec.density if spec.rate == 0 else spec.rate,
        "checkpoint": {**_checkpoint(checkpoints), "state_bytes_by_vertex": by_vertex},
        "vertices": [{"name": v["name"], "parallelism": v["parallelism"]} for v in vertices],
    }
    if during_result is not None:
        result["during"] = during_result
    if crash is not None:
        result["taskmanager_crash"] = crash
    if growth:
        result["state_growth"] = growth
    if spec.job in ("fanout", "linear"):
        # events that took the late path (one single-record batch each): a watermark ahead of
        # the events still unread shows here
        result["late_outcomes"] = late_outcomes(kafka.bootstrap, out_topic, measure_from_ms)
    if spec.job != "passthrough" and spec.provider:
        rows = admin.ledger()
        received = sorted(r["received_at_ms"] for r in rows for _ in r["event_ids"])
        result["deliveries"] = len(received)
        result["deliveries_per_s"] = _rate([t for t in received if t >= measure_from_ms], spec.seconds)
        if occurred:
            pairs = [
                (occurred[e], r["received_at_ms"]) for r in rows for e in r["event_ids"] if e in occurred
            ]
            result["latency_ms"] = _pcts([done - sent for sent, done in pairs if sent >= measure_from_ms])
            # including the events sent while the job started (for comparison with older runs)
            result["latency_ms_incl_startup"] = _pcts([done - sent for sent, done in pairs])
    return result


def _await_checkpoint_after(cluster: LocalFlinkCluster, job_id: str, after_ms: int, timeout_s: float) -> bool:
    """Wait until a checkpoint triggered after ``after_ms`` (epoch ms) has completed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            latest = (cluster.rest(f"/jobs/{job_id}/checkpoints").get("latest") or {}).get("completed") or {}
        except Exception:
            return False
        if (latest.get("trigger_timestamp") or 0) >= after_ms:
            return True
        if cluster.rest(f"/jobs/{job_id}").get("state") != "RUNNING":
            return False
        time.sleep(0.5)
    return False


def _task_records_in(cluster: LocalFlinkCluster, job_id: str, prefix: str) -> int:
    """Sum the task-level ``<subtask>.numRecordsIn`` of the vertex whose name starts with ``prefix``."""
    for v in cluster.rest(f"/jobs/{job_id}").get("vertices", []):
        if not v["name"].startswith(prefix):
            continue
        ids = [m["id"] for m in cluster.rest(f"/jobs/{job_id}/vertices/{v['id']}/metrics")]
        wanted = [i for i in ids if i.split(".", 1)[-1] == "numRecordsIn" and i.split(".", 1)[0].isdigit()]
        if not wanted:
            return 0
        values = cluster.rest(f"/jobs/{job_id}/vertices/{v['id']}/metrics?get={','.join(wanted)}")
        return int(sum(float(m["value"]) for m in values))
    return 0


def _state_point(cluster: LocalFlinkCluster, job_id: str) -> dict[str, Any]:
    """Return the records the dedup has seen and the latest completed checkpoint's size and duration."""
    dedup = _task_records_in(cluster, job_id, "Deduplicate")
    latest = ((cluster.rest(f"/jobs/{job_id}/checkpoints").get("latest") or {}).get("completed")) or {}
    return {
        "t": round(time.monotonic(), 1),
        "dedup_records_in": int(dedup),
        "checkpoint_id": latest.get("id"),
        "checkpoint_size_bytes": latest.get("checkpointed_size", latest.get("state_size")),
        "checkpoint_full_size_bytes": latest.get("state_size"),
        "checkpoint_duration_ms": latest.get("end_to_end_duration"),
    }


def _taskmanager_crash(cluster: LocalFlinkCluster, pid: int) -> dict[str, Any] | None:
    """If the TaskManager died during the run, keep its crash summary and start a new one."""
    if not pid or cluster.pids().get("taskmanager") == pid:
        return None
    summary: list[str] = []
    for where in (cluster.home, cluster.log_dir, ROOT, Path.cwd()):
        for log in Path(where).glob(f"**/hs_err_pid{pid}.log"):
            lines = log.read_text(errors="replace").splitlines()
            summary = [ln for ln in lines[:60] if ln.startswith("#") and ln.strip("# ")][:25]
            break
        if summary:
            break
    cluster.restart_taskmanager()
    return {"pid": pid, "hs_err_summary": summary}


def job_failure(cluster: LocalFlinkCluster, job_id: str) -> str:
    """Return the first lines of a job's most recent exception (REST exception history)."""
    history = cluster.rest(f"/jobs/{job_id}/exceptions")
    entries = (history.get("exceptionHistory") or {}).get("entries") or []
    text = entries[0].get("stacktrace", "") if entries else history.get("root-exception") or ""
    return "\n".join(line for line in text.splitlines() if not line.strip().startswith("at "))[:1500]


def _rate(ts: list[int], seconds: int) -> float | None:
    """Return outputs per second over [first, min(first + seconds, last)]."""
    if len(ts) < 2:
        return None
    t0 = ts[0]
    window = [t for t in ts if t <= t0 + seconds * 1000]
    span = (window[-1] - t0) / 1000
    return round(len(window) / span, 1) if span > 0 else None


def _checkpoint_by_vertex(cluster: LocalFlinkCluster, job_id: str, c: dict[str, Any]) -> dict[str, int]:
    """State size per vertex in the latest completed checkpoint: what the checkpoint is made of."""
    latest = (c.get("latest") or {}).get("completed") or {}
    if not latest.get("id"):
        return {}
    try:
        names = {v["id"]: v["name"] for v in cluster.rest(f"/jobs/{job_id}").get("vertices", [])}
        detail = cluster.rest(f"/jobs/{job_id}/checkpoints/details/{latest['id']}")
    except Exception:
        return {}
    out = {}
    for vid, task in (detail.get("tasks") or {}).items():
        size = task.get("state_size", task.get("checkpointed_size")) or 0
        if size:
            out[names.get(vid, vid)[:60]] = size
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _checkpoint(c: dict[str, Any]) -> dict[str, Any]:
    latest = (c.get("latest") or {}).get("completed") or {}
    summary = c.get("summary") or {}
    dur = summary.get("end_to_end_duration") or {}
    return {
        "completed": (c.get("counts") or {}).get("completed"),
        "last_duration_ms": latest.get("end_to_end_duration"),
        "last_size_bytes": latest.get("checkpointed_size", latest.get("state_size")),
        "duration_ms_p50": dur.get("p50"),
        "duration_ms_max": dur.get("max"),
        "in_progress_share": checkpoint_share(c.get("history") or []),
    }


def checkpoint_share(history: list[dict[str, Any]]) -> float | None:
    """Share of the time a checkpoint was in progress, over the checkpoints REST still lists.

    With aligned checkpoints an operator holds back each input whose barrier came first until
    the barriers of all its inputs arrived; a share near 1 means the job is almost always
    aligning. ``history`` is REST's ``/checkpoints`` history (the last ten by default).
    """
    done = sorted(
        (h["trigger_timestamp"], h["end_to_end_duration"])
        for h in history
        if h.get("status") == "COMPLETED" and h.get("end_to_end_duration") is not None
    )
    if len(done) < 2:
        return None
    span = done[-1][0] + done[-1][1] - done[0][0]
    return round(sum(d for _, d in done) / span, 2) if span > 0 else None


def _paced(
    kafka: LocalKafka,
    topic: str,
    spec: RunSpec,
    tag: str,
    occurred: dict[str, int],
    achieved: dict[str, float],
    stop: threading.Event,
) -> None:
    """Produce live events at ``spec.rate``/s (occurred_at = now) in 100 ms steps.

    Stops when ``stop`` is set (the measured interval is over) or after ``spec.events``.

    ``achieved["events_per_s"]`` is what was actually sent per second (the offered rate is a
    goal: a producer that falls behind offers less, and its events carry send delay).
    """
    from kafka import KafkaProducer

    step = max(1, spec.rate // 10)
    sent = 0
    t0 = time.monotonic()
    seq = 0
    # one producer for the whole run: opening one per 100 ms step could not keep 1,300/s
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all", linger_ms=5)
    try:
        while sent < spec.events and not stop.is_set():
            now_ms = int(time.time() * 1000)
            batch = make_events(step, 11 + seq, now_ms, 1e9, f"{tag}-{seq}")
            for raw in batch:
                occurred[orjson.loads(raw)["event_id"]] = now_ms
                producer.send(topic, value=raw)
            producer.flush(timeout=30)
            sent += step
            seq += 1
            time.sleep(max(0.0, t0 + seq * 0.1 - time.monotonic()))
        achieved["events_per_s"] = round(sent / max(1e-9, time.monotonic() - t0), 1)
    finally:
        producer.close(timeout=10)


# --- anchors ---------------------------------------------------------------------------------
def plain_consumer(stack: Stack, latency_ms: int, seconds: int, events: int = 20_000) -> dict[str, Any]:
    """Run what a small team would write: one kafka-python loop, one HTTP call per (event, channel)."""
    from udfs.events import Event, ValidationLimits, parse_event
    from udfs.provider_client import ProviderClient
    from udfs.routing import RuleSet, address_for, decide, load_ruleset_file

    admin = SimClient(stack.sim.url)
    admin.reset()
    for ch in CHANNELS:
        admin.set_behaviour(ch, {"latency": {"model": "fixed", "ms": latency_ms}})
    topic = fresh_name("plain")
    stack.kafka.create_topics([topic])
    produce(
        stack.kafka.bootstrap,
        topic,
        make_events(events, 7, int(time.time() * 1000) - 3_600_000, 1000.0, topic),
    )
    rules = load_ruleset_file(str(ROOT / "conf" / "routing.yaml"))
    assert isinstance(rules, RuleSet), rules
    limits = ValidationLimits()
    client = ProviderClient(stack.sim.url, timeout_s=5)
    consumer = KafkaConsumer(
        topic, bootstrap_servers=stack.kafka.bootstrap, auto_offset_reset="earliest", group_id=f"g-{topic}"
    )
    done = 0
    seen: set[str] = set()
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < seconds and done < events:
            for recs in consumer.poll(timeout_ms=200).values():
                for rec in recs:
                    ev = parse_event(rec.value, limits)
                    if not isinstance(ev, Event) or ev.event_id in seen:
                        continue
                    seen.add(ev.event_id)
                    for ch in decide(ev, rules).channels:
                        msg = {
                            "to": address_for(ev, ch, rules),
                            "event_id": ev.event_id,
                            "payload": ev.payload,
                        }
                        for _ in range(5):
                            r = client.send(ch, msg, f"{ev.event_id}:{ch}")
                            if r.status is not None and r.status < 500 and r.status != 429:
                                break
                    done += 1
    finally:
        consumer.close()
        client.close()
    elapsed = time.monotonic() - t0
    return {
        "name": f"plain-consumer-{latency_ms}ms",
        "provider_latency_ms": latency_ms,
        "events": done,
        "events_per_s": round(done / elapsed, 1),
    }


def kafka_perf(stack: Stack, records: int = 500_000, size: int = 450) -> dict[str, Any]:
    """Measure the broker's own limit with Kafka's producer/consumer perf tools (same jars)."""
    topic = fresh_name("perf")
    stack.kafka.create_topics([topic])
    cp = f"{JAR_DIR / 'kafka'}/*"
    prod = subprocess.run(
        [
            "java",
            "-Xmx512m",
            "-cp",
            cp,
            "org.apache.kafka.tools.ProducerPerformance",
            "--topic",
            topic,
            "--num-records",
            str(records),
            "--record-size",
            str(size),
            "--throughput",
            "-1",
            "--producer-props",
            f"bootstrap.servers={stack.kafka.bootstrap}",
            "acks=all",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    cons = subprocess.run(
        [
            "java",
            "-Xmx512m",
            "-cp",
            cp,
            "org.apache.kafka.tools.ConsumerPerformance",
            "--topic",
            topic,
            "--messages",
            str(records),
            "--bootstrap-server",
            stack.kafka.bootstrap,
            "--timeout",
            "60000",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    producer_line = [ln for ln in prod.stdout.splitlines() if "records/sec" in ln]
    last = producer_line[-1] if producer_line else ""
    prod_rate = (
        float(last.split(" records sent, ")[1].split(" records/sec")[0])
        if " records sent, " in last
        else None
    )
    cons_rate = None
    lines = [ln for ln in cons.stdout.splitlines() if ln and ln[0].isdigit()]
    if lines:
        cols = [c.strip() for c in lines[-1].split(",")]
        with contextlib.suppress(IndexError, ValueError):
            cons_rate = float(cols[5])  # nMsg.sec
    return {
        "name": "kafka-perf",
        "record_size": size,
        "producer_records_per_s": prod_rate,
        "consumer_records_per_s": cons_rate,
        "producer_tail": last[-200:],
        "consumer_tail": (lines[-1] if lines else cons.stderr[-300:]),
    }


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


__all__ = ["RunSpec", "Stack", "kafka_perf", "plain_consumer", "run_job", "write_json"]
