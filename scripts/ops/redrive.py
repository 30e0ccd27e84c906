"""Redrive: replay dead-lettered records from ``notifications.dlq`` back into the events topic.

What is replayed: by default the records the *delivery* stages dead-lettered
(``stage = deliver-<channel>``, e.g. ``retries_exhausted`` after an outage longer than the
retry budget). Their ``original`` is the event rebuilt for the failed channel only (see
``udfs.delivery.redrive_event``); it keeps its ``event_id``. Each run stamps
``{"redrive": {"id": <run id>, ...}}`` on it, which lets it pass the job's dedup once per
run, while the providers' idempotency keys (``event_id:channel``) still make sure nothing
that was delivered before is delivered twice.

Not replayed unless asked (``--stage validate``): records that failed validation; they
fail again unless the producer fixes them. A permanent provider rejection
(``non_retryable``, e.g. an invalid phone number) is also stored by the provider under its
idempotency key, so replaying it reproduces the rejection; fix the data and send a new event.

Usage::

    scripts/redrive --bootstrap 127.0.0.1:9092 [--dlq notifications.dlq]
                    [--events notifications.events] [--reason retries_exhausted] [--dry-run]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from jobs.config import load_config
from ops.kafka_io import consume_all, produce
from udfs.dlq import original_bytes, parse_dlq_record


def select(
    records: Iterable[bytes], stages: Sequence[str], reasons: Sequence[str], run_id: str
) -> tuple[list[tuple[bytes, bytes]], Counter[str]]:
    """Pick the DLQ records to replay; return (key, value) pairs and counts of what was skipped."""
    out: list[tuple[bytes, bytes]] = []
    skipped: Counter[str] = Counter()
    for raw in records:
        rec = parse_dlq_record(raw)
        if rec is None:
            skipped["unparsable"] += 1
            continue
        stage = str(rec.get("stage", ""))
        if not any(stage == s or (s.endswith("*") and stage.startswith(s[:-1])) for s in stages):
            skipped[f"stage {stage}"] += 1
            continue
        if reasons and rec.get("reason") not in reasons:
            skipped[f"reason {rec.get('reason')}"] += 1
            continue
        try:
            event: Any = orjson.loads(original_bytes(rec))
        except orjson.JSONDecodeError:
            skipped["original not JSON"] += 1
            continue
        if not isinstance(event, dict):
            skipped["original not an object"] += 1
            continue
        event["redrive"] = {
            "id": run_id,
            "reason": rec.get("reason"),
            "stage": stage,
            "dlq_at_ms": rec.get("dlq_at_ms"),
        }
        key = str(event.get("user_id", "")).encode()
        out.append((key, orjson.dumps(event)))
    return out, skipped


def main(argv: list[str] | None = None) -> int:
    """Replay the selected DLQ records; print what was replayed and skipped (no PII)."""
    cfg = load_config()
    parser = argparse.ArgumentParser(prog="redrive", description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", default=cfg.kafka.bootstrap or None, required=not cfg.kafka.bootstrap)
    parser.add_argument("--dlq", default=cfg.topics.dlq, help="DLQ topic")
    parser.add_argument("--events", default=cfg.topics.events, help="topic to replay into")
    parser.add_argument(
        "--stage", action="append", default=None, help="stages to replay (default: deliver-*)"
    )
    parser.add_argument("--reason", action="append", default=[], help="only these reasons")
    parser.add_argument("--run-id", default=None, help="redrive id (default: random)")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    run_id = args.run_id or f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    records = consume_all(args.bootstrap, args.dlq)
    chosen, skipped = select(records, args.stage or ["deliver-*"], args.reason, run_id)
    if not args.dry_run and chosen:
        produce(args.bootstrap, args.events, (v for _, v in chosen), (k for k, _ in chosen))
    verb = "would replay" if args.dry_run else "replayed"
    print(f"redrive {run_id}: read {len(records)} DLQ records from {args.dlq}; ", end="")
    print(f"{verb} {len(chosen)} into {args.events}")
    for what, n in sorted(skipped.items()):
        print(f"  skipped {n}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
