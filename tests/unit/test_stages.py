"""The per-batch stages the fan-out job's Python operators call (no JVM)."""

from __future__ import annotations

import orjson

from tests.builders import event_bytes, make_recipient
from udfs import stages
from udfs.fanin import BranchStatus
from udfs.routing import load_ruleset_file

RULES = load_ruleset_file("conf/routing.yaml")
CFG = stages.StageConfig(max_batch_size=2)
WINDOW = stages.Window("eu-west|1|1000", "eu-west", 1000, 2000)


def _rec(raw: bytes, offset: int = 0) -> stages.SourceRecord:
    return stages.SourceRecord(raw, "events", 0, offset)


def test_route_batch_plans_batches_and_dead_letters():
    good = [
        event_bytes(event_id=f"e{i}", region="eu-west", priority="high", recipient=make_recipient())
        for i in range(3)
    ]
    routed = stages.route_batch([*map(_rec, good), _rec(b"{nope", 9)], WINDOW, RULES, CFG)
    assert [p.event_id for p in routed.plans] == ["e0", "e1", "e2"]
    assert all(p.channels == ("email", "push", "sms") for p in routed.plans)
    by_channel: dict[str, list[int]] = {}
    for b in routed.batches:
        by_channel.setdefault(b.channel, []).append(len(b.items))
        assert b.batch_id.startswith("eu-west|1:")
    assert by_channel == {"email": [2, 1], "push": [2, 1], "sms": [2, 1]}
    (dlq,) = routed.dlq
    rec = orjson.loads(dlq)
    assert rec["reason"] == "malformed_json" and rec["source"] == {
        "topic": "events",
        "partition": 0,
        "offset": 9,
    }
    assert all("example.com" not in str(d) for d in routed.decisions), "decision logs carry no PII"


def test_deliver_then_fan_in_emits_one_outcome_per_event():
    raws = [event_bytes(event_id=f"e{i}", region="eu-west", recipient=make_recipient()) for i in range(3)]
    routed = stages.route_batch(list(map(_rec, raws)), WINDOW, RULES, CFG)
    states: stages.FanInStates = {}
    outcomes, timers = stages.fanin_plans(states, routed.plans, now_ms=5000, timeout_ms=60_000)
    assert outcomes == [] and timers
    emitted = []
    for batch in routed.batches:
        delivered = stages.deliver_to_topic(batch, WINDOW.key, now_ms=5100)
        assert orjson.loads(delivered.record)["batch_id"] == batch.batch_id
        out, _ = stages.fanin_results(states, delivered.results, now_ms=5100)
        emitted.extend(out)
        again, _ = stages.fanin_results(states, delivered.results, now_ms=5200)
        assert again == [], "a replayed result batch changes nothing"
    assert sorted(o.event_id for o in emitted) == ["e0", "e1", "e2"]
    assert all(o.complete and o.version == 1 for o in emitted)
    assert all(
        line.status is BranchStatus.DELIVERED
        for o in emitted
        for line in o.channels
        if line.channel == "email"
    )


def test_fan_in_timeout_lists_pending_branches():
    raw = event_bytes(event_id="slow", region="eu-west", recipient=make_recipient())
    routed = stages.route_batch([_rec(raw)], WINDOW, RULES, CFG)
    states: stages.FanInStates = {}
    _, timers = stages.fanin_plans(states, routed.plans, now_ms=0, timeout_ms=1000)
    outcomes, _ = stages.fanin_timer(states, now_ms=max(timers))
    (o,) = outcomes
    assert not o.complete and set(o.pending) == set(routed.plans[0].channels)


def test_fan_in_timer_touches_only_the_events_due_and_returns_only_new_timers():
    """A timer leaves the other events (and their registered timers) alone."""
    raws = [event_bytes(event_id=f"t{i}", region="eu-west", recipient=make_recipient()) for i in range(4)]
    routed = stages.route_batch(list(map(_rec, raws)), WINDOW, RULES, CFG)
    states: stages.FanInStates = {}
    early, late = routed.plans[:2], routed.plans[2:]
    (t_early,) = set(stages.fanin_plans(states, early, now_ms=0, timeout_ms=1000)[1])
    (t_late,) = set(stages.fanin_plans(states, late, now_ms=500, timeout_ms=1000)[1])
    untouched = {p.event_id: states[p.event_id] for p in late}
    outcomes, timers = stages.fanin_timer(states, now_ms=t_early)
    assert sorted(o.event_id for o in outcomes) == ["t0", "t1"]
    assert all(not o.complete for o in outcomes)
    # the timed-out events linger (a new deadline each); the others keep theirs, not re-sent
    assert t_late not in timers and timers and all(t > t_early for t in timers)
    assert all(states[eid] is s for eid, s in untouched.items())
    late_outcomes, _ = stages.fanin_timer(states, now_ms=t_late)
    assert sorted(o.event_id for o in late_outcomes) == ["t2", "t3"]


def _routed_and_delivered(prefix: str) -> tuple[stages.Routed, list]:
    """Three events routed in one window, and the results of delivering each channel batch."""
    raws = [
        event_bytes(event_id=f"{prefix}{i}", region="eu-west", recipient=make_recipient()) for i in range(3)
    ]
    routed = stages.route_batch(list(map(_rec, raws)), WINDOW, RULES, CFG)
    return routed, [stages.deliver_to_topic(b, WINDOW.key, now_ms=5100).results for b in routed.batches]


def test_fan_in_journal_replay_rebuilds_the_states_and_compacts_when_settled():
    """What the fan-in operator journals rebuilds its in-memory states after a restore."""
    import pickle

    routed, results = _routed_and_delivered("j")
    entries = [("plans", 5000, 60_000, routed.plans)] + [
        ("results", 5100 + i, r) for i, r in enumerate(results)
    ]
    live: stages.FanInStates = {}
    emitted = []
    for n, entry in enumerate(entries):
        out, _ = stages.fanin_apply(live, entry)
        emitted.extend(out)
        # a restore after any prefix of the journal (pickled, as the list state stores it)
        replayed = stages.fanin_replay(pickle.loads(pickle.dumps(entries[: n + 1])))
        assert replayed == live
        assert stages.fanin_settled(live) == (n == len(entries) - 1)
    assert sorted(o.event_id for o in emitted) == ["j0", "j1", "j2"]
    # compacted: one snapshot of the tombstones replays to the same states, and a result
    # replayed after the restore (the branch's output was not committed) emits nothing
    compacted = stages.fanin_replay([("snapshot", dict(live))])
    assert compacted == live and all(s.done for s in compacted.values())
    again, _ = stages.fanin_apply(compacted, ("results", 5200, results[0]))
    assert again == []
    # the lingering tombstones go when their timer fires: nothing is left to keep
    deadline = max(s.deadline_ms for s in live.values() if s.deadline_ms is not None)
    stages.fanin_apply(live, ("timer", deadline))
    assert live == {}


def test_fan_in_journal_of_packed_entries_replays_like_objects_and_old_entries_still_load():
    """Plans and results travel and are journaled packed; journals of objects still replay."""
    import pickle

    routed, results = _routed_and_delivered("p")
    objects = [("plans", 5000, 60_000, routed.plans)] + [
        ("results", 5100 + i, r) for i, r in enumerate(results)
    ]
    packed = [("plans", 5000, 60_000, stages.pack(routed.plans))] + [
        ("results", 5100 + i, stages.pack(r)) for i, r in enumerate(results)
    ]
    assert all(isinstance(e[-1], bytes) for e in packed)
    live_objects: stages.FanInStates = {}
    live_packed: stages.FanInStates = {}
    out_objects = [o for e in objects for o in stages.fanin_apply(live_objects, e)[0]]
    out_packed = [o for e in packed for o in stages.fanin_apply(live_packed, e)[0]]
    assert out_packed == out_objects and live_packed == live_objects
    assert sorted(o.event_id for o in out_packed) == ["p0", "p1", "p2"]
    # a journal restored from a savepoint: old entries (objects) followed by new (packed)
    mixed = pickle.loads(pickle.dumps(objects[:1] + packed[1:]))
    assert stages.fanin_replay(mixed) == live_objects


def test_fast_pickle_round_trips_state_objects():
    import pickle

    raw = event_bytes(event_id="p1", region="eu-west", recipient=make_recipient())
    routed = stages.route_batch([_rec(raw)], WINDOW, RULES, CFG)
    states: stages.FanInStates = {}
    stages.fanin_plans(states, routed.plans, now_ms=0, timeout_ms=1000)
    objects = [states, routed.batches, routed.plans]
    assert pickle.loads(pickle.dumps(objects, 5)) == objects
    assert b"_rebuild" in pickle.dumps(routed.plans[0]), "pickled through udfs.events._rebuild"


def test_batches_pickle_as_flat_rows_and_batches_pickled_before_still_load():
    import pickle

    from udfs import batching
    from udfs.events import _rebuild

    raws = [event_bytes(event_id=f"b{i}", region="eu-west", recipient=make_recipient()) for i in range(3)]
    batch = next(b for b in stages.route_batch(list(map(_rec, raws)), WINDOW, RULES, CFG).batches)
    data = pickle.dumps(batch, 5)
    assert b"_rebuild_batch" in data and b"Message" not in data, "messages travel as plain tuples"
    back = pickle.loads(data)
    assert back == batch and all(type(m) is batching.Message for m in back.items)
    # the form written by fast_pickle before (state in savepoints of older versions)
    values = tuple(getattr(batch, f) for f in batching.Batch.__dataclass_fields__)

    class Legacy:
        def __reduce__(self):
            return (_rebuild, (batching.Batch, values))

    assert pickle.loads(pickle.dumps(Legacy())) == batch


def test_batch_metrics_align_to_the_tumbling_window():
    raws = [event_bytes(event_id=f"m{i}", region="eu-west", recipient=make_recipient()) for i in range(2)]
    window = stages.Window("eu-west|0|1500", "eu-west", 1500, 1500, late=True)
    routed = stages.route_batch(list(map(_rec, raws)), window, RULES, CFG)
    batch = next(b for b in routed.batches if b.channel == "email")
    delivered = stages.deliver_to_topic(batch, window.key, now_ms=9000)
    m = stages.batch_metrics(batch, delivered.results, window_ms=1000)
    assert (m.window_start_ms, m.window_end_ms, m.key) == (1000, 2000, "eu-west|email|1000")
    rec = orjson.loads(stages.metrics_json(m, m.accumulator, late=True))
    assert rec["counts"] == {"delivered": 2} and rec["late"] is True and rec["batches"] == 1


def test_linear_mode_matches_the_batched_outcome():
    raw = event_bytes(
        event_id="lin", region="eu-west", priority="high", recipient=make_recipient(opt_out=["sms"])
    )
    result = stages.deliver_linear(_rec(raw), RULES, CFG, now_ms=100)
    assert result.dlq is None and result.outcome is not None
    statuses = {line.channel: line.status for line in result.outcome.channels}
    assert statuses == {
        "email": BranchStatus.DELIVERED,
        "push": BranchStatus.DELIVERED,
        "sms": BranchStatus.SKIPPED,
    }
    assert [ch for ch, _ in result.channel_records] == ["email", "push"]
    bad = stages.deliver_linear(_rec(b"[1]", 3), RULES, CFG, now_ms=100)
    assert bad.outcome is None and orjson.loads(bad.dlq)["reason"] == "not_an_object"


def test_decision_log_fields_are_built_only_when_logged():
    raws = [event_bytes(event_id=f"d{i}", region="eu-west", recipient=make_recipient()) for i in range(3)]
    logged = stages.route_batch(list(map(_rec, raws)), WINDOW, RULES, CFG)
    quiet = stages.route_batch(list(map(_rec, raws)), WINDOW, RULES, CFG, log_decisions=False)
    assert [d["event_id"] for d in logged.decisions] == ["d0", "d1", "d2"] and quiet.decisions == ()
    assert (quiet.plans, quiet.batches, quiet.dlq) == (logged.plans, logged.batches, logged.dlq)
