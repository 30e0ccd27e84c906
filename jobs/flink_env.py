"""Thin PyFlink wiring shared by the jobs: execution environment, Kafka source and sinks."""

from __future__ import annotations

import site
import sys
from pathlib import Path

from pyflink.common import Configuration, Duration, WatermarkStrategy
from pyflink.common.serialization import SimpleStringSchema
from pyflink.datastream import CheckpointingMode, StreamExecutionEnvironment
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetResetStrategy,
    KafkaOffsetsInitializer,
    KafkaRecordSerializationSchema,
    KafkaSink,
    KafkaSource,
)

from jobs.config import PipelineConfig

ROOT = Path(__file__).resolve().parents[1]


def connector_jar() -> Path:
    """Return the cached Flink Kafka connector jar (fetched and verified by scripts/setup)."""
    jars = sorted((ROOT / ".cache" / "jars" / "flink").glob("flink-sql-connector-kafka-*.jar"))
    if not jars:
        raise FileNotFoundError("The Flink Kafka connector jar is missing; run scripts/setup.")
    return jars[-1]


def python_path() -> str:
    """Return the PYTHONPATH for embedded (thread-mode) Python: site-packages + the project."""
    return ":".join([*site.getsitepackages(), str(ROOT)])


def make_env(cfg: PipelineConfig) -> StreamExecutionEnvironment:
    """Create the execution environment: checkpointing, Python mode, connector jar.

    On a cluster (``flink run``) the cluster's configuration applies as well; locally this is
    a MiniCluster in this process.
    """
    conf = Configuration()
    conf.set_string("python.execution-mode", cfg.job.python_execution_mode)
    conf.set_string("python.executable", sys.executable)
    # Thread mode embeds CPython in the JVM (pemja); without this it does not see the
    # virtualenv's site-packages and fails with "No module named 'pemja'".
    conf.set_string("python.pythonpath", python_path())
    conf.set_string("pipeline.name", cfg.job.name)
    conf.set_string("pipeline.auto-watermark-interval", f"{cfg.job.watermark_interval_ms} ms")
    conf.set_string("state.backend.type", cfg.job.state_backend)
    if cfg.job.state_backend == "rocksdb":
        conf.set_string("execution.checkpointing.incremental", "true")
    # Local MiniCluster only (a cluster's own config wins): enough slots for one slot
    # sharing group per channel branch next to the default group.
    conf.set_string("taskmanager.numberOfTaskSlots", "16")
    conf.set_string("restart-strategy.type", "fixed-delay")
    conf.set_string("restart-strategy.fixed-delay.attempts", str(cfg.job.restart_attempts))
    conf.set_string("restart-strategy.fixed-delay.delay", f"{cfg.job.restart_delay_ms} ms")
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    if cfg.kafka.enabled:
        env.add_jars(connector_jar().as_uri())
    env.set_parallelism(cfg.job.parallelism)
    env.set_buffer_timeout(cfg.job.buffer_timeout_ms)
    env.enable_checkpointing(cfg.job.checkpoint_interval_ms, CheckpointingMode.EXACTLY_ONCE)
    checkpoints = env.get_checkpoint_config()
    checkpoints.set_checkpoint_timeout(cfg.job.checkpoint_timeout_ms)
    checkpoints.set_min_pause_between_checkpoints(cfg.job.min_pause_between_checkpoints_ms)
    unaligned = cfg.job.unaligned_checkpoints
    if unaligned == "always" or (unaligned == "auto" and cfg.job.mode == "linear"):
        checkpoints.enable_unaligned_checkpoints()
        checkpoints.set_aligned_checkpoint_timeout(Duration.of_millis(cfg.job.aligned_checkpoint_timeout_ms))
    return env


def kafka_source(cfg: PipelineConfig, topic: str) -> KafkaSource:
    """Return a KafkaSource of UTF-8 strings on ``topic`` (bounded when ``kafka.bounded``)."""
    starting = {
        "earliest": KafkaOffsetsInitializer.earliest(),
        "latest": KafkaOffsetsInitializer.latest(),
        "committed": KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST),
    }[cfg.kafka.starting_offsets]
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(cfg.kafka.bootstrap)
        .set_topics(topic)
        .set_group_id(cfg.kafka.group_id)
        .set_starting_offsets(starting)
        .set_value_only_deserializer(SimpleStringSchema())
        .set_property("isolation.level", "read_committed")
        .set_property("partition.discovery.interval.ms", "10000")
    )
    if cfg.kafka.bounded:
        builder = builder.set_bounded(KafkaOffsetsInitializer.latest())
    return builder.build()


def source_watermarks() -> WatermarkStrategy:
    """Return the source's watermark strategy (event-time extraction comes later in the graph)."""
    return WatermarkStrategy.no_watermarks().with_idleness(Duration.of_seconds(5))


def kafka_sink(cfg: PipelineConfig, topic: str, name: str) -> KafkaSink:
    """Return an exactly-once (transactional) KafkaSink of UTF-8 strings to ``topic``.

    ``name`` makes the transactional-id prefix unique and stable per sink: it must never
    change between releases, or open transactions of a restored job would not be aborted.
    """
    return (
        KafkaSink.builder()
        .set_bootstrap_servers(cfg.kafka.bootstrap)
        .set_record_serializer(
            KafkaRecordSerializationSchema.builder()
            .set_topic(topic)
            .set_value_serialization_schema(SimpleStringSchema())
            .build()
        )
        .set_delivery_guarantee(DeliveryGuarantee.EXACTLY_ONCE)
        .set_transactional_id_prefix(f"{cfg.kafka.transactional_id_prefix}-{name}")
        .set_property("transaction.timeout.ms", str(cfg.kafka.transaction_timeout_ms))
        .build()
    )
