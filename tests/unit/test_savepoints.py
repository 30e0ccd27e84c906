"""Savepoint migration onto stable SQL uids: which state moves where; no JVM.

The ids below are real: the savepoint's are those of a version before stable SQL uids
(its positional ids), the graph's those ``jobs/fanout.py --operator-ids`` prints today.
"""

from __future__ import annotations

import pytest

from ops.proc import StackError
from ops.savepoints import Rename, SavedOperator, describe, plan_migration

DEDUP_OLD, DEDUP_NEW = "c121e903c115b8667b2bbd68da3b10cc", "8a7ce0569fb61413eaa20c24b2eb0490"
SOURCE_OLD, SOURCE_NEW = "6cdc5bb954874d922eaee11a8e7b5dd5", "d3f21cabc6fe0fdf76c8be915bdb22a2"
FANIN = "81718de7bea20e6105c674bc45ed7567"
GRAPH = [
    {"name": "Source: events_in[1]", "uid": "1_source", "id": SOURCE_NEW},
    {"name": "Deduplicate[4]", "uid": "4_deduplicate", "id": DEDUP_NEW},
    {"name": "fan-in: branch status per event", "uid": "fan-in", "id": FANIN},
    {"name": "Map", "uid": None, "id": "9d81105a04ceb95a35316a6f22815458"},
    {"name": "Map", "uid": None, "id": "b65f14fec0d2da1aa8f55c097cb0ecf2"},
]


def saved(op_id: str, name: str | None, uid: str | None = None, has_state: bool = True) -> SavedOperator:
    return SavedOperator(op_id, name, uid, has_state)


def test_sql_state_moves_by_name_and_uid_operators_keep_their_ids():
    plan = plan_migration(
        [
            saved(SOURCE_OLD, "Source: events_in[1]"),
            saved(DEDUP_OLD, "Deduplicate[4]"),
            saved(FANIN, "fan-in: branch status per event", "fan-in"),
            saved("c82dca7a5beb61622138e2a72992bf93", "Map", has_state=False),  # moved identity map
        ],
        GRAPH,
    )
    assert plan.renames == (
        Rename("Source: events_in[1]", SOURCE_OLD, SOURCE_NEW, "1_source"),
        Rename("Deduplicate[4]", DEDUP_OLD, DEDUP_NEW, "4_deduplicate"),
    )
    assert plan.kept == ("fan-in: branch status per event",)
    assert plan.empty == ("Map",)  # no state: Flink skips it on restore
    assert plan.unmatched == ()
    assert describe(plan)[-1] == "kept 1 operators' ids; skipped 1 empty entries"


def test_a_savepoint_of_stable_uids_needs_no_renames():
    plan = plan_migration([saved(DEDUP_NEW, "Deduplicate[4]", "4_deduplicate")], GRAPH)
    assert plan.renames == () and plan.kept == ("Deduplicate[4]",)


def test_state_without_a_node_of_its_name_is_unmatched():
    # e.g. the SQL changed, so the plan's node ids (and names) are different
    lost = saved("0" * 32, "WindowAggregate[9]")
    plan = plan_migration([lost, saved(DEDUP_OLD, "Deduplicate[4]")], GRAPH)
    assert plan.unmatched == (lost,)
    assert [r.name for r in plan.renames] == ["Deduplicate[4]"]


def test_names_that_are_not_unique_or_nodes_without_a_uid_are_never_targets():
    stateful_map = saved("1" * 32, "Map")
    graph = [*GRAPH, {"name": "Calc[5]", "uid": None, "id": "2" * 32}]
    plan = plan_migration([stateful_map, saved("3" * 32, "Calc[5]")], graph)
    assert plan.renames == ()
    assert [op.name for op in plan.unmatched] == ["Map", "Calc[5]"]


def test_two_operators_moving_onto_one_id_is_refused():
    with pytest.raises(StackError, match="share one id"):
        plan_migration([saved(DEDUP_OLD, "Deduplicate[4]"), saved(DEDUP_NEW, "Deduplicate[4]")], GRAPH)
