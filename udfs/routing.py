"""Routing: the decision table that maps an event to the channels it is delivered on.

A rule set is data (``conf/routing.yaml``, or the same shape JSON-encoded on the compacted
``notifications.rules`` control topic, newest wins)::

    version: "2026-11-28.1"
    channels: [email, sms, push]          # every channel a rule may name
    addresses:                            # optional; channel -> recipient field or null
      email: email                        #   (defaults: email->email, sms->phone,
      sms: phone                          #    push->push_token; other channels need none)
      push: push_token
    rules:
      order_shipped:                      # event type -> ordered list of channel rules
        - {channel: email}
        - {channel: push, when: {app_installed: true}}
        - {channel: sms, when: {priority: [high, critical]}}
      "*":                                # optional default for unknown types
        - {channel: email}

Conditions in ``when`` (all must hold): ``priority`` (allowed priorities),
``app_installed`` (bool), ``regions`` (allowed regions). A rule whose condition does not
hold plans nothing and is not reported. A rule whose condition holds is *planned* unless
the recipient opted out of the channel (skipped, reason ``opt_out``; always respected) or
the channel needs an address the recipient lacks (skipped, reason ``no_address``).
Planned channels keep the rule's order, so decisions are deterministic. A type without a
rule and without a ``"*"`` default gets an empty decision with ``rule == ""``.

:func:`parse_ruleset` validates and precompiles once; :func:`decide` is then a dict lookup
plus a few set-membership tests per rule.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import yaml

from udfs.events import DEFAULT_PRIORITIES, Event, fast_constructor

DEFAULT_RULE: Final = "*"
NO_RULE: Final = ""
SKIP_OPT_OUT: Final = "opt_out"
SKIP_NO_ADDRESS: Final = "no_address"

#: Recipient fields a channel may take its address from.
ADDRESS_FIELDS: Final = frozenset({"email", "phone", "push_token"})
#: Address field per well-known channel; a rule set's ``addresses`` overrides/extends it.
DEFAULT_ADDRESSES: Final[Mapping[str, str]] = {
    "email": "email",
    "sms": "phone",
    "push": "push_token",
}

_TOP_KEYS: Final = frozenset({"version", "channels", "addresses", "rules", "description"})
_ITEM_KEYS: Final = frozenset({"channel", "when"})
_WHEN_KEYS: Final = frozenset({"priority", "app_installed", "regions"})


@dataclass(frozen=True, slots=True)
class ChannelRule:
    """One compiled ``{channel, when}`` entry; None means "no condition on this"."""

    channel: str
    address_field: str | None = None
    priorities: frozenset[str] | None = None
    app_installed: bool | None = None
    regions: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class RuleSet:
    """A validated, precompiled routing table; build with :func:`parse_ruleset`."""

    version: str
    channels: tuple[str, ...]
    rules: Mapping[str, tuple[ChannelRule, ...]] = field(hash=False)
    addresses: Mapping[str, str | None] = field(hash=False)


@dataclass(frozen=True, slots=True)
class RuleSetError:
    """Why a rule set was refused: a message and the path of the offending element."""

    message: str
    path: str = ""

    def __str__(self) -> str:
        """Render as ``path: message``."""
        return f"{self.path}: {self.message}" if self.path else self.message


@dataclass(frozen=True, slots=True)
class Decision:
    """The routing decision for one event; holds no PII."""

    event_id: str
    channels: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]
    rule: str
    rules_version: str

    def log_fields(self) -> dict[str, Any]:
        """Return a JSON-ready dict for the decision log (identifiers and channels only)."""
        return {
            "event_id": self.event_id,
            "channels": list(self.channels),
            "skipped": {ch: reason for ch, reason in self.skipped},
            "rule": self.rule,
            "rules_version": self.rules_version,
        }


_make_decision: Callable[[str, tuple[str, ...], tuple[tuple[str, str], ...], str, str], Decision] = (
    fast_constructor(Decision)
)


class _Invalid(Exception):
    """Internal: raised while compiling, turned into a RuleSetError at the boundary."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


def _str_list(value: Any, path: str, what: str) -> list[str]:
    if type(value) is not list:
        raise _Invalid(f"must be a list of {what}", path)
    if not value:
        raise _Invalid("must not be empty (it would match nothing)", path)
    for i, item in enumerate(value):
        if type(item) is not str or not item:
            raise _Invalid(f"must be a non-empty string ({what})", f"{path}[{i}]")
    return value


def _compile_item(
    item: Any,
    path: str,
    declared: frozenset[str],
    addresses: Mapping[str, str | None],
    priorities: frozenset[str],
) -> ChannelRule:
    if not isinstance(item, dict):
        raise _Invalid("must be a mapping like {channel: email, when: {...}}", path)
    unknown = set(item) - _ITEM_KEYS
    if unknown:
        raise _Invalid(f"unknown keys {sorted(map(str, unknown))}; allowed: channel, when", path)
    channel = item.get("channel")
    if type(channel) is not str or not channel:
        raise _Invalid("'channel' must be a non-empty string", path)
    if channel not in declared:
        raise _Invalid(f"channel {channel!r} is not declared in 'channels'", path)
    when = item.get("when")
    prios: frozenset[str] | None = None
    app: bool | None = None
    regions: frozenset[str] | None = None
    if when is not None:
        if not isinstance(when, dict):
            raise _Invalid("'when' must be a mapping", f"{path}.when")
        unknown = set(when) - _WHEN_KEYS
        if unknown:
            raise _Invalid(
                f"unknown condition keys {sorted(map(str, unknown))}; "
                "allowed: priority, app_installed, regions",
                f"{path}.when",
            )
        if "priority" in when:
            p = _str_list(when["priority"], f"{path}.when.priority", "priorities")
            bad = [x for x in p if x not in priorities]
            if bad:
                raise _Invalid(f"unknown priorities {bad}", f"{path}.when.priority")
            prios = frozenset(p)
        if "app_installed" in when:
            if type(when["app_installed"]) is not bool:
                raise _Invalid("must be true or false", f"{path}.when.app_installed")
            app = when["app_installed"]
        if "regions" in when:
            regions = frozenset(_str_list(when["regions"], f"{path}.when.regions", "regions"))
    return ChannelRule(channel, addresses.get(channel), prios, app, regions)


def _compile(obj: Any, priorities: frozenset[str]) -> RuleSet:
    if not isinstance(obj, dict):
        raise _Invalid("a rule set must be a mapping with version, channels and rules", "")
    unknown = set(obj) - _TOP_KEYS
    if unknown:
        raise _Invalid(f"unknown keys {sorted(map(str, unknown))}; allowed: {sorted(_TOP_KEYS)}", "")

    version = obj.get("version")
    if type(version) is int:
        version = str(version)
    if type(version) is not str or not version:
        raise _Invalid("must be a non-empty string", "version")

    channels_raw = obj.get("channels")
    if channels_raw is None:
        raise _Invalid("is required (list of channel names)", "channels")
    channels = _str_list(channels_raw, "channels", "channel names")
    if len(set(channels)) != len(channels):
        raise _Invalid("contains duplicates", "channels")
    declared = frozenset(channels)

    addresses: dict[str, str | None] = {ch: DEFAULT_ADDRESSES.get(ch) for ch in channels}
    addr_raw = obj.get("addresses")
    if addr_raw is not None:
        if not isinstance(addr_raw, dict):
            raise _Invalid("must be a mapping channel -> recipient field", "addresses")
        for ch, fld in addr_raw.items():
            if ch not in declared:
                raise _Invalid(f"channel {ch!r} is not declared in 'channels'", "addresses")
            if fld is not None and fld not in ADDRESS_FIELDS:
                raise _Invalid(f"must be one of {sorted(ADDRESS_FIELDS)} or null", f"addresses.{ch}")
            addresses[ch] = fld

    rules_raw = obj.get("rules")
    if not isinstance(rules_raw, dict):
        raise _Invalid("is required (mapping event type -> list of channel rules)", "rules")
    if not rules_raw:
        raise _Invalid("must not be empty", "rules")
    rules: dict[str, tuple[ChannelRule, ...]] = {}
    for etype, items in rules_raw.items():
        path = f"rules.{etype}"
        if type(etype) is not str or not etype:
            raise _Invalid("event type must be a non-empty string", path)
        if type(items) is not list:
            raise _Invalid("must be a list of channel rules", path)
        compiled = tuple(
            _compile_item(item, f"{path}[{i}]", declared, addresses, priorities)
            for i, item in enumerate(items)
        )
        seen: set[str] = set()
        for i, rule in enumerate(compiled):
            if rule.channel in seen:
                raise _Invalid(f"channel {rule.channel!r} appears twice", f"{path}[{i}]")
            seen.add(rule.channel)
        rules[etype] = compiled
    return RuleSet(version, tuple(channels), rules, addresses)


def parse_ruleset(obj: Any, *, priorities: frozenset[str] = DEFAULT_PRIORITIES) -> RuleSet | RuleSetError:
    """Validate and precompile a rule set from its decoded YAML/JSON object."""
    try:
        return _compile(obj, priorities)
    except _Invalid as exc:
        return RuleSetError(exc.message, exc.path)


def load_ruleset_file(
    path: str | os.PathLike[str], *, priorities: frozenset[str] = DEFAULT_PRIORITIES
) -> RuleSet | RuleSetError:
    """Load and validate a YAML (or JSON) rule set file."""
    try:
        with open(path, encoding="utf-8") as fh:
            obj = yaml.safe_load(fh)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return RuleSetError(f"cannot read rule set: {exc}", os.fspath(path))
    return parse_ruleset(obj, priorities=priorities)


def ruleset_from_json(
    raw: bytes, *, priorities: frozenset[str] = DEFAULT_PRIORITIES
) -> RuleSet | RuleSetError:
    """Parse a rule set from a ``notifications.rules`` record (JSON, same shape as YAML)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return RuleSetError(f"not valid JSON: {exc}", "")
    return parse_ruleset(obj, priorities=priorities)


def ruleset_to_obj(ruleset: RuleSet) -> dict[str, Any]:
    """Return the YAML/JSON shape of a rule set; ``parse_ruleset`` of it is equal."""
    rules: dict[str, list[dict[str, Any]]] = {}
    for etype, compiled in ruleset.rules.items():
        items: list[dict[str, Any]] = []
        for r in compiled:
            when: dict[str, Any] = {}
            if r.priorities is not None:
                when["priority"] = sorted(r.priorities)
            if r.app_installed is not None:
                when["app_installed"] = r.app_installed
            if r.regions is not None:
                when["regions"] = sorted(r.regions)
            items.append({"channel": r.channel, "when": when} if when else {"channel": r.channel})
        rules[etype] = items
    return {
        "version": ruleset.version,
        "channels": list(ruleset.channels),
        "addresses": dict(ruleset.addresses),
        "rules": rules,
    }


def ruleset_to_json(ruleset: RuleSet) -> bytes:
    """Serialise a rule set for the ``notifications.rules`` control topic."""
    return orjson.dumps(ruleset_to_obj(ruleset))


def next_ruleset(current: RuleSet | None, raw: bytes) -> tuple[RuleSet | None, RuleSetError | None]:
    """Apply a control-topic record: a valid rule set replaces ``current``, else keep it."""
    parsed = ruleset_from_json(raw)
    if isinstance(parsed, RuleSetError):
        return current, parsed
    return parsed, None


def decide(event: Event, ruleset: RuleSet) -> Decision:
    """Decide which channels an event is delivered on, and which are skipped and why."""
    rule_key = event.type
    rules = ruleset.rules.get(rule_key)
    if rules is None:
        rules = ruleset.rules.get(DEFAULT_RULE)
        if rules is None:
            return _make_decision(event.event_id, (), (), NO_RULE, ruleset.version)
        rule_key = DEFAULT_RULE
    rec = event.recipient
    opt_out = rec.opt_out
    priority = event.priority
    planned: list[str] = []
    skipped: list[tuple[str, str]] = []
    for r in rules:
        if r.priorities is not None and priority not in r.priorities:
            continue
        if r.app_installed is not None and rec.app_installed is not r.app_installed:
            continue
        if r.regions is not None and event.region not in r.regions:
            continue
        ch = r.channel
        if opt_out and ch in opt_out:
            skipped.append((ch, SKIP_OPT_OUT))
        elif r.address_field is not None and not getattr(rec, r.address_field):
            skipped.append((ch, SKIP_NO_ADDRESS))
        else:
            planned.append(ch)
    return _make_decision(event.event_id, tuple(planned), tuple(skipped), rule_key, ruleset.version)


def address_for(event: Event, channel: str, ruleset: RuleSet) -> str | None:
    """Return the recipient address a channel delivers to (PII), or None if it needs none."""
    fld = ruleset.addresses.get(channel)
    if fld is None:
        return None
    value: str | None = getattr(event.recipient, fld)
    return value
