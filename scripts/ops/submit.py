"""Submit, list, inspect and cancel jobs on the local Flink cluster (``scripts/submit``).

Usage::

    scripts/submit run [--job fanout] [-p 2] [--name NAME] [--config F] [--set k=v ...]
                       [--savepoint DIR]
    scripts/submit list
    scripts/submit status JOB_ID
    scripts/submit cancel JOB_ID
    scripts/submit upgrade JOB_ID [-p N] [--set k=v ...] [--allow-non-restored-state]
                   [--migrate-sql-uids]
    scripts/submit migrate-savepoint SAVEPOINT [--job fanout] [--config F] [--set k=v ...]

``run`` submits detached (``flink run -d -py jobs/<job>.py -pyfs jobs,udfs``) and prints the
job id and its Flink UI link. The other commands use the REST API.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.cluster import LocalFlinkCluster, saved_rest_port
from ops.cluster import default_home as cluster_home
from ops.paths import ROOT
from ops.proc import StackError
from ops.savepoints import describe, migrate

JOB_ID = re.compile(r"JobID ([0-9a-f]{32})")


@dataclass(frozen=True)
class Submitted:
    """A job the cluster accepted."""

    job_id: str
    ui_url: str


def submit(
    cluster: LocalFlinkCluster,
    job: str = "fanout",
    parallelism: int | None = None,
    name: str | None = None,
    config: str | None = None,
    sets: tuple[str, ...] = (),
    savepoint: str | None = None,
    allow_non_restored: bool = False,
    root: Path = ROOT,
) -> Submitted:
    """Submit ``jobs/<job>.py`` detached; return its id and UI link.

    ``root`` is the checkout the job's code comes from (``scripts/bench ab`` submits an older
    commit's worktree next to the current one).
    """
    script = root / "jobs" / f"{job}.py"
    if not script.exists():
        raise StackError(f"no job named {job!r} (expected {script})")
    args = ["run", "-d"]
    if savepoint:
        args += ["-s", savepoint]
        if allow_non_restored:
            args.append("--allowNonRestoredState")
    args += ["-py", str(script), "-pyfs", f"{root / 'jobs'},{root / 'udfs'}"]
    job_args: list[str] = []
    if config:
        job_args += ["--config", config]
    for item in _job_sets(parallelism, name, sets):
        job_args += ["--set", item]
    result = cluster.run(*args, *job_args)
    match = JOB_ID.search(result.stdout)
    if result.returncode != 0 or match is None:
        text = result.stdout + result.stderr
        cut = text.find("Traceback")
        detail = text[cut : cut + 3000] if cut >= 0 else text[-3000:]
        raise StackError(f"submission failed:\n{detail}")
    job_id = match.group(1)
    return Submitted(job_id, f"{cluster.rest_url}/#/job/running/{job_id}/overview")


def _job_sets(parallelism: int | None, name: str | None, sets: tuple[str, ...]) -> tuple[str, ...]:
    """Return the job's ``--set`` overrides: parallelism and name first, then ``sets``."""
    first = [f"job.parallelism={parallelism}"] if parallelism else []
    first += [f"job.name={name}"] if name else []
    return (*first, *sets)


def jobs(cluster: LocalFlinkCluster) -> list[dict[str, Any]]:
    """Return the cluster's jobs (id, name, state, start time), newest first."""
    overview = cluster.rest("/jobs/overview").get("jobs", [])
    return sorted(overview, key=lambda j: j.get("start-time", 0), reverse=True)


def status(cluster: LocalFlinkCluster, job_id: str) -> dict[str, Any]:
    """Return a job's state, vertices (name, parallelism, status) and checkpoint counts."""
    detail = cluster.rest(f"/jobs/{job_id}")
    checkpoints = cluster.rest(f"/jobs/{job_id}/checkpoints").get("counts", {})
    return {
        "id": job_id,
        "name": detail.get("name"),
        "state": detail.get("state"),
        "vertices": [
            {"id": v["id"], "name": v["name"], "parallelism": v["parallelism"], "status": v["status"]}
            for v in detail.get("vertices", [])
        ],
        "checkpoints": checkpoints,
    }


def wait_state(cluster: LocalFlinkCluster, job_id: str, states: set[str], timeout_s: float = 120) -> str:
    """Wait until the job is in one of ``states``; return it (StackError on timeout/failure)."""
    deadline = time.monotonic() + timeout_s
    state = "?"
    while time.monotonic() < deadline:
        state = cluster.rest(f"/jobs/{job_id}").get("state", "?")
        if state in states:
            return str(state)
        if state in {"FAILED", "CANCELED", "FINISHED"}:
            break
        time.sleep(0.5)
    raise StackError(f"job {job_id} is {state}, not {'/'.join(sorted(states))}")


def stop_with_savepoint(cluster: LocalFlinkCluster, job_id: str, timeout_s: float = 180) -> str:
    """Stop a job with a savepoint (no drain); return the savepoint's path."""
    target = (cluster.home / "savepoints").as_uri()
    trigger = cluster.rest(
        f"/jobs/{job_id}/stop", method="POST", body={"drain": False, "targetDirectory": target}
    )
    request_id = trigger["request-id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = cluster.rest(f"/jobs/{job_id}/savepoints/{request_id}")
        if info.get("status", {}).get("id") == "COMPLETED":
            op = info.get("operation", {})
            if "location" in op:
                return str(op["location"])
            raise StackError(f"stop-with-savepoint of {job_id} failed: {str(op.get('failure-cause'))[:2000]}")
        time.sleep(0.5)
    raise StackError(f"stop-with-savepoint of {job_id} did not complete within {timeout_s:.0f} s")


def restored_from(cluster: LocalFlinkCluster, job_id: str) -> str | None:
    """Return the savepoint/checkpoint path a job restored from (None when it started fresh)."""
    latest = cluster.rest(f"/jobs/{job_id}/checkpoints").get("latest") or {}
    restored = latest.get("restored") or {}
    path = restored.get("external_path")
    return str(path) if path else None


def upgrade(
    cluster: LocalFlinkCluster,
    job_id: str,
    job: str = "fanout",
    parallelism: int | None = None,
    name: str | None = None,
    config: str | None = None,
    sets: tuple[str, ...] = (),
    allow_non_restored: bool = False,
    restart_taskmanager: bool = False,
    migrate_sql_uids: bool = False,
) -> tuple[str, Submitted]:
    """Stop ``job_id`` with a savepoint, start the new version from it, verify it restored.

    ``restart_taskmanager``: restart the TaskManager between the two, so a new version of
    the Python code is loaded (thread-mode interpreters live as long as the TaskManager).
    ``migrate_sql_uids``: the running job is a version before stable SQL uids; move its SQL
    operators' state to the new version's ids (:mod:`ops.savepoints`) and start from that.
    Returns the savepoint the new version started from.
    """
    savepoint = stop_with_savepoint(cluster, job_id)
    if migrate_sql_uids:
        savepoint, plan = migrate(savepoint, job, config, _job_sets(parallelism, name, sets))
        for line in describe(plan):
            print(f"migrate: {line}")
    if restart_taskmanager:
        cluster.restart_taskmanager()
    new = submit(cluster, job, parallelism, name, config, sets, savepoint, allow_non_restored)
    wait_state(cluster, new.job_id, {"RUNNING"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if restored_from(cluster, new.job_id):
            break
        time.sleep(0.5)
    else:
        raise StackError(f"job {new.job_id} is running but reports no restore from {savepoint}")
    return savepoint, new


def cancel(cluster: LocalFlinkCluster, job_id: str) -> None:
    """Cancel a job."""
    cluster.rest(f"/jobs/{job_id}?mode=cancel", method="PATCH")


def vertex_metrics(cluster: LocalFlinkCluster, job_id: str, suffix: str) -> dict[str, float]:
    """Return ``{vertex name: summed value}`` of every subtask metric whose id ends with ``suffix``."""
    out: dict[str, float] = {}
    for v in cluster.rest(f"/jobs/{job_id}").get("vertices", []):
        ids = [m["id"] for m in cluster.rest(f"/jobs/{job_id}/vertices/{v['id']}/metrics")]
        wanted = [i for i in ids if i.endswith(suffix)]
        if not wanted:
            continue
        query = urllib.parse.quote(",".join(wanted), safe=",")  # ids may contain "+"
        values = cluster.rest(f"/jobs/{job_id}/vertices/{v['id']}/metrics?get={query}")
        out[v["name"]] = sum(float(m["value"]) for m in values)
    return out


def _cluster() -> LocalFlinkCluster:
    cluster = LocalFlinkCluster(home=cluster_home(), rest_port=saved_rest_port(cluster_home(), 8081))
    if not cluster.pids():
        raise StackError("the local Flink cluster is not running; start it with scripts/cluster start")
    return cluster


def main(argv: list[str] | None = None) -> int:
    """Run ``scripts/submit``."""
    parser = argparse.ArgumentParser(prog="scripts/submit", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="submit a job (detached)")
    run.add_argument("--job", default="fanout", help="jobs/<job>.py (default fanout)")
    run.add_argument("-p", "--parallelism", type=int, default=None)
    run.add_argument("--name", default=None, help="job name shown in the UI")
    run.add_argument("--config", default=None, help="pipeline YAML (default conf/pipeline.yaml)")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    run.add_argument("--savepoint", default=None, help="start from this savepoint (flink run -s)")
    sub.add_parser("list", help="list jobs")
    st = sub.add_parser("status", help="state, vertices and checkpoints of a job")
    st.add_argument("job_id")
    ca = sub.add_parser("cancel", help="cancel a job")
    ca.add_argument("job_id")
    up = sub.add_parser("upgrade", help="stop with savepoint, start the new version from it")
    up.add_argument("job_id")
    up.add_argument("--job", default="fanout")
    up.add_argument("-p", "--parallelism", type=int, default=None)
    up.add_argument("--name", default=None)
    up.add_argument("--config", default=None)
    up.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    up.add_argument(
        "--restart-taskmanager",
        action="store_true",
        help="restart the TaskManager after the savepoint (needed when jobs/ or udfs/ changed)",
    )
    up.add_argument(
        "--allow-non-restored-state",
        action="store_true",
        help="only when a state-holding operator was deliberately removed",
    )
    up.add_argument(
        "--migrate-sql-uids",
        action="store_true",
        help="the running job predates stable SQL uids: move its SQL state to the new ids",
    )
    mi = sub.add_parser(
        "migrate-savepoint", help="copy a savepoint of a version before stable SQL uids onto the new ids"
    )
    mi.add_argument("savepoint", help="savepoint directory or file: pointer")
    mi.add_argument("--job", default="fanout")
    mi.add_argument("--config", default=None)
    mi.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    mi.add_argument(
        "--target", default=None, help="new savepoint directory (default <savepoint>-stable-uids)"
    )
    args = parser.parse_args(argv)
    try:
        if args.cmd == "migrate-savepoint":
            target = Path(args.target) if args.target else None
            migrated, plan = migrate(args.savepoint, args.job, args.config, tuple(args.set), target)
            for line in describe(plan):
                print(line)
            print(f"savepoint for the new version: {migrated}")
            return 0
        cluster = _cluster()
        if args.cmd == "run":
            done = submit(
                cluster, args.job, args.parallelism, args.name, args.config, tuple(args.set), args.savepoint
            )
            print(f"submitted {done.job_id}")
            print(f"Flink UI: {done.ui_url}")
        elif args.cmd == "list":
            for j in jobs(cluster):
                print(f"{j['jid']}  {j['state']:<10} {j['name']}")
        elif args.cmd == "status":
            s = status(cluster, args.job_id)
            print(f"{s['id']}  {s['state']}  {s['name']}  checkpoints {s['checkpoints']}")
            for v in s["vertices"]:
                print(f"  {v['status']:<10} p={v['parallelism']:<3} {v['name']}")
        elif args.cmd == "upgrade":
            savepoint, new = upgrade(
                cluster,
                args.job_id,
                args.job,
                args.parallelism,
                args.name,
                args.config,
                tuple(args.set),
                args.allow_non_restored_state,
                args.restart_taskmanager,
                args.migrate_sql_uids,
            )
            print(f"savepoint {savepoint}")
            print(f"upgraded: {args.job_id} -> {new.job_id} (RUNNING, restored from the savepoint)")
            print(f"Flink UI: {new.ui_url}")
        elif args.cmd == "cancel":
            cancel(cluster, args.job_id)
            print(f"cancel requested for {args.job_id}")
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
