"""The notification fan-out job (fanout and linear modes).

Dataflow (fanout), with operator names as they appear in the Flink UI::

    source: events (Kafka, raw bytes + topic/partition/offset | embedded generator)
      │  JVM: JSON_VALUE(event_id, region, occurred_at) → rowtime, watermarks
      ▼
    dedup: event_id                      JVM (SQL keep-first, state TTL)
      ▼
    batch: region x bucket, tumbling window   JVM (level-1 divergence: hash partition by region)
      │  late rows (≤ watermark) bypass the window as single-record batches, marked late
      ▼
    route: validate + decide + plan      Python, one call per window batch
      ├── dlq ─────────────────────────────────────────────▶ notifications.dlq
      ├── channel-email ─▶ deliver-email ─▶ notifications.email   (level-2 divergence:
      ├── channel-sms   ─▶ deliver-sms   ─▶ notifications.sms      one branch per channel,
      └── channel-push  ─▶ deliver-push  ─▶ notifications.push     own parallelism + slot group)
      │ plans                 │ branch results (per batch)
      ▼                       ▼
    fan-in: window key (keyed state: per-event branch status, timeout timer)
      ▼
    notifications.outcomes        (+ per-batch metrics from each branch → notifications.metrics)

Linear mode runs the same source and dedup, then one Python operator that validates,
routes and delivers each event's channels one after another and emits its outcome.

Why the JVM does the per-event keyed work: see docs/architecture.md ("Where each step runs").
"""

from __future__ import annotations

import argparse
import base64
import calendar
import functools
import json
import logging
import sys
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `flink run -py jobs/fanout.py`: make `jobs` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyflink.common import Row, Types
from pyflink.datastream import (
    DataStream,
    KeyedProcessFunction,
    KeyedStream,
    OutputTag,
    ProcessFunction,
    RuntimeContext,
    StreamExecutionEnvironment,
)
from pyflink.datastream.functions import BroadcastProcessFunction
from pyflink.datastream.state import ListStateDescriptor, MapStateDescriptor, ValueStateDescriptor
from pyflink.java_gateway import get_gateway
from pyflink.table import DataTypes, Schema, StreamTableEnvironment

from jobs import codeversion
from jobs.config import PipelineConfig, load_config
from jobs.dispatch import RUNNING, Dispatcher
from jobs.flink_env import kafka_sink, kafka_source, make_env, source_watermarks
from udfs import logs, stages
from udfs.batching import message_traceparent
from udfs.delivery import (
    ChannelPolicy,
    PendingBatch,
    Step,
    batch_span,
    dead_letter_records,
    delivery_record,
    load_policies,
    new_pending,
)
from udfs.events import ValidationLimits
from udfs.routing import RuleSet, load_ruleset_file, next_ruleset
from udfs.tracing import SpanExport, TracingSettings, trace_id_of

log = logging.getLogger("notify.fanout")
ROOT = Path(__file__).resolve().parents[1]
PICKLED = Types.PICKLED_BYTE_ARRAY()
DLQ_TAG = OutputTag("dlq", Types.STRING())
# Streams that feed a keyed operator carry Row(key, value): the producer computes the key,
# so no key_by selector operator is needed (see keyed()).
KEYED = Types.ROW([Types.STRING(), PICKLED])
RESULTS_TAG = OutputTag("branch-results", KEYED)
METRICS_TAG = OutputTag("metrics", KEYED)


@functools.cache
def channel_tag(channel: str) -> OutputTag:
    """Return the side output carrying one channel's Row(batch id, (window key, batch)) out of the router.

    PICKLED values are Python objects: PyFlink pickles them once between operators.
    """
    return OutputTag(f"channel-{channel}", KEYED)


def keyed(stream: DataStream) -> KeyedStream:
    """Key a stream of ``Row(key, value)`` by its first field, with no Python operator.

    PyFlink's ``key_by(selector)`` adds a Python map (``_stream_key_by_map_operator``) that
    unpickles every value, calls the selector and pickles ``Row(key, value)`` again: in the
    profile it cost as much as a stage. Here the producers emit ``Row(key, value)``
    themselves and this does only the Java half of ``key_by`` (the same ``KeyByKeySelector``
    and operator input type, so the keyed operator sees exactly what ``key_by`` gives it).
    """
    j_keyed = stream._j_data_stream.keyBy(
        get_gateway().jvm.KeyByKeySelector(), Types.ROW([Types.STRING()]).get_java_type_info()
    )
    return KeyedStream(j_keyed, PICKLED, stream)


def linear_tag(channel: str) -> OutputTag:
    """Return the side output carrying one channel's records out of the linear operator."""
    return OutputTag(f"linear-{channel}", Types.STRING())


# --- JVM front: source table, dedup, window batching -------------------------------------------
_S = "CAST(`raw` AS STRING)"
_OCCURRED = f"JSON_VALUE({_S}, '$.occurred_at')"
# A record without a parsable occurred_at gets the epoch as its time: it must not move the
# watermark, so it is "late", bypasses the windows and reaches validation (and the DLQ) alone.
ROWTIME_EXPR = (
    f"COALESCE(TO_TIMESTAMP(REPLACE(REPLACE(REPLACE({_OCCURRED}, 'T', ' '), 'Z', ''), '+00:00', '')), "
    "TIMESTAMP '1970-01-01 00:00:00.000')"
)
HAS_TIME_EXPR = (
    f"TO_TIMESTAMP(REPLACE(REPLACE(REPLACE({_OCCURRED}, 'T', ' '), 'Z', ''), '+00:00', '')) IS NOT NULL"
)
EVENT_ID_EXPR = f"JSON_VALUE({_S}, '$.event_id')"
REGION_EXPR = f"COALESCE(JSON_VALUE({_S}, '$.region'), '_invalid')"
# A redriven event (scripts/redrive) keeps its event id and carries {"redrive": {"id": ...}}:
# it passes dedup once per redrive run; the providers' idempotency keys (event_id:channel)
# still stop a second delivery of what was delivered before. The POSITION test is a cheap
# guard that spares the JSON parse for every other record.
REDRIVE_EXPR = f"CASE WHEN POSITION('\"redrive\"' IN {_S}) > 0 THEN JSON_VALUE({_S}, '$.redrive.id') END"


def _interval(ms: int) -> str:
    """Return a SQL day-time interval literal for ``ms`` milliseconds."""
    return f"INTERVAL '{ms // 1000}.{ms % 1000:03d}' SECOND"


def kafka_events_table(t_env: StreamTableEnvironment, cfg: PipelineConfig) -> None:
    """Register ``events_in``: the events topic as raw bytes with Kafka coordinates."""
    bounded = "'scan.bounded.mode' = 'latest-offset'," if cfg.kafka.bounded else ""
    startup = {
        "earliest": "'scan.startup.mode' = 'earliest-offset',",
        "latest": "'scan.startup.mode' = 'latest-offset',",
        "committed": "'scan.startup.mode' = 'group-offsets', 'properties.auto.offset.reset' = 'earliest',",
    }[cfg.kafka.starting_offsets]
    # legacy: a second JSON parse of occurred_at; current derives has_time from rowtime
    has_time = f"`has_time` AS {HAS_TIME_EXPR}," if cfg.job.front == "legacy" else ""
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE events_in (
          `raw` BYTES,
          `src_topic` STRING METADATA FROM 'topic' VIRTUAL,
          `src_partition` INT METADATA FROM 'partition' VIRTUAL,
          `src_offset` BIGINT METADATA FROM 'offset' VIRTUAL,
          `kafka_ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
          `event_id` AS {EVENT_ID_EXPR},
          `region_key` AS {REGION_EXPR},
          `redrive_id` AS {REDRIVE_EXPR},
          `rowtime` AS {ROWTIME_EXPR},
          {has_time}
          `proc_time` AS PROCTIME(),
          WATERMARK FOR `rowtime` AS `rowtime` - {_interval(cfg.events.max_out_of_orderness_ms)}
        ) WITH (
          'connector' = 'kafka',
          'topic' = '{cfg.topics.events}',
          'properties.bootstrap.servers' = '{cfg.kafka.bootstrap}',
          'properties.group.id' = '{cfg.kafka.group_id}',
          'properties.isolation.level' = 'read_committed',
          {startup}
          {bounded}
          'format' = 'raw'
        )""")
    if cfg.events.heartbeat_ms and not cfg.kafka.bounded:
        heartbeat_table(t_env, cfg)


HEARTBEAT_TABLE = "heartbeat_in"


def heartbeat_table(t_env: StreamTableEnvironment, cfg: PipelineConfig) -> None:
    """Register ``heartbeat_in``: a processing-time clock whose watermark joins the events'.

    The event-time watermark only moves when events arrive, so the windows before a pause in
    traffic would wait for the next event (minutes, at night). :func:`front_sql` unions
    this table into the front, with a filter no row passes: only its watermark (processing
    time - max out-of-orderness) reaches the windows. While any Kafka partition is active
    the union's watermark is the minimum, i.e. the events'; once they are all idle
    (``events.idle_timeout_ms``) the heartbeat's takes over and the open windows fire. An
    event that arrives afterwards with an older ``occurred_at`` takes the late path
    (delivered as its own batch, never dropped). Live jobs only: a bounded job must end
    when its input does.
    """
    period = cfg.events.heartbeat_ms
    per_s = max(1, cfg.job.parallelism * 1000 // period)  # one row per period per subtask
    # Each row's time leads the wall clock by one period, so between rows the heartbeat's
    # watermark is never behind wall clock - out-of-orderness, and while events flow theirs is
    # the minimum. (A first version stamped rows with the wall clock at 1 row/s, so its
    # watermark lagged up to 1 s. Even with this fix, p99 at 80% load was ~3x with the
    # heartbeat on, which is why it is off by default: docs/benchmarks.md, "Known issues".)
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE {HEARTBEAT_TABLE} (
          `beat` INT,
          `rowtime` AS CAST(CURRENT_TIMESTAMP AS TIMESTAMP(3)) + {_interval(period)},
          `proc_time` AS PROCTIME(),
          WATERMARK FOR `rowtime` AS `rowtime` - {_interval(cfg.events.max_out_of_orderness_ms)}
        ) WITH (
          'connector' = 'datagen',
          'rows-per-second' = '{per_s}',
          'fields.beat.kind' = 'random',
          'fields.beat.min' = '0',
          'fields.beat.max' = '0'
        )""")


def embedded_events_table(
    env: StreamExecutionEnvironment, t_env: StreamTableEnvironment, records: list[bytes], cfg: PipelineConfig
) -> None:
    """Register ``events_in`` over in-memory records (embedded mode and tests)."""
    now_ms = int(time.time() * 1000)
    rows = [Row(raw, None, 0, i, now_ms) for i, raw in enumerate(records)]
    ds = env.from_collection(
        rows,
        type_info=Types.ROW_NAMED(
            ["raw", "src_topic", "src_partition", "src_offset", "kafka_ms"],
            [Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.STRING(), Types.INT(), Types.LONG(), Types.LONG()],
        ),
    )
    schema = (
        Schema.new_builder()
        .column("raw", DataTypes.BYTES())
        .column("src_topic", DataTypes.STRING())
        .column("src_partition", DataTypes.INT())
        .column("src_offset", DataTypes.BIGINT())
        .column("kafka_ms", DataTypes.BIGINT())
        .column_by_expression("kafka_ts", "TO_TIMESTAMP_LTZ(`kafka_ms`, 3)")
        .column_by_expression("event_id", EVENT_ID_EXPR)
        .column_by_expression("region_key", REGION_EXPR)
        .column_by_expression("redrive_id", REDRIVE_EXPR)
        .column_by_expression(
            "rowtime", ROWTIME_EXPR.replace("`kafka_ts`", "TO_TIMESTAMP_LTZ(`kafka_ms`, 3)")
        )
        .column_by_expression("proc_time", "PROCTIME()")
        .column_by_expression("has_time", HAS_TIME_EXPR)
        .watermark("rowtime", f"`rowtime` - {_interval(cfg.events.max_out_of_orderness_ms)}")
        .build()
    )
    t_env.create_temporary_view("events_in", t_env.from_data_stream(ds, schema))


def front_sql(t_env: StreamTableEnvironment, cfg: PipelineConfig) -> None:
    """Register ``deduped`` (first sighting per event_id) and ``batches`` (window batches).

    ``job.front: legacy`` is the first version (kept for before/after benchmarks): a second
    JSON parse for ``has_time``, three ARRAY_AGGs per window and two-phase aggregation. The
    current front derives ``has_time`` from the rowtime, aggregates one array of
    ``partition:offset:base64`` strings, and aggregates in one phase (a local ARRAY_AGG
    only to merge the arrays again costs more than the shuffle it saves).
    """
    buckets = max(1, cfg.job.buckets)
    legacy = cfg.job.front == "legacy"
    if not legacy:
        t_env.get_config().set("table.optimizer.agg-phase-strategy", "ONE_PHASE")
    columns = t_env.from_path("events_in").get_schema().get_field_names()
    source = (
        "events_in"
        if "has_time" in columns
        else "(SELECT *, rowtime > TIMESTAMP '1970-01-01 00:00:00' AS has_time FROM events_in)"
    )
    if HEARTBEAT_TABLE in t_env.list_temporary_tables() and "has_time" not in columns:
        # only the heartbeat's watermark gets through: beat is always 0 (see heartbeat_table)
        cols = "`raw`, src_topic, src_partition, src_offset, kafka_ts, event_id, region_key, redrive_id"
        source = f"""(
            SELECT {cols}, rowtime, proc_time, rowtime > TIMESTAMP '1970-01-01 00:00:00' AS has_time
            FROM events_in
            UNION ALL
            SELECT CAST(NULL AS BYTES), CAST(NULL AS STRING), CAST(NULL AS INT), CAST(NULL AS BIGINT),
                   CAST(NULL AS TIMESTAMP_LTZ(3)), CAST(NULL AS STRING), CAST(NULL AS STRING),
                   CAST(NULL AS STRING), rowtime, proc_time, FALSE
            FROM {HEARTBEAT_TABLE} WHERE beat < 0)"""
    t_env.execute_sql(f"""
        CREATE TEMPORARY VIEW deduped AS
        SELECT `raw`, src_topic, src_partition, src_offset, region_key, dedup_key, rowtime, has_time,
               has_time AND CURRENT_WATERMARK(rowtime) IS NOT NULL
                        AND rowtime > CURRENT_WATERMARK(rowtime) AS windowed,
               COALESCE(has_time AND rowtime <= CURRENT_WATERMARK(rowtime), FALSE) AS is_late
        FROM (
          SELECT *, ROW_NUMBER() OVER (PARTITION BY dedup_key ORDER BY proc_time ASC) AS rn FROM (
            SELECT *, CASE
                WHEN event_id IS NULL THEN
                  CONCAT('#', COALESCE(src_topic, ''), ':', CAST(src_partition AS STRING), ':',
                         CAST(src_offset AS STRING))
                WHEN redrive_id IS NULL THEN event_id
                ELSE CONCAT(event_id, '#redrive:', redrive_id) END AS dedup_key
            FROM {source}))
        WHERE rn = 1""")
    window = cfg.events.window_ms
    t_env.execute_sql(f"""
        CREATE TEMPORARY VIEW on_time AS
        SELECT *, MOD(ABS(HASH_CODE(dedup_key)), {buckets}) AS bucket FROM deduped WHERE windowed""")
    if not legacy:
        rec = (
            "CONCAT(COALESCE(CAST(src_partition AS STRING), ''), ':', "
            "COALESCE(CAST(src_offset AS STRING), ''), ':', TO_BASE64(`raw`))"
        )
        t_env.execute_sql(f"""
            CREATE TEMPORARY VIEW batches AS
            SELECT region_key, bucket, CAST(window_start AS STRING) AS w_start,
                   CAST(window_end AS STRING) AS w_end, FALSE AS late,
                   MAX(src_topic) AS src_topic, ARRAY_AGG({rec}) AS recs
            FROM TABLE(TUMBLE(TABLE on_time, DESCRIPTOR(rowtime), {_interval(window)}))
            GROUP BY region_key, bucket, window_start, window_end
            UNION ALL
            SELECT region_key, -1 AS bucket, CAST(CAST(rowtime AS TIMESTAMP(3)) AS STRING) AS w_start,
                   CAST(CAST(rowtime AS TIMESTAMP(3)) AS STRING) AS w_end, is_late AS late,
                   src_topic, ARRAY[{rec}] AS recs
            FROM deduped
            WHERE NOT windowed""")
        return
    t_env.execute_sql(f"""
        CREATE TEMPORARY VIEW batches AS
        SELECT region_key, bucket, CAST(window_start AS STRING) AS w_start,
               CAST(window_end AS STRING) AS w_end, FALSE AS late,
               MAX(src_topic) AS src_topic, ARRAY_AGG(TO_BASE64(`raw`)) AS raws,
               ARRAY_AGG(src_partition) AS parts, ARRAY_AGG(src_offset) AS offs
        FROM TABLE(TUMBLE(TABLE on_time, DESCRIPTOR(rowtime), {_interval(window)}))
        GROUP BY region_key, bucket, window_start, window_end
        UNION ALL
        SELECT region_key, -1 AS bucket, CAST(CAST(rowtime AS TIMESTAMP(3)) AS STRING) AS w_start,
               CAST(CAST(rowtime AS TIMESTAMP(3)) AS STRING) AS w_end, is_late AS late,
               src_topic, ARRAY[TO_BASE64(`raw`)] AS raws, ARRAY[src_partition] AS parts,
               ARRAY[src_offset] AS offs
        FROM deduped
        WHERE NOT windowed""")


def _epoch_ms(text: str) -> int:
    """Return epoch ms of a SQL TIMESTAMP(3) rendered as text in UTC ('2026-11-28 17:00:00.123')."""
    dt = datetime.fromisoformat(text.replace(" ", "T"))
    return calendar.timegm(dt.timetuple()) * 1000 + dt.microsecond // 1000


def _records(row: Any) -> list[stages.SourceRecord]:
    # Separate scalar arrays on purpose: ARRAY_AGG(ROW(...)) in Flink 2.2.1 returns the same
    # (reused) row object for every element (see docs/architecture.md).
    # The raw bytes travel base64-encoded: a Java byte[] reaches thread-mode Python as a
    # proxy that bytes(...) copies element by element (measured: the router was 100% busy).
    topic = row[5]
    b64 = base64.b64decode
    if len(row) == 7:  # current front: one array of "partition:offset:base64"
        out = []
        for rec in row[6]:
            p, o, raw = rec.split(":", 2)
            out.append(stages.SourceRecord(b64(raw), topic, int(p) if p else None, int(o) if o else None))
        return out
    return [
        stages.SourceRecord(b64(raw), topic, p, o) for raw, p, o in zip(row[6], row[7], row[8], strict=True)
    ]


def _window(row: Any) -> stages.Window:
    region, bucket, start, end, late = row[0], row[1], _epoch_ms(row[2]), _epoch_ms(row[3]), bool(row[4])
    if bucket < 0:  # a single record that bypassed the windows (late, no event time, or start-up)
        first = str(row[6][0]).rsplit(":", 1)[-1].encode()
        key = f"single|{region}|{start}|{zlib.crc32(first):08x}"  # deterministic across restarts
    else:
        key = f"{region}|{bucket}|{start}"
    return stages.Window(key, region, start, end, late)


# --- Python operators (thin: load state, call udfs.stages, emit) --------------------------------
@dataclass(frozen=True)
class JobSettings:
    """What the Python operators need, pickled into them at build time."""

    stage: stages.StageConfig
    rules_path: str
    channels: tuple[str, ...]
    chaos_fail_once_file: str = ""
    chaos_fail_after_batches: int = 0
    code_version: str = ""
    log_decisions: bool = False
    address_fields: tuple[tuple[str, str], ...] = ()
    tracing: TracingSettings = field(default_factory=TracingSettings)


def _counter(owner: Any, ctx: RuntimeContext, name: str):
    """Register ``notify.<name>`` for ``owner``, to be published at 0 by its first element."""
    counter = ctx.get_metrics_group().add_group("notify").counter(name)
    owner.__dict__.setdefault("_unpublished", []).append(counter)
    return counter


def _publish_counters(owner: Any) -> None:
    """Move each new counter by 0, from inside an element or timer.

    Process mode reports a Python counter to the JVM (UI, REST, Prometheus) only once a
    bundle has moved it, and ``open()`` runs outside any bundle: without this, a counter
    that stays 0 (retries, dead letters) would be missing from the UI instead of showing 0.
    Thread mode registers counters on creation; the extra 0 costs nothing there.
    """
    for counter in owner._unpublished:
        counter.inc(0)
    owner._unpublished = []


class _Level:
    """A gauge-like value (breaker state, calls in flight) kept in a Flink Counter.

    PyFlink's Python gauges are read by the TaskManager's metrics thread, which calls into
    the embedded interpreter: during benchmarks, a metrics query (REST, UI, Prometheus) that
    came after a job's Python operators had closed crashed the whole TaskManager JVM (SIGSEGV
    in ``take_gil``/``_PyEvalFramePushAndInit`` on thread ``flink-metrics-*``, four hs_err
    logs). A Counter's value lives in the JVM and only the operator thread moves it, by the
    change since the last report. The value is as fresh as the branch's last call (every
    element and poll timer).
    """

    def __init__(self, counter) -> None:
        self.counter = counter
        self.value = 0

    def set(self, value: int) -> None:
        """Move the counter to ``value``."""
        delta = value - self.value
        if delta > 0:
            self.counter.inc(delta)
        elif delta < 0:
            self.counter.dec(-delta)
        self.value = value


def _open_logs(tracing: TracingSettings) -> None:
    """Make this interpreter's ``notify`` loggers write masked JSON lines (thread mode: the TaskManager's)."""
    logs.configure(tracing.log_file, tracing.log_level)


def _log_dead_letters(pb: PendingBatch, step: Step, channel: str) -> None:
    """Log one warning per dead-lettered message: event id, trace id, reason (no address)."""
    for d in step.dead:
        tp = message_traceparent(d.message)
        for eid in d.message.event_ids:
            log.warning(
                "dead-lettered",
                extra=logs.event_extra(
                    eid,
                    trace_id_of(tp),
                    span_id=tp[36:52],
                    channel=channel,
                    reason=d.reason,
                    error=d.error,
                    attempts=d.attempts,
                    batch_id=pb.batch.batch_id,
                ),
            )


def _open_rules(settings: JobSettings) -> RuleSet:
    """Check the TaskManager runs the job's code, then load the initial routing table."""
    codeversion.check(settings.code_version)
    rules = load_ruleset_file(settings.rules_path)
    if not isinstance(rules, RuleSet):
        raise ValueError(f"invalid routing table {settings.rules_path}: {rules}")
    return rules


class _RouterBase:
    """Shared router logic: rules, metrics and emitting one routed window batch."""

    settings: JobSettings
    _unpublished: list[Any]  # see _publish_counters

    def _open(self, ctx: RuntimeContext) -> None:
        _open_logs(self.settings.tracing)
        self.file_rules = _open_rules(self.settings)
        self.rules_cache: tuple[str, RuleSet] | None = None
        self.seen_batches = 0
        self.events_in = _counter(self, ctx, "events_in")
        self.dlq_out = _counter(self, ctx, "dlq")
        self.batches_in = _counter(self, ctx, "window_batches")
        self.late_in = _counter(self, ctx, "late_events")
        self.routed = {ch: _counter(self, ctx, f"routed_{ch}") for ch in self.settings.channels}

    def _chaos(self) -> None:
        """Fail once (failover tests): after N batches, if the marker file does not exist yet."""
        marker = self.settings.chaos_fail_once_file
        due = self.seen_batches >= self.settings.chaos_fail_after_batches
        if marker and due and not Path(marker).exists():
            Path(marker).write_text("failed once\n")
            raise RuntimeError("chaos: injected failure (job.chaos_fail_once_file)")

    def _route(self, row: Any, rules: RuleSet):
        if self._unpublished:
            _publish_counters(self)
        self.seen_batches += 1
        self._chaos()
        window = _window(row)
        records = _records(row)
        routed = stages.route_batch(
            records, window, rules, self.settings.stage, log_decisions=self.settings.log_decisions
        )
        self.batches_in.inc()
        self.events_in.inc(len(records))
        if window.late:
            self.late_in.inc(len(records))
        for raw in routed.dlq:
            self.dlq_out.inc()
            yield DLQ_TAG, raw.decode()
        if self.settings.log_decisions:  # off by default: per-event logging costs more than routing
            for decision in routed.decisions:
                stages.log_decision(log, decision)
        for batch in routed.batches:
            counter = self.routed.get(batch.channel)
            if counter is not None:
                counter.inc(len(batch.event_ids))
            yield channel_tag(batch.channel), Row(batch.batch_id, (window.key, batch))
        if routed.plans:
            yield Row(window.key, ("plan", window.key, stages.pack(routed.plans)))


class Router(ProcessFunction, _RouterBase):
    """route: validate + decide + plan one window batch (rules from conf/routing.yaml)."""

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        """Load the routing table and register metrics."""
        self._open(runtime_context)

    def process_element(self, value, ctx):
        """Route one window batch."""
        yield from self._route(value, self.file_rules)


RULES_STATE = MapStateDescriptor("routing-rules", Types.STRING(), Types.STRING())


class BroadcastRouter(BroadcastProcessFunction, _RouterBase):
    """route: like Router, with rule sets from the rules topic as broadcast state (newest wins)."""

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        """Load the fallback routing table and register metrics."""
        self._open(runtime_context)
        self.rules_rejected = _counter(self, runtime_context, "rules_rejected")

    def _current(self, ctx) -> RuleSet:
        raw = ctx.get_broadcast_state(RULES_STATE).get("current")
        if raw is None:
            return self.file_rules
        if self.rules_cache is None or self.rules_cache[0] != raw:
            rules, _ = next_ruleset(None, raw.encode())
            self.rules_cache = (raw, rules if rules is not None else self.file_rules)
        return self.rules_cache[1]

    def process_element(self, value, ctx):
        """Route one window batch with the current rules."""
        yield from self._route(value, self._current(ctx))

    def process_broadcast_element(self, value, ctx):
        """Accept a new rule set, or reject it to the DLQ and keep the last good one."""
        rules, error = next_ruleset(None, value.encode())
        if error is not None or rules is None:
            self.rules_rejected.inc()
            log.warning("rules rejected", extra={"fields": {"error": str(error)}})
            from udfs.dlq import dlq_record

            yield DLQ_TAG, dlq_record(value.encode(), "invalid_rules", str(error), "rules").decode()
            return
        ctx.get_broadcast_state(RULES_STATE).put("current", value)
        log.info("rules applied", extra={"fields": {"rules_version": rules.version}})


@dataclass(frozen=True)
class DeliverSettings:
    """What one ``deliver-<channel>`` branch needs, pickled into it at build time."""

    channel: str
    window_ms: int
    provider_url: str = ""  # empty: the channel topic is the delivery (no provider calls)
    policy: ChannelPolicy = field(default_factory=ChannelPolicy)
    parallelism: int = 1
    address_field: str | None = None
    poll_ms: int = 10
    # Bounded runs deliver each batch to its end before taking the next: Flink fires no
    # processing-time timer after the end of input, so nothing may be left pending then.
    synchronous: bool = False
    tracing: TracingSettings = field(default_factory=TracingSettings)


class Deliver(KeyedProcessFunction):
    """deliver-<channel>: deliver one batch (keyed by batch id); emit records, results, metrics, DLQ.

    With a provider configured, the batch waits in keyed state while its bulk call runs in
    the dispatcher's pool; a processing-time timer polls for the answer, retries after the
    backoff, or re-checks a deferral (breaker open, rate limit). Pending batches survive a
    failover in that state and are re-sent with the same idempotency keys.

    Bounded runs (``kafka.bounded``) and an overloaded branch (more than
    ``max_pending_batches`` waiting) deliver synchronously instead: the operator thread
    waits out backoff and deferrals, which backpressures the branch.
    """

    def __init__(self, settings: DeliverSettings) -> None:
        self.settings = settings
        self.dispatcher: Dispatcher | None = None
        self.spans: SpanExport | None = None

    def open(self, runtime_context: RuntimeContext) -> None:
        """Register state and metrics; start the dispatcher when a provider is configured."""
        s = self.settings
        _open_logs(s.tracing)
        self.spans = SpanExport.get(s.tracing)  # None unless tracing.exporter is set
        self.state = runtime_context.get_state(ValueStateDescriptor("pending-batch", PICKLED))
        self._cache: dict[str, PendingBatch] = {}  # the same objects as in the state, unpickled
        self.batches = _counter(self, runtime_context, "batches")
        self.delivered = _counter(self, runtime_context, "delivered")
        self.dead_lettered = _counter(self, runtime_context, "dead_lettered")
        self.retries = _counter(self, runtime_context, "retries")
        self.calls = _counter(self, runtime_context, "provider_calls")
        self.deferred = _counter(self, runtime_context, "deferred")
        group = runtime_context.get_metrics_group().add_group("notify")
        # distributions (count/min/max/mean in the UI): one update per batch / per message
        self.batch_size = group.distribution("batch_size")
        self.latency = group.distribution("latency_ms")  # occurred_at -> accepted by the provider
        if s.provider_url:
            d = Dispatcher(
                s.provider_url,
                s.channel,
                s.policy,
                s.parallelism,
                s.address_field,
            )
            self.dispatcher = d
            self.levels = (
                (_Level(_counter(self, runtime_context, "breaker_state")), d.breaker_state),
                (_Level(_counter(self, runtime_context, "in_flight")), lambda: d.in_flight),
                (_Level(_counter(self, runtime_context, "pending_batches")), lambda: d.pending_batches),
            )

    def _report_levels(self) -> None:
        for level, read in self.levels:
            level.set(read())

    def close(self) -> None:
        """Stop the dispatcher's workers; export the spans still buffered."""
        if self.dispatcher is not None:
            self.dispatcher.close()
        if self.spans is not None:
            self.spans.flush()

    def process_element(self, value, ctx):
        """Accept one (window key, batch): deliver it, or start delivering it."""
        if self._unpublished:
            _publish_counters(self)
        window_key, batch = value
        now_ms = int(time.time() * 1000)
        self.batches.inc()
        d = self.dispatcher
        if d is None:
            delivered = stages.deliver_to_topic(batch, window_key, now_ms)
            self.delivered.inc(len(delivered.results))
            self.batch_size.update(len(batch.items))
            for msg in batch.items:
                self.latency.update(max(0, now_ms - msg.occurred_at_ms))
            if self.spans is not None:
                self.spans.export(stages.topic_batch_span(batch, window_key, now_ms))
            yield delivered.record.decode()
            yield RESULTS_TAG, Row(window_key, ("results", window_key, stages.pack(delivered.results)))
            m = stages.batch_metrics(batch, delivered.results, self.settings.window_ms)
            yield METRICS_TAG, Row(m.key, m)
            return
        pb = new_pending(window_key, batch, now_ms)
        busy = self.state.value() is not None  # a batch id seen twice: never overwrite its state
        if self.settings.synchronous or busy or d.pending_batches >= d.policy.max_pending_batches:
            yield from self._finish(pb)
        else:
            d.pending_batches += 1
            self._cache[batch.batch_id] = pb
            yield from self._advance(pb, ctx, now_ms)
        self._report_levels()

    def on_timer(self, timestamp, ctx):
        """Poll for the answer, retry after the backoff, or re-check a deferral."""
        if self._unpublished:
            _publish_counters(self)
        if self.dispatcher is None:
            return
        key = ctx.get_current_key()
        pb: PendingBatch | None = self._cache.get(key)
        if pb is None:  # after a restore: the state is the truth
            pb = self.state.value()
            if pb is None:
                return
            self._cache[key] = pb
        yield from self._advance(pb, ctx, int(time.time() * 1000), stored=True)
        self._report_levels()

    def _advance(self, pb: PendingBatch, ctx, now_ms: int, stored: bool = False):
        # `stored`: the state already holds pb as it is; write it only when it changed (a
        # batch is pickled on every write, and a poll of a running call changes nothing).
        d = self.dispatcher
        assert d is not None
        key = pb.batch.batch_id
        polled = d.poll(key)
        if polled == RUNNING:
            ctx.timer_service().register_processing_time_timer(now_ms + self.settings.poll_ms)
            if not stored:
                self.state.update(pb)
            return
        dirty = not stored
        if isinstance(polled, tuple):
            yield from self._emit(pb, d.apply(pb, polled[0], polled[1], now_ms), now_ms)
            dirty = True
        if pb.complete:
            self.state.clear()
            self._cache.pop(key, None)
            d.pending_batches = max(0, d.pending_batches - 1)
            if self.spans is not None:
                self.spans.export(batch_span(pb, now_ms))
            return
        timers = ctx.timer_service()
        if pb.next_due_ms > now_ms:
            timers.register_processing_time_timer(pb.next_due_ms)
        else:
            wait_s, indexes = d.admit(pb, time.monotonic())
            if wait_s > 0:
                self.deferred.inc()
                timers.register_processing_time_timer(now_ms + max(1, int(wait_s * 1000)))
            else:
                d.start(key, pb, indexes)
                self.calls.inc()
                timers.register_processing_time_timer(now_ms + self.settings.poll_ms)
        if dirty:
            self.state.update(pb)

    def _finish(self, pb: PendingBatch):
        d = self.dispatcher
        assert d is not None
        for step in d.deliver_blocking(f"sync:{pb.batch.batch_id}", pb):
            self.calls.inc()
            yield from self._emit(pb, step, int(time.time() * 1000))
        if self.spans is not None:
            self.spans.export(batch_span(pb, int(time.time() * 1000)))

    def _emit(self, pb: PendingBatch, step: Step, now_ms: int):
        s = self.settings
        record = delivery_record(pb, step, now_ms)
        if record is not None:
            self.delivered.inc(sum(len(m.event_ids) for m, _, _, _ in step.delivered))
            for m, _, _, _ in step.delivered:
                self.latency.update(max(0, now_ms - m.occurred_at_ms))
            yield record.decode()
        if step.retried:
            self.retries.inc(step.retried)
        if step.dead:
            _log_dead_letters(pb, step, s.channel)
        for raw in dead_letter_records(pb, step, f"deliver-{s.channel}", s.address_field, now_ms):
            self.dead_lettered.inc()
            yield DLQ_TAG, raw.decode()
        if step.results:
            yield RESULTS_TAG, Row(pb.window_key, ("results", pb.window_key, stages.pack(step.results)))
            bm = stages.batch_metrics(pb.batch, step.results, s.window_ms, observe=not pb.observed)
            yield METRICS_TAG, Row(bm.key, bm)
            if not pb.observed:
                self.batch_size.update(len(pb.batch.items))
            pb.observed = True


class WindowMetricsFn(KeyedProcessFunction):
    """metrics: per (region, channel, event-time window): counts, batch sizes, latency percentiles.

    Batches are merged until the watermark passes the window's end (an event-time timer),
    then one record is emitted. A batch for a window that was already emitted (a late event)
    is emitted on its own with ``"late": true``: an update is never silent.
    """

    def open(self, runtime_context: RuntimeContext) -> None:
        """Register the window accumulator state."""
        self.state = runtime_context.get_state(ValueStateDescriptor("window-metrics", PICKLED))

    def process_element(self, value, ctx):
        """Merge one batch's metrics into its window (or emit it at once when late)."""
        m: stages.BatchMetrics = value
        if m.window_end_ms <= ctx.timer_service().current_watermark():
            yield stages.metrics_json(m, m.accumulator, late=True)
            return
        current = self.state.value()
        if current is None:
            ctx.timer_service().register_event_time_timer(m.window_end_ms - 1)
            current = m
        else:
            current.accumulator.merge(m.accumulator)
        self.state.update(current)

    def on_timer(self, timestamp, ctx):
        """Emit the window's metrics and clear the state."""
        current = self.state.value()
        self.state.clear()
        if current is not None:
            yield stages.metrics_json(current, current.accumulator, late=False)


class FanIn(KeyedProcessFunction):
    """fan-in: per window key, the branch status of every event; one outcome per event.

    The per-event states of a window key live in memory (``_cache``); the keyed state is a
    journal of the inputs (``udfs.stages.fanin_apply``), appended to once per input and
    compacted to one small snapshot when every outcome of the key is final. A cache miss
    (after a restore or a rescale) replays the journal. Pre-journal savepoints keep their
    ``fanin`` value state: it is read once and migrated.
    """

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        """Register the keyed state and metrics."""
        _open_logs(self.settings.tracing)
        self.journal = runtime_context.get_list_state(ListStateDescriptor("fanin-journal", PICKLED))
        self.legacy = runtime_context.get_state(ValueStateDescriptor("fanin", PICKLED))
        self._cache: dict[str, stages.FanInStates] = {}
        self._settled: set[str] = set()  # keys whose journal is a snapshot (+ timer entries)
        self.outcomes = _counter(self, runtime_context, "outcomes")
        self.replays = _counter(self, runtime_context, "fanin_replays")

    def _emit(self, outcomes, timers, ctx):
        for t in set(timers):
            ctx.timer_service().register_processing_time_timer(t)
        if outcomes:
            self.outcomes.inc(len(outcomes))  # one call into the JVM per input, not per event
        for outcome in outcomes:
            if not outcome.complete:  # rare: a branch did not finish within the fan-in timeout
                log.warning(
                    "outcome incomplete",
                    extra=logs.event_extra(
                        outcome.event_id,
                        trace_id_of(outcome.traceparent),
                        version=outcome.version,
                        pending=list(outcome.pending),
                    ),
                )
            yield stages.outcome_json(outcome)

    def _states(self, key: str) -> stages.FanInStates:
        states = self._cache.get(key)
        if states is None:
            states = stages.fanin_replay(self.journal.get() or ())
            legacy = self.legacy.value()
            if legacy:  # state from a savepoint taken before the journal existed
                states.update(legacy)
                self.legacy.clear()
                self.journal.update([("snapshot", dict(states))])
            if states:
                self.replays.inc()
            self._cache[key] = states
        return states

    def _apply(self, key: str, entry: stages.JournalEntry):
        states = self._states(key)
        outcomes, timers = stages.fanin_apply(states, entry)
        if not states:
            self.journal.clear()
            self._cache.pop(key, None)
            self._settled.discard(key)
        elif key not in self._settled and stages.fanin_settled(states):
            # compact once, when the key's last outcome is out; the tombstone timers that
            # follow are appended (a rewrite per timer re-pickled the shrinking snapshot)
            self.journal.update([("snapshot", dict(states))])
            self._settled.add(key)
        else:
            self.journal.add(entry)
        return outcomes, timers

    def process_element(self, value, ctx):
        """Apply a plan batch or a branch result batch."""
        if self._unpublished:
            _publish_counters(self)
        kind, key, items = value
        now_ms = int(time.time() * 1000)
        entry: stages.JournalEntry
        if kind == "plan":
            entry = ("plans", now_ms, self.settings.stage.fanin_timeout_ms, items)
        else:
            entry = ("results", now_ms, items)
        outcomes, timers = self._apply(key, entry)
        yield from self._emit(outcomes, timers, ctx)

    def on_timer(self, timestamp, ctx):
        """Time out pending branches (outcome with pending channels) or clear lingering state."""
        if self._unpublished:
            _publish_counters(self)
        outcomes, timers = self._apply(ctx.get_current_key(), ("timer", timestamp))
        yield from self._emit(outcomes, [t for t in timers if t > timestamp], ctx)


class Linear(ProcessFunction):
    """linear: validate, route and deliver each event's channels one after another."""

    def __init__(self, settings: JobSettings, branches: tuple[DeliverSettings, ...] = ()) -> None:
        self.settings = settings
        self.branches = branches
        self.spans: SpanExport | None = None

    def open(self, runtime_context: RuntimeContext) -> None:
        """Load the routing table, register metrics, connect the providers (if configured)."""
        _open_logs(self.settings.tracing)
        self.spans = SpanExport.get(self.settings.tracing)
        self.rules = _open_rules(self.settings)
        self.events_in = _counter(self, runtime_context, "events_in")
        self.dlq_out = _counter(self, runtime_context, "dlq")
        self.dispatchers = {
            b.channel: Dispatcher(b.provider_url, b.channel, b.policy, b.parallelism, b.address_field)
            for b in self.branches
            if b.provider_url
        }

    def close(self) -> None:
        """Close the provider connections; export the spans still buffered."""
        for d in self.dispatchers.values():
            d.close()
        if self.spans is not None:
            self.spans.flush()

    def process_element(self, value, ctx):
        """Handle one deduplicated record."""
        if self._unpublished:
            _publish_counters(self)
        rec = stages.SourceRecord(base64.b64decode(value[0]), value[1], value[2], value[3])
        self.events_in.inc()
        now_ms = int(time.time() * 1000)
        if not self.dispatchers:
            result = stages.deliver_linear(rec, self.rules, self.settings.stage, now_ms)
            if result.dlq is not None:
                self.dlq_out.inc()
                yield DLQ_TAG, result.dlq.decode()
                return
            if self.settings.log_decisions and result.decision is not None:
                stages.log_decision(log, result.decision)
            for channel, record in result.channel_records:
                yield linear_tag(channel), record.decode()
            if self.spans is not None:
                for batch in result.batches:
                    self.spans.export(stages.topic_batch_span(batch, batch.event_ids[0], now_ms))
            if result.outcome is not None:
                yield stages.outcome_json(result.outcome)
            return
        plan = stages.plan_linear(rec, self.rules, self.settings.stage, now_ms)
        if plan.dlq is not None:
            self.dlq_out.inc()
            yield DLQ_TAG, plan.dlq.decode()
            return
        if self.settings.log_decisions and plan.decision is not None:
            stages.log_decision(log, plan.decision)
        for batch in plan.batches:  # one channel after another, each to its end
            d = self.dispatchers[batch.channel]
            pb = new_pending(batch.event_ids[0], batch, now_ms)
            for step in d.deliver_blocking(batch.batch_id, pb):
                step_ms = int(time.time() * 1000)
                delivered = delivery_record(pb, step, step_ms)
                if delivered is not None:
                    yield linear_tag(batch.channel), delivered.decode()
                stage = f"deliver-{batch.channel}"
                if step.dead:
                    _log_dead_letters(pb, step, batch.channel)
                for raw in dead_letter_records(pb, step, stage, d.address_field, step_ms):
                    self.dlq_out.inc()
                    yield DLQ_TAG, raw.decode()
                stages.linear_results(plan, step.results, step_ms)
            if self.spans is not None:
                self.spans.export(batch_span(pb, int(time.time() * 1000)))
        for outcome in plan.outcomes:
            yield stages.outcome_json(outcome)


# --- sinks and graph ---------------------------------------------------------------------------
class Sinks:
    """Where the job's outputs go; ``attach(stream, kind)`` with kind in outcomes|dlq|metrics|<channel>."""

    def attach(self, stream: DataStream, kind: str) -> None:
        """Attach a sink for one output kind."""
        raise NotImplementedError


class KafkaSinks(Sinks):
    """Exactly-once Kafka sinks: one transactional sink per output topic (stable tx-id prefix)."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg

    def attach(self, stream: DataStream, kind: str) -> None:
        """Attach the topic of ``kind`` with a transactional KafkaSink."""
        topics = self.cfg.topics
        topic = {"outcomes": topics.outcomes, "dlq": topics.dlq, "metrics": topics.metrics}.get(kind)
        topic = topic or topics.channel(kind)
        stream.sink_to(kafka_sink(self.cfg, topic, kind)).name(f"kafka: {topic}").uid(f"sink-{kind}")


class PrintSinks(Sinks):
    """Embedded mode: print each output line prefixed with its kind."""

    def attach(self, stream: DataStream, kind: str) -> None:
        """Print ``kind``'s records."""
        stream.map(lambda s, k=kind: f"{k}\t{s}", output_type=Types.STRING()).name(f"format {kind}").print()


def settings_for(cfg: PipelineConfig) -> JobSettings:
    """Build the operators' settings from the pipeline config."""
    rules_path = Path(cfg.routing.rules_file)
    rules_path = rules_path if rules_path.is_absolute() else ROOT / rules_path
    rules = load_ruleset_file(rules_path)
    if not isinstance(rules, RuleSet):
        raise SystemExit(f"error: invalid routing table {rules_path}: {rules}")
    limits = ValidationLimits(
        max_event_bytes=cfg.events.max_event_bytes,
        regions=frozenset(cfg.events.regions),
        channels=frozenset(rules.channels),
    )
    stage = stages.StageConfig(
        limits=limits,
        max_batch_size=cfg.events.max_batch_size,
        digest_channels=frozenset(cfg.events.digest_channels),
        fanin_timeout_ms=cfg.events.fanin_timeout_ms,
    )
    return JobSettings(
        stage,
        str(rules_path),
        tuple(rules.channels),
        cfg.job.chaos_fail_once_file,
        cfg.job.chaos_fail_after_batches,
        codeversion.fingerprint(),
        cfg.events.log_decisions,
        tuple(sorted((ch, f) for ch, f in rules.addresses.items() if f)),
        tracing_settings(cfg),
    )


def _abs(path: str) -> str:
    """Return ``path`` absolute (relative paths are relative to the repository root), or ''."""
    if not path:
        return ""
    p = Path(path)
    return str(p if p.is_absolute() else ROOT / p)


def tracing_settings(cfg: PipelineConfig) -> TracingSettings:
    """Build the operators' tracing/log settings (paths made absolute for the TaskManager)."""
    t = cfg.tracing
    return TracingSettings(
        t.exporter,
        _abs(t.file),
        t.otlp_endpoint,
        _abs(t.log_file),
        t.log_level,
        cfg.job.name,
        max(128, cfg.events.max_batch_size),
    )


def deliver_settings(
    cfg: PipelineConfig, settings: JobSettings, channel: str, parallelism: int
) -> DeliverSettings:
    """Build one branch's settings: its policy from ``delivery.policies_file``."""
    policy = ChannelPolicy()
    if cfg.delivery.provider_url:
        path = Path(cfg.delivery.policies_file)
        path = path if path.is_absolute() else ROOT / path
        try:
            policy = load_policies(str(path), [channel])[channel]
        except (OSError, ValueError) as exc:
            raise SystemExit(f"error: delivery policy {path}: {exc}") from exc
    return DeliverSettings(
        channel,
        cfg.events.window_ms,
        cfg.delivery.provider_url,
        policy,
        parallelism,
        dict(settings.address_fields).get(channel),
        cfg.delivery.poll_ms,
        cfg.kafka.bounded,
        settings.tracing,
    )


def build(
    env: StreamExecutionEnvironment,
    t_env: StreamTableEnvironment,
    sinks: Sinks,
    cfg: PipelineConfig,
    rules_stream: DataStream | None = None,
) -> None:
    """Wire the job onto the registered ``events_in`` table and ``sinks``."""
    settings = settings_for(cfg)
    t_env.get_config().set("table.exec.state.ttl", f"{cfg.events.dedup_ttl_ms} ms")
    t_env.get_config().set("table.exec.source.idle-timeout", f"{cfg.events.idle_timeout_ms} ms")
    # uids from the SQL plan ("<exec node id>_<operator>"), not from the graph's shape
    uid_generation = "ALWAYS" if cfg.job.sql_uids == "stable" else "PLAN_ONLY"
    t_env.get_config().set("table.exec.uid.generation", uid_generation)
    front_sql(t_env, cfg)
    if cfg.job.mode == "linear":
        rows = t_env.to_data_stream(
            t_env.sql_query("SELECT TO_BASE64(`raw`), src_topic, src_partition, src_offset FROM deduped")
        )
        branches = tuple(deliver_settings(cfg, settings, ch, cfg.job.parallelism) for ch in settings.channels)
        main = (
            rows.process(Linear(settings, branches), output_type=Types.STRING())
            .name("linear: route + deliver")
            .uid("linear")
        )
        sinks.attach(main, "outcomes")
        sinks.attach(main.get_side_output(DLQ_TAG), "dlq")
        for ch in settings.channels:
            records = main.get_side_output(linear_tag(ch))
            sinks.attach(records, ch)
        return

    batches = t_env.to_data_stream(t_env.from_path("batches"))
    if rules_stream is not None:
        routed = (
            batches.connect(rules_stream.broadcast(RULES_STATE))
            .process(BroadcastRouter(settings), output_type=KEYED)
            .name("route: validate + decide + plan")
            .uid("route")
        )
    else:
        routed = (
            batches.process(Router(settings), output_type=KEYED)
            .name("route: validate + decide + plan")
            .uid("route")
        )
    dlq: list[DataStream] = [routed.get_side_output(DLQ_TAG)]
    to_fanin: list[DataStream] = []
    metrics: list[DataStream] = []
    for ch in settings.channels:
        branch = cfg.branch(ch)
        parallelism = branch.parallelism or cfg.job.parallelism
        group = branch.slot_sharing_group or f"channel-{ch}"
        delivered = (
            keyed(routed.get_side_output(channel_tag(ch)))
            .process(Deliver(deliver_settings(cfg, settings, ch, parallelism)), output_type=Types.STRING())
            .name(f"deliver-{ch}")
            .uid(f"deliver-{ch}")
            .set_parallelism(parallelism)
            .slot_sharing_group(group)
        )
        sinks.attach(delivered, ch)
        to_fanin.append(delivered.get_side_output(RESULTS_TAG))
        metrics.append(delivered.get_side_output(METRICS_TAG))
        dlq.append(delivered.get_side_output(DLQ_TAG))
    sinks.attach(dlq[0].union(*dlq[1:]) if len(dlq) > 1 else dlq[0], "dlq")
    outcomes = (
        keyed(routed.union(*to_fanin))
        .process(FanIn(settings), output_type=Types.STRING())
        .name("fan-in: branch status per event")
        .uid("fan-in")
    )
    sinks.attach(outcomes, "outcomes")
    if metrics:
        per_batch = metrics[0].union(*metrics[1:]) if len(metrics) > 1 else metrics[0]
        windowed = (
            keyed(per_batch)
            .process(WindowMetricsFn(), output_type=Types.STRING())
            .name("metrics: region x channel x window")
            .uid("window-metrics")
        )
        sinks.attach(windowed, "metrics")


def main(argv: list[str] | None = None) -> None:
    """Run the fan-out job: on Kafka when configured, else on the embedded generator."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="pipeline YAML (default conf/pipeline.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--events", type=int, default=200, help="embedded mode: generated events")
    parser.add_argument(
        "--operator-ids",
        action="store_true",
        help="print the job graph's operators (name, uid, operator id) as JSON instead of running",
    )
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    tracing = tracing_settings(cfg)
    logs.configure(tracing.log_file, tracing.log_level)
    log.info(
        "job starting",
        extra={"fields": {"job": cfg.job.name, "mode": cfg.job.mode, "tracing": tracing.exporter}},
    )
    env = make_env(cfg)
    t_env = StreamTableEnvironment.create(env)
    t_env.get_config().set("table.local-time-zone", "UTC")
    if cfg.kafka.enabled:
        kafka_events_table(t_env, cfg)
        rules = env.from_source(kafka_source(cfg, cfg.topics.rules), source_watermarks(), "kafka: rules").uid(
            "source-rules"
        )
        build(env, t_env, KafkaSinks(cfg), cfg, rules_stream=rules)
    else:
        from udfs.generator import generate_events

        embedded_events_table(env, t_env, list(generate_events(args.events, seed=7)), cfg)
        build(env, t_env, PrintSinks(), cfg)
    if args.operator_ids:
        print(json.dumps(operator_ids(env)))
        return
    env.execute(cfg.job.name)


def operator_ids(env: StreamExecutionEnvironment) -> list[dict[str, str | None]]:
    """Return every node of the job's stream graph: name, uid (None if unset), operator id.

    The ids are the ones a savepoint of this job stores state under (Flink's own hasher over
    the graph ``env.execute`` would submit); ``scripts/submit migrate-savepoint`` maps an
    older savepoint's operators onto them.
    """
    graph = env._generate_stream_graph(clear_transformations=False)
    hasher = get_gateway().jvm.org.apache.flink.streaming.api.graph.StreamGraphHasherV2()
    hashes = hasher.traverseStreamGraphAndGenerateHashes(graph)
    nodes = []
    for node_id in sorted(hashes.keySet()):
        node = graph.getStreamNode(node_id)
        nodes.append(
            {
                "name": node.getOperatorName(),
                "uid": node.getTransformationUID(),
                "id": bytes(hashes.get(node_id)).hex(),
            }
        )
    return nodes


if __name__ == "__main__":
    # Run the importable module's main, so operators pickle by reference to jobs.fanout
    # (classes defined in __main__ would be pickled by value, module globals and all).
    from jobs.fanout import main as _main

    _main()
