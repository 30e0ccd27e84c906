"""The fan-out job's JVM front with its dedup state, and no Python (benchmark: state scaling).

The same source table, computed columns and keep-first deduplication as ``jobs/fanout.py``
(``kafka_events_table`` + ``front_sql``), written exactly once to ``topics.roundtrip``.
``scripts/bench run`` feeds it 10^6 distinct event ids and reads each checkpoint's size and
duration as the dedup state grows: the cost of the dedup window, without the Python stages.

    python -m jobs.dedup_front --set kafka.bootstrap=127.0.0.1:9092 --set topics.roundtrip=out
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `flink run -py jobs/dedup_front.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyflink.table import StreamTableEnvironment

from jobs.config import load_config
from jobs.fanout import front_sql, kafka_events_table
from jobs.flink_env import make_env


def main(argv: list[str] | None = None) -> None:
    """Deduplicate ``topics.events`` into ``topics.roundtrip`` exactly once."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    env = make_env(cfg)
    t_env = StreamTableEnvironment.create(env)
    t_env.get_config().set("table.local-time-zone", "UTC")
    t_env.get_config().set("table.exec.state.ttl", f"{cfg.events.dedup_ttl_ms} ms")
    kafka_events_table(t_env, cfg)
    front_sql(t_env, cfg)
    k = cfg.kafka
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE events_out (`raw` BYTES) WITH (
          'connector' = 'kafka', 'topic' = '{cfg.topics.roundtrip}',
          'properties.bootstrap.servers' = '{k.bootstrap}',
          'properties.transaction.timeout.ms' = '{k.transaction_timeout_ms}',
          'sink.delivery-guarantee' = 'exactly-once',
          'sink.transactional-id-prefix' = '{k.transactional_id_prefix}-dedup',
          'format' = 'raw')""")
    statements = t_env.create_statement_set()
    statements.add_insert_sql("INSERT INTO events_out SELECT `raw` FROM deduped")
    statements.attach_as_datastream()
    env.execute(f"{cfg.job.name}-dedup-front")


if __name__ == "__main__":
    from jobs.dedup_front import main as _main

    _main()
