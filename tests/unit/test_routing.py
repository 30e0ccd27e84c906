from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.builders import event_bytes, make_recipient
from udfs.events import Event, ValidationLimits, parse_event
from udfs.routing import (
    NO_RULE,
    Decision,
    RuleSet,
    RuleSetError,
    address_for,
    decide,
    load_ruleset_file,
    next_ruleset,
    parse_ruleset,
    ruleset_from_json,
    ruleset_to_json,
    ruleset_to_obj,
)

ROOT = Path(__file__).resolve().parents[2]
ALL = frozenset({"email", "sms", "push", "webhook"})


def base_obj(**overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "version": "t.1",
        "channels": ["email", "sms", "push"],
        "rules": {
            "order_shipped": [
                {"channel": "email"},
                {"channel": "push", "when": {"app_installed": True}},
                {"channel": "sms", "when": {"priority": ["high", "critical"]}},
            ],
            "price_alert": [
                {"channel": "push", "when": {"app_installed": True}},
                {"channel": "email", "when": {"priority": ["normal", "high", "critical"]}},
            ],
            "eu_only": [{"channel": "sms", "when": {"regions": ["eu-west"]}}],
            "*": [{"channel": "email"}],
        },
    }
    obj.update(overrides)
    return obj


def rules(**overrides: Any) -> RuleSet:
    rs = parse_ruleset(base_obj(**overrides))
    assert isinstance(rs, RuleSet), rs
    return rs


def event(**overrides: Any) -> Event:
    ev = parse_event(event_bytes(**overrides), ValidationLimits(channels=ALL))
    assert isinstance(ev, Event), ev
    return ev


def test_repo_routing_yaml_loads() -> None:
    rs = load_ruleset_file(ROOT / "conf" / "routing.yaml")
    assert isinstance(rs, RuleSet), rs
    assert rs.channels == ("email", "sms", "push")
    assert set(rs.rules) == {"order_shipped", "password_reset", "price_alert", "*"}
    assert rs.version == "2026-11-28.1"


def test_planned_channels_follow_rule_order() -> None:
    rs = rules()
    d = decide(event(event_id="e-1", priority="high"), rs)
    assert d == Decision("e-1", ("email", "push", "sms"), (), "order_shipped", "t.1")
    d = decide(event(priority="normal"), rs)
    assert d.channels == ("email", "push")


def test_unmatched_condition_is_not_planned_nor_skipped() -> None:
    d = decide(event(recipient=make_recipient(app_installed=False)), rules())
    assert d.channels == ("email",)
    assert d.skipped == ()


def test_opt_out_is_always_respected() -> None:
    ev = event(priority="critical", recipient=make_recipient(opt_out=["sms", "email"]))
    d = decide(ev, rules())
    assert d.channels == ("push",)
    assert d.skipped == (("email", "opt_out"), ("sms", "opt_out"))


def test_missing_address_is_skipped() -> None:
    ev = event(priority="high", recipient=make_recipient(phone=None, push_token=""))
    d = decide(ev, rules())
    assert d.channels == ("email",)
    assert d.skipped == (("push", "no_address"), ("sms", "no_address"))


def test_opt_out_wins_over_no_address() -> None:
    ev = event(priority="high", recipient=make_recipient(phone=None, opt_out=["sms"]))
    assert decide(ev, rules()).skipped == (("sms", "opt_out"),)


def test_opted_out_channel_with_unmatched_condition_is_not_reported() -> None:
    ev = event(priority="low", recipient=make_recipient(opt_out=["sms"]))
    assert decide(ev, rules()).skipped == ()


def test_unknown_type_uses_default_rule() -> None:
    d = decide(event(type="newsletter"), rules())
    assert (d.rule, d.channels) == ("*", ("email",))


def test_unknown_type_without_default_plans_nothing() -> None:
    obj = base_obj()
    del obj["rules"]["*"]
    rs = parse_ruleset(obj)
    assert isinstance(rs, RuleSet)
    d = decide(event(type="newsletter"), rs)
    assert (d.rule, d.channels, d.skipped) == (NO_RULE, (), ())


def test_region_condition() -> None:
    rs = rules()
    assert decide(event(type="eu_only", region="eu-west"), rs).channels == ("sms",)
    assert decide(event(type="eu_only", region="us-east"), rs).channels == ()


def test_priority_condition() -> None:
    rs = rules()
    assert decide(event(type="price_alert", priority="low"), rs).channels == ("push",)
    assert decide(event(type="price_alert", priority="normal"), rs).channels == ("push", "email")


def test_new_channel_is_data_not_code() -> None:
    obj = base_obj(channels=["email", "sms", "push", "webhook"])
    obj["rules"]["order_shipped"].append({"channel": "webhook"})
    rs = parse_ruleset(obj)
    assert isinstance(rs, RuleSet), rs
    d = decide(event(priority="high"), rs)
    assert d.channels == ("email", "push", "sms", "webhook")  # needs no address
    ev = event(recipient=make_recipient(opt_out=["webhook"]))
    assert decide(ev, rs).skipped == (("webhook", "opt_out"),)


def test_new_channel_with_an_address_field() -> None:
    obj = base_obj(channels=["email", "whatsapp"], addresses={"whatsapp": "phone"})
    obj["rules"] = {"order_shipped": [{"channel": "whatsapp"}, {"channel": "email"}]}
    rs = parse_ruleset(obj)
    assert isinstance(rs, RuleSet), rs
    assert decide(event(), rs).channels == ("whatsapp", "email")
    d = decide(event(recipient=make_recipient(phone=None)), rs)
    assert d.skipped == (("whatsapp", "no_address"),)
    assert address_for(event(), "whatsapp", rs) == "+15550000042"


def test_address_override_to_none_needs_no_address() -> None:
    rs = rules(addresses={"sms": None})
    ev = event(priority="high", recipient=make_recipient(phone=None))
    assert "sms" in decide(ev, rs).channels
    assert address_for(ev, "sms", rs) is None


def test_address_for_default_channels() -> None:
    rs, ev = rules(), event()
    assert address_for(ev, "email", rs) == "a@example.com"
    assert address_for(ev, "sms", rs) == "+15550000042"
    assert address_for(ev, "push", rs) == "tok-0000000000000042"


def test_decision_log_fields_have_no_pii() -> None:
    d = decide(event(event_id="e-3", priority="high", recipient=make_recipient(opt_out=["sms"])), rules())
    fields = d.log_fields()
    assert fields == {
        "event_id": "e-3",
        "channels": ["email", "push"],
        "skipped": {"sms": "opt_out"},
        "rule": "order_shipped",
        "rules_version": "t.1",
    }
    text = orjson.dumps(fields).decode()
    assert "example.com" not in text and "+1555" not in text


def test_decide_is_deterministic() -> None:
    rs, ev = rules(), event(priority="high")
    assert decide(ev, rs) == decide(ev, rs)


def test_version_may_be_an_int() -> None:
    assert rules(version=3).version == "3"


def _set(path: list[Any], value: Any) -> dict[str, Any]:
    obj = base_obj()
    target: Any = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return obj


def _delete(key: str) -> dict[str, Any]:
    obj = base_obj()
    del obj[key]
    return obj


@pytest.mark.parametrize(
    ("obj", "path_part"),
    [
        ([], ""),
        (None, ""),
        (_delete("version"), "version"),
        (base_obj(version=""), "version"),
        (base_obj(version=True), "version"),
        (base_obj(version=1.5), "version"),
        (_delete("channels"), "channels"),
        (base_obj(channels=[]), "channels"),
        (base_obj(channels="email"), "channels"),
        (base_obj(channels=["email", "email"]), "channels"),
        (base_obj(channels=["email", 3]), "channels[1]"),
        (_delete("rules"), "rules"),
        (base_obj(rules={}), "rules"),
        (base_obj(rules=[]), "rules"),
        (base_obj(extra=1), ""),
        (base_obj(addresses=["email"]), "addresses"),
        (base_obj(addresses={"fax": "phone"}), "addresses"),
        (base_obj(addresses={"sms": "pager"}), "addresses.sms"),
        (_set(["rules", "order_shipped"], None), "rules.order_shipped"),
        (_set(["rules", "order_shipped"], {"channel": "email"}), "rules.order_shipped"),
        (_set(["rules", "order_shipped", 0], "email"), "rules.order_shipped[0]"),
        (_set(["rules", "order_shipped", 0], {"channel": "fax"}), "rules.order_shipped[0]"),
        (_set(["rules", "order_shipped", 0], {"channel": ""}), "rules.order_shipped[0]"),
        (_set(["rules", "order_shipped", 0], {}), "rules.order_shipped[0]"),
        (_set(["rules", "order_shipped", 0, "prio"], 1), "rules.order_shipped[0]"),
        (_set(["rules", "order_shipped", 0, "when"], []), "rules.order_shipped[0].when"),
        (_set(["rules", "order_shipped", 0, "when"], {"hour": 3}), "rules.order_shipped[0].when"),
        (_set(["rules", "order_shipped", 1, "when", "app_installed"], "yes"), "app_installed"),
        (_set(["rules", "order_shipped", 2, "when", "priority"], "high"), "when.priority"),
        (_set(["rules", "order_shipped", 2, "when", "priority"], []), "when.priority"),
        (_set(["rules", "order_shipped", 2, "when", "priority"], ["hihg"]), "when.priority"),
        (_set(["rules", "order_shipped", 2, "when", "priority"], [1]), "when.priority[0]"),
        (_set(["rules", "eu_only", 0, "when", "regions"], []), "when.regions"),
        (_set(["rules", "eu_only", 0, "when", "regions"], "eu-west"), "when.regions"),
        (_set(["rules", "order_shipped", 2], {"channel": "email"}), "order_shipped[2]"),  # dup
        (_set(["rules", ""], []), "rules."),
        (_set(["rules", 5], []), "rules.5"),
    ],
)
def test_invalid_rulesets_are_refused(obj: Any, path_part: str) -> None:
    err = parse_ruleset(obj)
    assert isinstance(err, RuleSetError), err
    assert path_part in err.path
    assert err.message
    assert str(err)


def test_duplicate_channel_in_rule_is_refused() -> None:
    obj = base_obj()
    obj["rules"]["eu_only"].append({"channel": "sms", "when": {"priority": ["high"]}})
    err = parse_ruleset(obj)
    assert isinstance(err, RuleSetError)
    assert "twice" in err.message


def test_empty_rule_list_routes_nowhere() -> None:
    obj = base_obj()
    obj["rules"]["muted"] = []
    rs = parse_ruleset(obj)
    assert isinstance(rs, RuleSet)
    d = decide(event(type="muted"), rs)
    assert (d.rule, d.channels) == ("muted", ())


def test_known_priorities_are_configurable() -> None:
    obj = base_obj()
    obj["rules"]["eu_only"] = [{"channel": "sms", "when": {"priority": ["p1"]}}]
    assert isinstance(parse_ruleset(obj), RuleSetError)
    known = frozenset({"p1", "normal", "high", "critical"})
    assert isinstance(parse_ruleset(obj, priorities=known), RuleSet)


def test_json_and_yaml_give_the_same_ruleset(tmp_path: Path) -> None:
    from_json = ruleset_from_json(orjson.dumps(base_obj()))
    assert from_json == rules()
    yaml_file = tmp_path / "r.yaml"
    yaml_file.write_bytes(orjson.dumps(base_obj()))  # JSON is YAML
    assert load_ruleset_file(yaml_file) == rules()


def test_ruleset_serialisation_round_trips() -> None:
    rs = rules(addresses={"sms": None})
    assert parse_ruleset(ruleset_to_obj(rs)) == rs
    assert ruleset_from_json(ruleset_to_json(rs)) == rs
    repo = load_ruleset_file(ROOT / "conf" / "routing.yaml")
    assert isinstance(repo, RuleSet)
    assert ruleset_from_json(ruleset_to_json(repo)) == repo


def test_bad_sources_return_errors(tmp_path: Path) -> None:
    assert isinstance(ruleset_from_json(b"{nope"), RuleSetError)
    assert isinstance(load_ruleset_file(tmp_path / "missing.yaml"), RuleSetError)
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [unclosed\n")
    assert isinstance(load_ruleset_file(bad), RuleSetError)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    assert isinstance(load_ruleset_file(binary), RuleSetError)


def test_next_ruleset_keeps_current_on_bad_update() -> None:
    current = rules()
    new, err = next_ruleset(current, b'{"version": "x"}')
    assert new is current and isinstance(err, RuleSetError)
    newer = base_obj(version="t.2")
    new, err = next_ruleset(current, orjson.dumps(newer))
    assert err is None and new is not None and new.version == "t.2"
    new, err = next_ruleset(None, b"garbage")
    assert new is None and err is not None
