"""Foundation round trip: Kafka → parse → key by user → keyed count → Kafka (exactly-once).

Proves the wiring every later job relies on: KafkaSource, a Python keyed-state operator,
checkpointing, and a transactional KafkaSink whose output is read with ``read_committed``.

Run it::

    python -m jobs.roundtrip --set kafka.bootstrap=127.0.0.1:9092 --set kafka.bounded=true
    flink run -py jobs/roundtrip.py -pyfs jobs,udfs -- --set kafka.bootstrap=...

Output record (one per input record with a ``user_id``)::

    {"user_id": "u-42", "event_id": "e-1", "seq": 3}     # seq = nth record of that user
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # `flink run -py jobs/roundtrip.py`: make `jobs` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyflink.common import Types
from pyflink.datastream import DataStream, KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor

from jobs.config import PipelineConfig, load_config
from jobs.flink_env import kafka_sink, kafka_source, make_env, source_watermarks


def user_of(raw: str) -> tuple[str, str]:
    """Return ``(user_id, event_id)`` of a JSON record; ('', '') when it has none."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return "", ""
    if not isinstance(obj, dict):
        return "", ""
    return str(obj.get("user_id") or ""), str(obj.get("event_id") or "")


class CountPerUser(KeyedProcessFunction):
    """Keyed state: the running count of records per user."""

    def open(self, runtime_context: RuntimeContext) -> None:
        """Register the per-user counter."""
        self.count = runtime_context.get_state(ValueStateDescriptor("count", Types.LONG()))

    def process_element(self, value, ctx):
        """Increment the user's count and emit the output record."""
        seq = (self.count.value() or 0) + 1
        self.count.update(seq)
        yield json.dumps({"user_id": value[0], "event_id": value[1], "seq": seq})


def build(env, events: DataStream, sink, cfg: PipelineConfig) -> None:
    """Wire the round trip onto ``events`` (JSON strings) and ``sink``."""
    pairs = (
        events.map(user_of, output_type=Types.TUPLE([Types.STRING(), Types.STRING()]))
        .name("parse user_id")
        .filter(lambda p: p[0] != "")
        .name("drop records without user_id")
    )
    counted = (
        pairs.key_by(lambda p: p[0], key_type=Types.STRING())
        .process(CountPerUser(), output_type=Types.STRING())
        .name("count per user")
        .uid("roundtrip-count-per-user")
    )
    counted.sink_to(sink).name("kafka: roundtrip out").uid("roundtrip-sink")


def main(argv: list[str] | None = None) -> None:
    """Run the round trip against the configured Kafka topics."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="pipeline YAML (default conf/pipeline.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    if not cfg.kafka.enabled:
        raise SystemExit("error: the round trip needs Kafka: pass --set kafka.bootstrap=HOST:PORT")
    env = make_env(cfg)
    events = env.from_source(kafka_source(cfg, cfg.topics.events), source_watermarks(), "kafka: events").uid(
        "roundtrip-source"
    )
    build(env, events, kafka_sink(cfg, cfg.topics.roundtrip, "roundtrip"), cfg)
    env.execute(f"{cfg.job.name}-roundtrip")


if __name__ == "__main__":
    # Run the importable module's main, so operators pickle by reference to jobs.roundtrip
    # (classes defined in __main__ would be pickled by value, module globals and all).
    from jobs.roundtrip import main as _main

    _main()
