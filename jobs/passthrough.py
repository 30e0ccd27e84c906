"""The engine's ceiling on this machine: Kafka → Kafka with no Python operator (benchmark anchor).

Same source table as the fan-out job (raw bytes, read_committed) and the same exactly-once
transactional sink, nothing in between: ``INSERT INTO out SELECT raw FROM events``. The
Python client only builds the plan; at runtime the job is JVM-only.

    python -m jobs.passthrough --set kafka.bootstrap=127.0.0.1:9092 --set topics.roundtrip=out
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `flink run -py jobs/passthrough.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyflink.datastream import StreamExecutionEnvironment
from pyflink.table import StreamTableEnvironment

from jobs.config import PipelineConfig, load_config
from jobs.flink_env import make_env


def main(argv: list[str] | None = None) -> None:
    """Copy ``topics.events`` to ``topics.roundtrip`` exactly once."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    env = make_env(cfg)
    t_env = StreamTableEnvironment.create(env)
    k = cfg.kafka
    bounded = "'scan.bounded.mode' = 'latest-offset'," if k.bounded else ""
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE events_in (`raw` BYTES) WITH (
          'connector' = 'kafka', 'topic' = '{cfg.topics.events}',
          'properties.bootstrap.servers' = '{k.bootstrap}', 'properties.group.id' = '{k.group_id}',
          'properties.isolation.level' = 'read_committed', 'scan.startup.mode' = 'earliest-offset',
          {bounded} 'format' = 'raw')""")
    insert_exactly_once(env, t_env, cfg, "SELECT `raw` FROM events_in", "passthrough")


def insert_exactly_once(
    env: StreamExecutionEnvironment, t_env: StreamTableEnvironment, cfg: PipelineConfig, query: str, name: str
) -> None:
    """Write ``query``'s ``raw`` column exactly once to ``topics.roundtrip`` and run the job."""
    k = cfg.kafka
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE events_out (`raw` BYTES) WITH (
          'connector' = 'kafka', 'topic' = '{cfg.topics.roundtrip}',
          'properties.bootstrap.servers' = '{k.bootstrap}',
          'properties.transaction.timeout.ms' = '{k.transaction_timeout_ms}',
          'sink.delivery-guarantee' = 'exactly-once',
          'sink.transactional-id-prefix' = '{k.transactional_id_prefix}-{name}',
          'format' = 'raw')""")
    # Attached to the DataStream environment and submitted with env.execute like the other
    # jobs: a bare execute_sql(INSERT) keeps `flink run -d`'s Python client from exiting.
    statements = t_env.create_statement_set()
    statements.add_insert_sql(f"INSERT INTO events_out {query}")
    statements.attach_as_datastream()
    env.execute(f"{cfg.job.name}-{name}")


if __name__ == "__main__":
    from jobs.passthrough import main as _main

    _main()
