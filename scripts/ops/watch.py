"""A live per-vertex table of a running job, from the Flink REST API (``scripts/watch``).

Usage::

    scripts/watch                     # the most recent RUNNING job, refreshed every 2 s
    scripts/watch --job JOB_ID --interval 5
    scripts/watch --once              # one frame, then exit (for scripts and docs)
    scripts/watch --rest-port 8082    # a cluster other than the one scripts/cluster manages

One row per vertex: parallelism, records in/out per second (summed over subtasks), busy and
back-pressured time of its busiest subtask, record totals, and the pipeline's own
``notify.*`` counters and gauges where the vertex has them. The header shows the job's
state, uptime and its last completed checkpoint (age, duration, size).

:func:`collect` reads the REST API; :func:`render` turns what it read into text and is a
pure function (tested without a JVM in ``tests/unit/test_watch.py``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import urllib.error
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from ops.cluster import LocalFlinkCluster, saved_rest_port
from ops.cluster import default_home as cluster_home
from ops.proc import StackError

RATES = ("numRecordsInPerSecond", "numRecordsOutPerSecond")
"""Task metrics summed over the subtasks of a vertex."""

LOADS = ("busyTimeMsPerSecond", "backPressuredTimeMsPerSecond")
"""Task metrics (ms per second) of which the busiest subtask is shown, as in the Flink UI."""

NOTIFY = re.compile(r"(?:^|\.)notify\.(\w+)$")
"""The pipeline's own metrics, e.g. ``deliver-email.notify.delivered`` -> ``delivered``."""

MAX_GAUGES = {"breaker_state"}
"""``notify.*`` metrics shown as the maximum over subtasks (one open breaker shows); others are summed."""

BREAKER = {0: "closed", 1: "open", 2: "half-open"}
TERMINAL = {"FINISHED", "CANCELED", "FAILED"}
NAME_WIDTH = 56
LEGEND = (
    "in/s, out/s: summed over subtasks; busy, backpr: busiest subtask (share of each second); "
    "records: totals since start"
)
CLEAR = "\033[H\033[2J"


@dataclass(frozen=True)
class Snapshot:
    """What one frame shows: REST responses as decoded JSON, nothing derived yet."""

    job: dict[str, Any]
    """``GET /jobs/<id>`` (name, state, duration, now, vertices with parallelism and totals)."""
    checkpoints: dict[str, Any] = field(default_factory=dict)
    """``GET /jobs/<id>/checkpoints`` (counts, latest completed/restored)."""
    metrics: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Vertex id -> ``GET /jobs/<id>/vertices/<vid>/subtasks/metrics?get=...&agg=sum,max``."""
    rest_url: str = ""


def pick_job(overview: list[dict[str, Any]]) -> str:
    """Return the id of the most recently started RUNNING job in a ``/jobs/overview`` list."""
    running = [j for j in overview if j.get("state") == "RUNNING"]
    if not running:
        raise StackError("no RUNNING job on the cluster; submit one with scripts/submit run, or pass --job")
    return str(max(running, key=lambda j: j.get("start-time", 0))["jid"])


def wanted_metrics(available: list[str]) -> list[str]:
    """Return which of a vertex's aggregated metric ids a frame shows."""
    return [m for m in available if m in RATES or m in LOADS or NOTIFY.search(m)]


def collect(cluster: LocalFlinkCluster, job_id: str) -> Snapshot:
    """Read one frame's worth of REST responses for ``job_id``."""
    job = cluster.rest(f"/jobs/{job_id}")
    checkpoints = _optional(cluster, f"/jobs/{job_id}/checkpoints", {})
    metrics: dict[str, list[dict[str, Any]]] = {}
    if job.get("state") == "RUNNING":
        for vertex in job.get("vertices", []):
            base = f"/jobs/{job_id}/vertices/{vertex['id']}/subtasks/metrics"
            available = [m["id"] for m in _optional(cluster, base, [])]
            wanted = wanted_metrics(available)
            if wanted:
                query = urllib.parse.quote(",".join(wanted), safe=",")  # ids may contain "+" or ":"
                metrics[vertex["id"]] = _optional(cluster, f"{base}?get={query}&agg=sum,max", [])
    return Snapshot(job, checkpoints, metrics, cluster.rest_url)


def frame(cluster: LocalFlinkCluster, job_id: str) -> str:
    """Return one rendered frame for ``job_id`` on ``cluster``."""
    return render(collect(cluster, job_id))


def _optional(cluster: LocalFlinkCluster, path: str, default: Any) -> Any:
    """GET ``path``; ``default`` when the REST API has nothing there (yet)."""
    try:
        return cluster.rest(path)
    except urllib.error.HTTPError:
        return default


def render(snap: Snapshot) -> str:
    """Render a snapshot as a text table (pure: JSON in, text out)."""
    job = snap.job
    job_id = str(job.get("jid", "?"))
    state = str(job.get("state", "?"))
    lines = [f"{job.get('name', '?')}  {state}  up {_duration(job.get('duration'))}  job {job_id}"]
    if snap.rest_url:
        kind = "running" if state not in TERMINAL else "completed"
        lines[0] += f"  {snap.rest_url}/#/job/{kind}/{job_id}/overview"
    lines.append(_checkpoint_line(snap.checkpoints, job.get("now")))
    restored = ((snap.checkpoints.get("latest") or {}).get("restored") or {}).get("external_path")
    if restored:
        lines.append(f"restored from {restored}")
    lines.append("")

    vertices = job.get("vertices", [])
    width = min(NAME_WIDTH, max([len("vertex"), *(len(v.get("name", "")) for v in vertices)]))
    head = (
        f"{'vertex':<{width}}  {'p':>3}  {'in/s':>8}  {'out/s':>8}  {'busy':>5}  {'backpr':>6}"
        f"  {'records in':>11}  {'records out':>11}"
    )
    lines += [head, "-" * len(head)]
    for vertex in vertices:
        agg = _aggregates(snap.metrics.get(vertex.get("id", ""), []))
        totals = vertex.get("metrics") or {}
        lines.append(
            f"{_cut(vertex.get('name', '?'), width):<{width}}  {vertex.get('parallelism', '?'):>3}"
            f"  {_rate(agg, 'numRecordsInPerSecond'):>8}  {_rate(agg, 'numRecordsOutPerSecond'):>8}"
            f"  {_percent(agg, 'busyTimeMsPerSecond'):>5}  {_percent(agg, 'backPressuredTimeMsPerSecond'):>6}"
            f"  {_count(totals.get('read-records')):>11}  {_count(totals.get('write-records')):>11}"
        )
        lines += _wrap("    notify: ", [f"{k} {v}" for k, v in _notify(agg)], len(head))
    lines += ["-" * len(head), LEGEND]
    if state in TERMINAL:
        lines.append(f"job is {state}: per-second figures are only reported while it runs")
    return "\n".join(lines)


def _wrap(prefix: str, items: list[str], width: int) -> list[str]:
    """Lay ``items`` out after ``prefix`` on lines of at most ``width`` characters."""
    rows: list[str] = []
    row = ""
    for item in items:
        if row and len(prefix) + len(row) + 2 + len(item) > width:
            rows.append(row)
            row = item
        else:
            row = f"{row}  {item}" if row else item
    if row:
        rows.append(row)
    return [(prefix if i == 0 else " " * len(prefix)) + r for i, r in enumerate(rows)]


def _aggregates(values: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Turn ``[{"id": m, "sum": s, "max": x}]`` into ``{m: {"sum": s, "max": x}}`` (numbers only)."""
    out: dict[str, dict[str, float]] = {}
    for item in values:
        numbers = {k: float(v) for k, v in item.items() if k != "id" and isinstance(v, int | float)}
        out[str(item.get("id"))] = numbers
    return out


def _checkpoint_line(checkpoints: dict[str, Any], now_ms: Any) -> str:
    counts = checkpoints.get("counts") or {}
    text = (
        f"checkpoints  {counts.get('completed', 0)} completed, {counts.get('failed', 0)} failed, "
        f"{counts.get('in_progress', 0)} in progress"
    )
    last = (checkpoints.get("latest") or {}).get("completed")
    if not last:
        return text + "; none completed yet"
    size = last.get("state_size", last.get("checkpointed_size"))
    age = ""
    if isinstance(now_ms, int | float) and last.get("latest_ack_timestamp"):
        age = f" {_duration(now_ms - last['latest_ack_timestamp'])} ago,"
    return (
        f"{text}; last #{last.get('id', '?')}{age} took {_duration(last.get('end_to_end_duration'))}, "
        f"{_bytes(size)}"
    )


def _notify(agg: dict[str, dict[str, float]]) -> list[tuple[str, str]]:
    """Return the vertex's ``notify.*`` metrics as (name, shown value), summed over chained operators."""
    merged: dict[str, float] = {}
    for metric, values in agg.items():
        match = NOTIFY.search(metric)
        if not match:
            continue
        name = match.group(1)
        if name in MAX_GAUGES:
            merged[name] = max(merged.get(name, 0.0), values.get("max", 0.0))
        else:
            merged[name] = merged.get(name, 0.0) + values.get("sum", 0.0)
    shown = []
    for name in sorted(merged):
        value = merged[name]
        text = BREAKER.get(int(value), str(int(value))) if name == "breaker_state" else _count(value)
        shown.append((name, text))
    return shown


def _rate(agg: dict[str, dict[str, float]], metric: str) -> str:
    value = agg.get(metric, {}).get("sum")
    return "-" if value is None else f"{value:,.1f}"


def _percent(agg: dict[str, dict[str, float]], metric: str) -> str:
    value = agg.get(metric, {}).get("max")
    if value is None or value != value:  # absent, or NaN (Flink reports NaN for idle sources)
        return "-"
    return f"{min(value, 1000.0) / 10:.0f}%"


def _count(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{int(value):,}"


def _cut(name: str, width: int) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _duration(ms: Any) -> str:
    """Format milliseconds: ``85 ms``, ``3.1 s``, ``2m 13s``, ``1h 02m``."""
    if not isinstance(ms, int | float) or ms < 0:
        return "?"
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _bytes(size: Any) -> str:
    if not isinstance(size, int | float):
        return "size ?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # unreachable; keeps mypy's return analysis simple


def find_cluster(rest_port: int | None = None) -> LocalFlinkCluster:
    """Return the cluster ``scripts/cluster`` manages (or the one on ``rest_port``)."""
    home = cluster_home()
    if rest_port:
        return LocalFlinkCluster(home=home, rest_port=rest_port)
    port = saved_rest_port(home, int(os.environ.get("NOTIFY_FLINK_REST_PORT", "8081")))
    cluster = LocalFlinkCluster(home=home, rest_port=port)
    if not cluster.pids():
        raise StackError(
            "the local Flink cluster is not running; start it with scripts/cluster start "
            "(or pass --rest-port for another cluster)"
        )
    return cluster


def main(argv: list[str] | None = None) -> int:
    """Run ``scripts/watch``."""
    parser = argparse.ArgumentParser(prog="scripts/watch", description=__doc__.split("\n")[0])
    parser.add_argument("--job", default=None, help="job id (default: the most recent RUNNING job)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between frames (default 2)")
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.add_argument("--rest-port", type=int, default=None, help="REST port of another cluster")
    args = parser.parse_args(argv)
    clear = sys.stdout.isatty() and not args.once
    try:
        cluster = find_cluster(args.rest_port)
        job_id = args.job or pick_job(cluster.rest("/jobs/overview").get("jobs", []))
        while True:
            snap = collect(cluster, job_id)
            print((CLEAR if clear else "") + render(snap), flush=True)
            if args.once or snap.job.get("state") in TERMINAL:
                return 0
            time.sleep(args.interval)
            if not clear:
                print(flush=True)
    except KeyboardInterrupt:
        return 0
    except urllib.error.HTTPError as exc:
        print(f"error: the Flink REST API answered {exc.code} for {exc.url} (wrong job id?)", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"error: cannot reach the Flink REST API: {exc}", file=sys.stderr)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
