"""Savepoint operator ids: list them, and move state onto the SQL front's stable uids.

Flink restores each operator's state by operator id. Operators with a uid (all of this
project's DataStream operators) get an id from it. The SQL front's operators (events source,
Deduplicate, WindowAggregate, ...) had none: Flink hashed their place in the whole graph,
so adding a channel moved them and the savepoint no longer restored. Since
``job.sql_uids: stable`` they get uids from the SQL plan (``4_deduplicate``). A savepoint of a
version before that keeps their state under the old ids; :func:`migrate` writes a copy of it
with that state moved to the new ids, matched by operator name (``Deduplicate[4]``), which
the savepoint records and which both versions share as long as the SQL is the same.

Used by ``scripts/submit migrate-savepoint`` and ``scripts/upgrade ... --migrate-sql-uids``.
The savepoint must be on a local file system (``file:``), as the local cluster writes them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.paths import ROOT
from ops.proc import StackError


@dataclass(frozen=True)
class SavedOperator:
    """One operator's entry in a savepoint's metadata."""

    id: str  # 32 hex digits
    name: str | None
    uid: str | None
    has_state: bool  # a subtask or coordinator state that restore must place


@dataclass(frozen=True)
class Rename:
    """Move one operator's state from ``old_id`` to ``new_id`` (the uid ``new_uid``)."""

    name: str
    old_id: str
    new_id: str
    new_uid: str


@dataclass(frozen=True)
class Plan:
    """What :func:`plan_migration` decided for every operator of a savepoint."""

    renames: tuple[Rename, ...] = ()
    kept: tuple[str, ...] = ()  # names whose id the new job has already
    empty: tuple[str, ...] = ()  # no state and no match: Flink skips these on restore
    unmatched: tuple[SavedOperator, ...] = field(default=())  # state with nowhere to go


def plan_migration(saved: Iterable[SavedOperator], target: Iterable[dict[str, Any]]) -> Plan:
    """Match a savepoint's operators to the new job graph's nodes (``--operator-ids`` rows).

    An operator whose id the new graph has keeps it. Otherwise it moves to the node of the
    same name, when exactly one node has that name and the node has a uid (the SQL front's
    names carry their plan ids, ``Calc[5]``, so they are unique; the identity ``Map`` nodes
    PyFlink adds are neither unique nor stateful). A stateful operator with no such node is
    ``unmatched``: restoring would fail, or lose its state with ``--allowNonRestoredState``.
    """
    saved = list(saved)
    nodes = list(target)
    ids = {n["id"] for n in nodes}
    names = Counter(n["name"] for n in nodes)
    by_name = {n["name"]: n for n in nodes if names[n["name"]] == 1 and n.get("uid")}
    renames: list[Rename] = []
    kept: list[str] = []
    empty: list[str] = []
    unmatched: list[SavedOperator] = []
    for op in saved:
        label = op.name or op.id
        node = by_name.get(op.name or "")
        if op.id in ids:
            kept.append(label)
        elif node is not None:
            renames.append(Rename(label, op.id, node["id"], node["uid"]))
        elif op.has_state:
            unmatched.append(op)
        else:
            empty.append(label)
    kept_ids = {op.id for op in saved if op.id in ids}
    taken = Counter(r.new_id for r in renames)
    clashes = [r for r in renames if taken[r.new_id] > 1 or r.new_id in kept_ids]
    if clashes:
        raise StackError(
            "two operators of the savepoint would share one id: "
            + ", ".join(f"{r.name} -> {r.new_uid}" for r in clashes)
        )
    return Plan(tuple(renames), tuple(kept), tuple(empty), tuple(unmatched))


def job_operators(
    job: str = "fanout", config: str | None = None, sets: tuple[str, ...] = (), root: Path = ROOT
) -> list[dict[str, Any]]:
    """Return the job graph's nodes (name, uid, id) as ``jobs/<job>.py --operator-ids`` prints them.

    Runs the job's own ``main`` in a fresh interpreter (the SQL plan's node ids count up per
    process, as in ``flink run``), so the ids are the ones the submitted job will have.
    """
    args = [str(root / ".venv" / "bin" / "python"), "-m", f"jobs.{job}", "--operator-ids"]
    if config:
        args += ["--config", config]
    for item in sets:
        args += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
    if result.returncode != 0 or not lines:
        raise StackError(f"could not build the job graph of jobs/{job}.py:\n{result.stderr[-3000:]}")
    nodes: list[dict[str, Any]] = json.loads(lines[-1])
    return nodes


def local_dir(savepoint: str) -> Path:
    """Return the directory of a ``file:`` savepoint pointer (or a plain path)."""
    path = savepoint.removeprefix("file://").removeprefix("file:")
    directory = Path(path)
    if not (directory / "_metadata").is_file():
        raise StackError(f"{savepoint} is not a savepoint directory on this machine (no _metadata)")
    return directory


def _jvm() -> Any:
    from pyflink.java_gateway import get_gateway

    return get_gateway().jvm


def _each(collection: Any) -> Iterator[Any]:
    """Iterate a java.util.Collection (py4j converts only lists)."""
    items = collection.iterator()
    while items.hasNext():
        yield items.next()


def _load(jvm: Any, directory: Path) -> Any:
    stream = jvm.java.io.DataInputStream(jvm.java.io.FileInputStream(str(directory / "_metadata")))
    try:
        loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
        return jvm.org.apache.flink.runtime.checkpoint.Checkpoints.loadCheckpointMetadata(
            stream, loader, str(directory)
        )
    finally:
        stream.close()


def read_operators(savepoint: str) -> list[SavedOperator]:
    """Return the operators a savepoint holds state for (or an empty entry)."""
    metadata = _load(_jvm(), local_dir(savepoint))
    ops = []
    for state in metadata.getOperatorStates():
        subtasks = _each(state.getStates())
        has_state = state.getCoordinatorState() is not None or any(s.hasState() for s in subtasks)
        ops.append(
            SavedOperator(
                state.getOperatorID().toHexString(),
                state.getOperatorName().orElse(None),
                state.getOperatorUid().orElse(None),
                bool(has_state),
            )
        )
    return ops


def rewrite(savepoint: str, target: Path, renames: Iterable[Rename]) -> Path:
    """Copy ``savepoint`` to ``target`` with each rename applied to its metadata.

    State files are copied as they are: a savepoint refers to them by paths relative to its
    directory, so the copy is a savepoint of its own and the original stays untouched.
    """
    source = local_dir(savepoint)
    if target.exists():
        raise StackError(f"{target} exists already; remove it or choose another target")
    moves = {r.old_id: r for r in renames}
    shutil.copytree(source, target)
    jvm = _jvm()
    checkpoint = jvm.org.apache.flink.runtime.checkpoint
    metadata = _load(jvm, target)
    states = jvm.java.util.ArrayList()
    for state in metadata.getOperatorStates():
        move = moves.get(state.getOperatorID().toHexString())
        if move is not None:
            new_id = jvm.org.apache.flink.runtime.jobgraph.OperatorID(bytes.fromhex(move.new_id))
            state = state.copyWithNewIDs(move.new_uid, new_id)
        states.add(state)
    rewritten = checkpoint.metadata.CheckpointMetadata(
        metadata.getCheckpointId(), states, metadata.getMasterStates(), metadata.getCheckpointProperties()
    )
    out = jvm.java.io.DataOutputStream(jvm.java.io.FileOutputStream(str(target / "_metadata")))
    try:
        checkpoint.Checkpoints.storeCheckpointMetadata(rewritten, out)
    finally:
        out.close()
    return target


def migrate(
    savepoint: str,
    job: str = "fanout",
    config: str | None = None,
    sets: tuple[str, ...] = (),
    target: Path | None = None,
    root: Path = ROOT,
) -> tuple[str, Plan]:
    """Return a savepoint the new job restores completely, and the plan that made it.

    Without renames that is ``savepoint`` itself; otherwise a rewritten copy (``target``,
    default ``<savepoint>-stable-uids``). Raises when state would be left behind.
    """
    plan = plan_migration(read_operators(savepoint), job_operators(job, config, sets, root))
    if plan.unmatched:
        raise StackError(
            "the new job has no operator for this state in the savepoint: "
            + ", ".join(f"{op.name or '?'} ({op.id})" for op in plan.unmatched)
            + ". The savepoint's job had other SQL (its operators' names differ): upgrade to a"
            " version with the same SQL front first, and change the SQL in a later upgrade."
        )
    if not plan.renames:
        return savepoint, plan
    source = local_dir(savepoint)
    new_dir = rewrite(savepoint, target or source.with_name(source.name + "-stable-uids"), plan.renames)
    return f"file:{new_dir}", plan


def describe(plan: Plan) -> list[str]:
    """Return one line per moved operator, and a count of the rest."""
    lines = [f"moved {r.name}: {r.old_id} -> {r.new_id} (uid {r.new_uid})" for r in plan.renames]
    lines.append(f"kept {len(plan.kept)} operators' ids; skipped {len(plan.empty)} empty entries")
    return lines
