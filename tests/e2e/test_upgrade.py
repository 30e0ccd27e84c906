"""Savepoint upgrade v1 -> v2 on the standalone cluster: new rules with a new channel, new
branch parallelism, and a switch of state backend (heap -> RocksDB, through a canonical
savepoint).

State survives (a duplicate sent before the upgrade is still dropped after it; events
whose windows were open at the savepoint get exactly one outcome) and every
(event, channel) is delivered exactly once across the upgrade.

v1 runs the code of an older commit (``UPGRADE_FROM``, a git worktree) and the TaskManager
is restarted before v2, so the test checks an upgrade from an older version of the job
graph and its state, not only a configuration change: operators without a uid (the SQL
front, before ``job.sql_uids: stable``) got ids from the shape of the whole graph, and a
change elsewhere (such as v2's new channel) moved them. ``UPGRADE_FROM`` predates stable SQL
uids, so the upgrade migrates the savepoint (``--migrate-sql-uids``) and the test checks that
the migrated state is the state v1 left: dedup, open windows and source offsets.
``NOTIFY_UPGRADE_FROM=<revision>`` picks another commit; ``NOTIFY_UPGRADE_FROM=HEAD`` runs
both versions from this checkout.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ops import submit as ops_submit
from ops.kafka_io import consume_all, produce
from ops.paths import ROOT
from ops.worktree import worktrees
from udfs.generator import generate_events

pytestmark = pytest.mark.e2e
CHANNELS = ("email", "sms", "push")
NEW_CHANNEL = "webhook"  # added by v2: its branch is new, the rest of the graph's state restores


def _batch(seed: int, n: int, start_ms: int) -> list[bytes]:
    return list(
        generate_events(n, seed=seed, rate_per_s=100, start_ms=start_ms, dup_rate=0, bad_rate=0, late_rate=0)
    )


def _ids(records: list[bytes]) -> set[str]:
    return {json.loads(r)["event_id"] for r in records}


# the last version whose savepoints this one must restore (session 5's final commit)
UPGRADE_FROM = "bbcc9db"
FROM_REV = os.environ.get("NOTIFY_UPGRADE_FROM", UPGRADE_FROM)
CROSS_VERSION = FROM_REV not in ("", "HEAD")


@pytest.fixture
def v1_root(tmp_path: Path) -> Iterator[Path]:
    """The checkout v1 runs from: a worktree of ``FROM_REV``, or this one."""
    if not CROSS_VERSION:
        yield ROOT
        return
    known = subprocess.run(["git", "cat-file", "-e", f"{FROM_REV}^{{commit}}"], cwd=ROOT, check=False)
    if known.returncode != 0:
        pytest.fail(f"commit {FROM_REV} is not in this clone: the upgrade test needs the git history")
    with worktrees([FROM_REV], tmp_path) as roots:
        (root,) = roots.values()
        yield Path(root)


def test_upgrade_through_a_savepoint_keeps_state_and_exactly_once(
    kafka, topic, flink_cluster, tmp_path, v1_root
):
    names = {k: topic(k) for k in ("events", "rules", "outcomes", "dlq", "metrics")}
    prefix = topic("ch")
    kafka.create_topics([f"{prefix}.{ch}" for ch in (*CHANNELS, NEW_CHANNEL)])
    rules_v2 = yaml.safe_load(Path("conf/routing.yaml").read_text())
    rules_v2["version"] = "upgrade-v2"
    rules_v2["channels"].append(NEW_CHANNEL)
    rules_v2["rules"]["order_shipped"] = [{"channel": "email"}, {"channel": "sms"}, {"channel": NEW_CHANNEL}]
    (tmp_path / "routing-v2.yaml").write_text(yaml.safe_dump(rules_v2))
    common = (
        f"kafka.bootstrap={kafka.bootstrap}",
        f"kafka.group_id=g-{names['events']}",
        f"kafka.transactional_id_prefix=tx-{names['events']}",
        *(f"topics.{k}={v}" for k, v in names.items()),
        f"topics.channel_prefix={prefix}.",
        "job.checkpoint_interval_ms=1000",
    )
    if CROSS_VERSION:  # a shared TaskManager has loaded this checkout's code: v1 needs its own
        flink_cluster.restart_taskmanager()
    v1 = ops_submit.submit(
        flink_cluster,
        "fanout",
        parallelism=1,
        name="upgrade-v1",
        sets=(*common, "job.state_backend=hashmap"),
        root=v1_root,
    )
    v2_id = None
    try:
        ops_submit.wait_state(flink_cluster, v1.job_id, {"RUNNING"})
        assert "HashMap" in flink_cluster.rest(f"/jobs/{v1.job_id}/checkpoints/config")["state_backend"]
        t0 = int(time.time() * 1000) - 60_000
        first = _batch(1, 400, t0)  # 4 s of event time: early windows close, the last stay open
        produce(kafka.bootstrap, names["events"], first)
        assert consume_all(kafka.bootstrap, names["outcomes"], expect=100, timeout_s=90)

        savepoint, v2 = ops_submit.upgrade(
            flink_cluster,
            v1.job_id,
            "fanout",
            parallelism=1,
            name="upgrade-v2",
            sets=(
                *common,
                f"routing.rules_file={tmp_path / 'routing-v2.yaml'}",
                "branches.sms.parallelism=2",
                "job.state_backend=rocksdb",
            ),
            restart_taskmanager=CROSS_VERSION,  # thread mode keeps the code it loaded first
            migrate_sql_uids=True,  # a no-op when v1 has stable SQL uids already
        )
        v2_id = v2.job_id
        assert Path(savepoint.removeprefix("file:")).exists()
        # v1 from before stable SQL uids: v2 started from a migrated copy of its savepoint
        assert savepoint.endswith("-stable-uids") == CROSS_VERSION, savepoint
        assert ops_submit.restored_from(flink_cluster, v2_id)
        assert "RocksDB" in flink_cluster.rest(f"/jobs/{v2_id}/checkpoints/config")["state_backend"]
        sms = next(
            v for v in ops_submit.status(flink_cluster, v2_id)["vertices"] if "deliver-sms" in v["name"]
        )
        assert sms["parallelism"] == 2

        second = _batch(2, 300, t0 + 4_000)
        duplicate = first[5]  # already delivered by v1: dedup state must drop it in v2
        tail = _batch(3, 400, t0 + 7_000)  # moves event time on so second's windows close
        produce(kafka.bootstrap, names["events"], [*second, duplicate, *tail])
        expected = _ids(first) | _ids(second)
        deadline = time.monotonic() + 120
        outcomes: list[dict] = []
        while time.monotonic() < deadline:
            outcomes = [json.loads(v) for v in consume_all(kafka.bootstrap, names["outcomes"])]
            if expected <= {o["event_id"] for o in outcomes}:
                break
            time.sleep(1)
        ids = [o["event_id"] for o in outcomes]
        assert expected <= set(ids), f"{len(expected - set(ids))} events have no outcome"
        assert len(ids) == len(set(ids)), "an event got two outcomes across the upgrade"
        v2_versions = {o["rules_version"] for o in outcomes if o["event_id"] in _ids(second)}
        assert v2_versions == {"upgrade-v2"}
        pairs = []
        for ch in (*CHANNELS, NEW_CHANNEL):
            for batch in (json.loads(v) for v in consume_all(kafka.bootstrap, f"{prefix}.{ch}")):
                pairs.extend((eid, ch) for m in batch["messages"] for eid in m["event_ids"])
        assert len(pairs) == len(set(pairs)), "an (event, channel) was delivered twice across the upgrade"
        assert any(ch == NEW_CHANNEL for _, ch in pairs), "v2's new channel delivered nothing"
        planned = {
            (o["event_id"], ch)
            for o in outcomes
            if o["event_id"] in expected
            for ch, line in o["channels"].items()
            if line["status"] == "delivered"
        }
        # the tail's own deliveries may be committed before its outcomes: compare first + second
        assert planned == {(eid, ch) for eid, ch in pairs if eid in expected}
    finally:
        for job_id in (v1.job_id, v2_id):
            if job_id:
                with contextlib.suppress(Exception):
                    ops_submit.cancel(flink_cluster, job_id)
