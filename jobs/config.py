"""One typed, frozen pipeline configuration: ``conf/pipeline.yaml`` + env + ``--set`` overrides.

Example::

    cfg = load_config(overrides=["kafka.bootstrap=127.0.0.1:9092", "job.parallelism=1"])
    cfg.kafka.bootstrap   # '127.0.0.1:9092'
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "conf" / "pipeline.yaml"
ENV_PREFIX = "NOTIFY__"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    """Broker connection and exactly-once settings."""

    bootstrap: str = ""
    group_id: str = "notify-fanout"
    starting_offsets: Literal["earliest", "latest", "committed"] = "earliest"
    bounded: bool = False
    transactional_id_prefix: str = "notify-fanout"
    transaction_timeout_ms: int = 900_000

    @property
    def enabled(self) -> bool:
        """Return True when a broker is configured (otherwise: embedded mode)."""
        return bool(self.bootstrap)


@dataclass(frozen=True, slots=True)
class TopicsConfig:
    """Topic names (defaults from DESIGN.md)."""

    events: str = "notifications.events"
    rules: str = "notifications.rules"
    outcomes: str = "notifications.outcomes"
    metrics: str = "notifications.metrics"
    dlq: str = "notifications.dlq"
    channel_prefix: str = "notifications."
    roundtrip: str = "notifications.roundtrip"

    def channel(self, name: str) -> str:
        """Return the delivery topic of channel ``name``."""
        return f"{self.channel_prefix}{name}"


@dataclass(frozen=True, slots=True)
class JobConfig:
    """Job shape and runtime settings."""

    name: str = "notify-fanout"
    mode: Literal["fanout", "linear"] = "fanout"
    parallelism: int = 2
    python_execution_mode: Literal["thread", "process"] = "thread"
    checkpoint_interval_ms: int = 2000
    checkpoint_timeout_ms: int = 60_000
    min_pause_between_checkpoints_ms: int = 500
    restart_attempts: int = 3
    restart_delay_ms: int = 1000


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """The whole pipeline configuration."""

    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    job: JobConfig = field(default_factory=JobConfig)


_SECTIONS: dict[str, type] = {"kafka": KafkaConfig, "topics": TopicsConfig, "job": JobConfig}
_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("kafka", "starting_offsets"): ("earliest", "latest", "committed"),
    ("job", "mode"): ("fanout", "linear"),
    ("job", "python_execution_mode"): ("thread", "process"),
}


def _set_dotted(tree: dict[str, Any], dotted: str, raw: str) -> None:
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override {dotted!r} must look like section.key=value")
    section, key = parts
    value = yaml.safe_load(raw) if raw != "" else ""
    tree.setdefault(section, {})[key] = value


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    choices = _CHOICES.get((section, key))
    if choices is not None and value not in choices:
        raise ConfigError(f"{section}.{key} must be one of {', '.join(choices)}, not {value!r}")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{section}.{key} must be true or false, not {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{section}.{key} must be an integer, not {value!r}")
    if isinstance(default, str):
        return "" if value is None else str(value)
    return value


def from_mapping(tree: Mapping[str, Any]) -> PipelineConfig:
    """Build a validated :class:`PipelineConfig` from a nested mapping."""
    sections: dict[str, Any] = {}
    for name, value in tree.items():
        cls = _SECTIONS.get(name)
        if cls is None:
            raise ConfigError(f"unknown config section {name!r} (known: {', '.join(_SECTIONS)})")
        if not isinstance(value, Mapping):
            raise ConfigError(f"config section {name!r} must be a mapping")
        defaults = cls()
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, item in value.items():
            if key not in known:
                raise ConfigError(f"unknown config key {name}.{key}")
            kwargs[key] = _coerce(name, key, item, getattr(defaults, key))
        sections[name] = cls(**kwargs)
    return PipelineConfig(**sections)


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
) -> PipelineConfig:
    """Load ``path`` (default ``conf/pipeline.yaml``), then env ``NOTIFY__S__K``, then ``--set``."""
    source = Path(path) if path else DEFAULT_CONFIG
    try:
        tree: dict[str, Any] = yaml.safe_load(source.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {source}: {exc.strerror}") from exc
    env = os.environ if env is None else env
    for name, raw in env.items():
        if name.startswith(ENV_PREFIX):
            dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
            _set_dotted(tree, dotted, raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        _set_dotted(tree, dotted, raw)
    return from_mapping(tree)
