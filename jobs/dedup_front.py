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
from jobs.passthrough import insert_exactly_once


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
    insert_exactly_once(env, t_env, cfg, "SELECT `raw` FROM deduped", "dedup-front")


if __name__ == "__main__":
    from jobs.dedup_front import main as _main

    _main()
