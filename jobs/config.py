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
    # Barriers start aligned and turn unaligned when alignment takes longer than the timeout.
    # Behind linear mode's blocking calls an aligned barrier waits for every buffered record
    # and the exactly-once outputs commit only when a checkpoint completes (none did in 10 s
    # at 20 ms providers); the fan-out job's in-flight window batches are large, and
    # persisting them made its checkpoints 94 MB / 5-9 s and cut its throughput (measured,
    # docs/benchmarks.md). auto = on for linear, off for fanout.
    unaligned_checkpoints: Literal["auto", "always", "never"] = "auto"
    # rocksdb (the default): keyed state on local disk, incremental checkpoints; the 1 h
    # dedup window at capacity would fill the TaskManager heap (~305 B per id, ~1.4 GB/h at
    # 1,300 ids/s). Same throughput and p99 as the heap in alternating runs, ~10% more CPU
    # (docs/benchmarks.md). hashmap: on the JVM heap, for small windows.
    state_backend: Literal["hashmap", "rocksdb"] = "rocksdb"
    aligned_checkpoint_timeout_ms: int = 1000
    # Latency knobs (docs/benchmarks.md, "latency vs offered load"): how long a partly filled
    # network buffer may wait before it is sent (Flink's default is 100 ms, paid on each of
    # the exchanges an event crosses at low rates), and how often sources emit watermarks
    # (default 200 ms; the window fires on the first watermark past its end). 10/50 took
    # 30-400 ms off p99 at every load and cost no throughput (measured in one run each).
    buffer_timeout_ms: int = 10
    watermark_interval_ms: int = 50
    restart_attempts: int = 3
    restart_delay_ms: int = 1000
    # window batches are keyed by (region, bucket): buckets spread one region over subtasks
    buckets: int = 4
    # Failover testing only: the router raises once after N window batches, then writes
    # this marker file so the restarted job does not fail again. Empty = off.
    chaos_fail_once_file: str = ""
    chaos_fail_after_batches: int = 0
    # The JVM front's SQL: "current", or "legacy" (the first version, kept so that
    # `scripts/bench front` can measure before/after in one run).
    front: Literal["current", "legacy"] = "current"
    # Operator ids of the SQL front (source, dedup, window): "stable" ids come from the SQL
    # plan (table.exec.uid.generation ALWAYS), so adding or removing a channel keeps them;
    # "positional" is Flink's default, a hash of each node's place in the whole graph, which
    # versions before stable ids used (their savepoints: scripts/submit migrate-savepoint).
    sql_uids: Literal["stable", "positional"] = "stable"


@dataclass(frozen=True, slots=True)
class EventsConfig:
    """Validation, event time, dedup, batching and fan-in settings."""

    max_event_bytes: int = 65_536
    regions: tuple[str, ...] = ("eu-west", "us-east", "ap-south")
    max_out_of_orderness_ms: int = 2_000
    idle_timeout_ms: int = 5_000
    # Live jobs: a processing-time heartbeat source keeps the watermark moving once every
    # Kafka partition has been idle for idle_timeout_ms, so the windows before a pause in
    # traffic fire instead of waiting for the next event; one heartbeat row per this many ms
    # per subtask (50 = job.watermark_interval_ms works). 0 = off, the default: under load it
    # cost p99 (2.2 -> 6.2-6.7 s at 80%, docs/benchmarks.md), so it is for sparse traffic.
    heartbeat_ms: int = 0
    dedup_ttl_ms: int = 3_600_000
    window_ms: int = 1_000
    max_batch_size: int = 500
    digest_channels: tuple[str, ...] = ()
    fanin_timeout_ms: int = 60_000
    log_decisions: bool = False


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """Where the routing decision table comes from."""

    rules_file: str = str(ROOT / "conf" / "routing.yaml")


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """Where and how the channel branches deliver (per-channel policies in ``policies_file``)."""

    # Base URL of the providers (one /v1/<channel>/bulk endpoint per channel), e.g. the
    # simulator's http://127.0.0.1:8900. Empty = no provider calls: writing the batch to
    # notifications.<channel> is the delivery (the topic is the hand-off to a sender).
    provider_url: str = ""
    policies_file: str = str(ROOT / "conf" / "delivery.yaml")
    # how often a branch checks its in-flight provider calls (processing-time timer)
    poll_ms: int = 10


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """Span export and log files (trace ids are always propagated; export is off by default)."""

    # none | file (one JSON span per line in ``file``) | otlp (OTLP/HTTP to ``otlp_endpoint``)
    exporter: Literal["none", "file", "otlp"] = "none"
    file: str = ""
    otlp_endpoint: str = ""  # e.g. http://127.0.0.1:4318/v1/traces
    # Also append the job's JSON log lines here (they always go to the TaskManager log).
    log_file: str = ""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


@dataclass(frozen=True, slots=True)
class BranchConfig:
    """Per-channel branch shape: parallelism (0 = job parallelism) and slot sharing group."""

    parallelism: int = 0
    slot_sharing_group: str = ""


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """The whole pipeline configuration."""

    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    job: JobConfig = field(default_factory=JobConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    branches: tuple[tuple[str, BranchConfig], ...] = ()

    def branch(self, channel: str) -> BranchConfig:
        """Return the branch settings of ``channel`` (defaults when not configured)."""
        return dict(self.branches).get(channel, BranchConfig())


_SECTIONS: dict[str, type] = {
    "kafka": KafkaConfig,
    "topics": TopicsConfig,
    "job": JobConfig,
    "events": EventsConfig,
    "routing": RoutingConfig,
    "delivery": DeliveryConfig,
    "tracing": TracingConfig,
}
_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("kafka", "starting_offsets"): ("earliest", "latest", "committed"),
    ("job", "mode"): ("fanout", "linear"),
    ("job", "python_execution_mode"): ("thread", "process"),
    ("job", "state_backend"): ("hashmap", "rocksdb"),
    ("job", "unaligned_checkpoints"): ("auto", "always", "never"),
    ("job", "front"): ("current", "legacy"),
    ("job", "sql_uids"): ("stable", "positional"),
    ("tracing", "exporter"): ("none", "file", "otlp"),
    ("tracing", "log_level"): ("DEBUG", "INFO", "WARNING", "ERROR"),
}


def _set_dotted(tree: dict[str, Any], dotted: str, raw: str) -> None:
    parts = dotted.strip().split(".")
    if not (2 <= len(parts) <= 3) or not all(parts) or (len(parts) == 3 and parts[0] != "branches"):
        raise ConfigError(f"override {dotted!r} must look like section.key=value")
    value = yaml.safe_load(raw) if raw != "" else ""
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


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
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{section}.{key} must be a list of strings, not {value!r}")
        return tuple(value)
    return value


def _branches(value: Any) -> tuple[tuple[str, BranchConfig], ...]:
    if not isinstance(value, Mapping):
        raise ConfigError("config section 'branches' must map channel -> settings")
    out = []
    for channel, settings in value.items():
        if not isinstance(settings, Mapping):
            raise ConfigError(f"branches.{channel} must be a mapping")
        kwargs = {}
        for key, item in settings.items():
            if key not in ("parallelism", "slot_sharing_group"):
                raise ConfigError(f"unknown config key branches.{channel}.{key}")
            kwargs[key] = _coerce("branches", key, item, getattr(BranchConfig(), key))
        out.append((str(channel), BranchConfig(**kwargs)))
    return tuple(sorted(out))


def from_mapping(tree: Mapping[str, Any]) -> PipelineConfig:
    """Build a validated :class:`PipelineConfig` from a nested mapping."""
    sections: dict[str, Any] = {}
    for name, value in tree.items():
        if name == "branches":
            sections[name] = _branches(value or {})
            continue
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
    job = sections.get("job")
    if job is not None:
        # Flink: -1 = send a buffer only when full, 0 = after every record
        if job.buffer_timeout_ms < -1:
            raise ConfigError(f"job.buffer_timeout_ms must be -1 or more, not {job.buffer_timeout_ms}")
        # 0 would switch periodic watermarks off, and no window would ever fire
        if job.watermark_interval_ms < 1:
            raise ConfigError(
                f"job.watermark_interval_ms must be at least 1, not {job.watermark_interval_ms}"
            )
    events = sections.get("events")
    if events is not None and events.heartbeat_ms < 0:
        raise ConfigError(f"events.heartbeat_ms must be 0 (off) or more, not {events.heartbeat_ms}")
    tracing = sections.get("tracing")
    if tracing is not None:
        if tracing.exporter == "file" and not tracing.file:
            raise ConfigError("tracing.exporter=file needs tracing.file (a JSON-lines path)")
        if tracing.exporter == "otlp" and not tracing.otlp_endpoint:
            raise ConfigError("tracing.exporter=otlp needs tracing.otlp_endpoint")
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
