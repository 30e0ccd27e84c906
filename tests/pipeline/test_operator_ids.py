"""Operator ids across a topology change: adding a channel keeps every existing operator's id.

A savepoint restores only into operators with the ids it recorded. The ids come from Flink's
own hasher over the job graph ``jobs/fanout.py`` builds (``--operator-ids``; no cluster and
no broker needed). With ``job.sql_uids: stable`` the SQL front's operators keep their ids
when a channel is added; with ``positional`` (Flink's default) Deduplicate and
WindowAggregate move, which is the defect stable uids fix.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from ops.savepoints import job_operators

pytestmark = pytest.mark.pipeline
BASE = ("kafka.bootstrap=127.0.0.1:9",)  # never contacted: the graph is only built


def _with_webhook(tmp_path: Path) -> Path:
    rules = yaml.safe_load(Path("conf/routing.yaml").read_text())
    rules["channels"].append("webhook")
    rules["rules"]["*"].append({"channel": "webhook"})
    path = tmp_path / "routing-webhook.yaml"
    path.write_text(yaml.safe_dump(rules))
    return path


def _named(nodes: list[dict]) -> dict[str, str]:
    """name -> id for the nodes whose name is unique (PyFlink's identity maps are all "Map")."""
    names = [n["name"] for n in nodes]
    return {n["name"]: n["id"] for n in nodes if names.count(n["name"]) == 1}


def test_adding_a_channel_keeps_the_ids_of_every_stateful_operator(tmp_path):
    webhook = f"routing.rules_file={_with_webhook(tmp_path)}"
    variants = {
        (mode, added): (*BASE, f"job.sql_uids={mode}", *([webhook] if added else []))
        for mode in ("stable", "positional")
        for added in (False, True)
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        built = pool.map(lambda sets: job_operators(sets=sets), variants.values())
        graphs = dict(zip(variants, built, strict=True))

    before, after = _named(graphs["stable", False]), _named(graphs["stable", True])
    assert "deliver-webhook" in after and "deliver-webhook" not in before
    moved = {name for name, op_id in before.items() if after.get(name) != op_id}
    assert moved == set(), f"operators whose id changed when a channel was added: {moved}"
    stateful_sql = {"Source: events_in[1]", "Deduplicate[4]", "WindowAggregate[8]"}
    assert stateful_sql <= before.keys()
    uids = {n["name"]: n["uid"] for n in graphs["stable", False]}
    assert all(uids[name] for name in stateful_sql), uids

    # what stable uids fix: Flink's positional ids move the SQL state when a channel is added
    old_before, old_after = _named(graphs["positional", False]), _named(graphs["positional", True])
    assert {"Deduplicate[4]", "WindowAggregate[8]"} <= {
        name for name, op_id in old_before.items() if old_after.get(name) != op_id
    }
