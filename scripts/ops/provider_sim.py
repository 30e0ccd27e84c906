"""Provider simulator: an HTTP stand-in for email/SMS/push/... providers in tests and benchmarks.

A test *peer*, not a mock: it speaks HTTP/1.1 with keep-alive, enforces idempotency keys the
way real providers do, injects latency, transient errors, 429s, timeouts, permanent
recipient failures and outages, and keeps a durable SQLite ledger of accepted deliveries.

Endpoints (``{channel}`` is any channel in the config, e.g. email, sms, push, webhook)::

    POST /v1/{channel}/send     one message; header Idempotency-Key (required)
    POST /v1/{channel}/bulk     {"messages": [{..., "idempotency_key": k}, ...]};
                                optional header Idempotency-Key = the batch key
    GET  /admin/health          GET /admin/stats
    GET  /admin/ledger?channel=email[&count=1][&limit=N]
    GET  /admin/attempts?channel=email[&key=K]
    GET  /admin/behaviour/{channel}
    POST /admin/behaviour/{channel}   JSON patch of the behaviour (same keys as the YAML)
    POST /admin/outage/{channel}      {"active": true|false[, "duration_s": S]}
    POST /admin/reset                 clear ledger + counters, back to the configured state

Idempotency: keys are scoped per channel (each channel is a separate provider). Only
*final* answers are stored: an acceptance (200) or a permanent rejection (4xx about the
message). A repeat of such a key returns the first stored answer (header
``Idempotent-Replayed: true``; ``"replayed": true`` per bulk result) and is counted as a
duplicate, never as a second delivery. Transient failures (503, 429, timeouts, outages) are
not stored, so a retry with the same key can succeed. A batch key's answer is stored only if
every message in it got a final answer.

Fault order per request: latency -> outage (503 "outage") -> rate limit / rate_429 (429
"rate_limited" + Retry-After) -> timeout (hang ``hang_s``, then 504 "timeout"). Then per
message: stored answer -> missing/invalid recipient (400) -> error_rate (503 "unavailable")
-> accepted. For bulk, error_rate is drawn per message (partial results, HTTP 200).

Randomness: one ``random.Random`` per channel seeded from ``(seed, channel)``, so a single
client sees a reproducible sequence of faults.

Ledger (SQLite, WAL, one transaction per request) stores keys, event ids, batch ids,
times and attempt counts, never addresses or message bodies. Logs carry only channels,
keys and counts.

Run: ``scripts/provider-sim --port 0 --config conf/providers.yaml --ledger .run/sim.db``.
Embed::

    sim = ProviderSim("conf/providers.yaml", ".run/sim.db", seed=1)
    host, port = sim.start("127.0.0.1", 0)
    client = SimClient(f"http://{host}:{port}")
    client.send("email", {"to": "a@example.com", "event_id": "e1"}, "e1:email")
    sim.stop()
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import errno
import hashlib
import logging
import math
import os
import random
import signal
import socket
import sqlite3
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import yaml

from udfs.provider_client import ProviderClient
from udfs.ratelimit import TokenBucket

__all__ = [
    "DEFAULT_BEHAVIOUR",
    "PortInUseError",
    "ProviderSim",
    "ProviderSimError",
    "SimClient",
    "load_config",
]

log = logging.getLogger("provider_sim")

# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------

#: Built-in behaviour; conf/providers.yaml documents every knob.
DEFAULT_BEHAVIOUR: dict[str, Any] = {
    "latency": {
        "model": "uniform",  # fixed | uniform | lognormal
        "ms": 0.0,  # fixed
        "min_ms": 0.0,  # uniform
        "max_ms": 5.0,
        "median_ms": 2.0,  # lognormal
        "p99_ms": 20.0,
        "per_message_ms": 0.0,  # bulk: added per message
    },
    "error_rate": 0.0,
    "rate_429": 0.0,
    "retry_after_s": 1,
    "rate_limit_per_s": 0.0,
    "rate_limit_burst": 0,
    "timeout_rate": 0.0,
    "hang_s": 30.0,
    "timeout_delivers": False,
    "invalid_substring": "invalid",
    "invalid_recipients": [],
    "recipient_fields": ["to"],
    "outage": False,
    "outage_windows": [],
    "max_bulk": 1000,
    "reject_key_reuse": False,
}

DEFAULT_CHANNELS: dict[str, dict[str, Any]] = {
    "email": {"recipient_fields": ["to", "email"]},
    "sms": {"recipient_fields": ["to", "phone"]},
    "push": {"recipient_fields": ["to", "push_token"]},
}

LATENCY_MODELS = ("fixed", "uniform", "lognormal")
_Z99 = 2.3263478740408408  # standard normal 99th percentile


def _merge(base: Mapping[str, Any], patch: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Merge ``patch`` into a copy of ``base``; unknown keys raise ValueError."""
    out = copy.deepcopy(dict(base))
    for key, value in patch.items():
        if key not in base:
            raise ValueError(f"unknown behaviour key {where}{key!r}; allowed: {', '.join(sorted(base))}")
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise ValueError(f"behaviour key {where}{key!r} must be a mapping")
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _num(d: Mapping[str, Any], key: str, lo: float = 0.0, hi: float = math.inf) -> float:
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"behaviour {key!r} must be a number, got {value!r}")
    if not lo <= value <= hi or math.isnan(value):
        raise ValueError(f"behaviour {key!r} must be within [{lo}, {hi}], got {value}")
    return float(value)


@dataclass(frozen=True)
class Behaviour:
    """Validated behaviour of one channel (immutable; replaced as a whole on patch)."""

    raw: dict[str, Any]
    latency_model: str
    latency_args: tuple[float, ...]
    per_message_ms: float
    error_rate: float
    rate_429: float
    retry_after_s: float
    rate_limit_per_s: float
    rate_limit_burst: float
    timeout_rate: float
    hang_s: float
    timeout_delivers: bool
    invalid_substring: str
    invalid_recipients: frozenset[str]
    recipient_fields: tuple[str, ...]
    outage: bool
    outage_windows: tuple[tuple[float, float], ...]
    max_bulk: int
    reject_key_reuse: bool

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Behaviour:
        """Validate a full behaviour mapping (defaults already merged)."""
        raw: dict[str, Any] = copy.deepcopy(dict(data))
        lat = raw["latency"]
        model = lat["model"]
        if model not in LATENCY_MODELS:
            raise ValueError(f"latency.model must be one of {', '.join(LATENCY_MODELS)}")
        args: tuple[float, ...]
        if model == "fixed":
            args = (_num(lat, "ms"),)
        elif model == "uniform":
            lo, hi = _num(lat, "min_ms"), _num(lat, "max_ms")
            if hi < lo:
                raise ValueError("latency.max_ms must be >= latency.min_ms")
            args = (lo, hi)
        else:
            median, p99 = _num(lat, "median_ms"), _num(lat, "p99_ms")
            if median <= 0 or p99 < median:
                raise ValueError("lognormal latency needs 0 < median_ms <= p99_ms")
            args = (math.log(median), (math.log(p99) - math.log(median)) / _Z99)
        for key in ("timeout_delivers", "outage", "reject_key_reuse"):
            if not isinstance(raw[key], bool):
                raise ValueError(f"behaviour {key!r} must be true or false")
        if not isinstance(raw["invalid_substring"], str):
            raise ValueError("behaviour 'invalid_substring' must be a string ('' disables it)")
        for key in ("invalid_recipients", "recipient_fields"):
            if not isinstance(raw[key], list | tuple) or not all(isinstance(x, str) for x in raw[key]):
                raise ValueError(f"behaviour {key!r} must be a list of strings")
        if not raw["recipient_fields"]:
            raise ValueError("behaviour 'recipient_fields' must not be empty")
        windows = []
        for w in raw["outage_windows"]:
            if (
                not isinstance(w, list | tuple)
                or len(w) != 2
                or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in w)
                or w[1] < w[0]
            ):
                raise ValueError(f"outage window must be [t0_s, t1_s] with t0 <= t1, got {w!r}")
            windows.append((float(w[0]), float(w[1])))
        max_bulk = raw["max_bulk"]
        if isinstance(max_bulk, bool) or not isinstance(max_bulk, int) or max_bulk < 1:
            raise ValueError("behaviour 'max_bulk' must be an integer >= 1")
        rate_limit = _num(raw, "rate_limit_per_s")
        burst = _num(raw, "rate_limit_burst")
        return cls(
            raw=raw,
            latency_model=model,
            latency_args=args,
            per_message_ms=_num(lat, "per_message_ms"),
            error_rate=_num(raw, "error_rate", 0, 1),
            rate_429=_num(raw, "rate_429", 0, 1),
            retry_after_s=_num(raw, "retry_after_s"),
            rate_limit_per_s=rate_limit,
            rate_limit_burst=burst if burst > 0 else max(1.0, rate_limit),
            timeout_rate=_num(raw, "timeout_rate", 0, 1),
            hang_s=_num(raw, "hang_s"),
            timeout_delivers=raw["timeout_delivers"],
            invalid_substring=raw["invalid_substring"],
            invalid_recipients=frozenset(raw["invalid_recipients"]),
            recipient_fields=tuple(raw["recipient_fields"]),
            outage=raw["outage"],
            outage_windows=tuple(windows),
            max_bulk=max_bulk,
            reject_key_reuse=raw["reject_key_reuse"],
        )

    def patched(self, patch: Mapping[str, Any]) -> Behaviour:
        """Return a new behaviour with ``patch`` merged in (validated)."""
        return Behaviour.from_dict(_merge(self.raw, patch, ""))

    def latency_s(self, rng: random.Random, n_messages: int = 1) -> float:
        """Draw one request's latency in seconds."""
        if self.latency_model == "fixed":
            ms = self.latency_args[0]
        elif self.latency_model == "uniform":
            ms = rng.uniform(*self.latency_args)
        else:
            ms = rng.lognormvariate(*self.latency_args)
        return (ms + self.per_message_ms * n_messages) / 1000.0


@dataclass(frozen=True)
class SimConfig:
    """Validated simulator config: behaviour per channel, plus the default seed."""

    channels: dict[str, Behaviour]
    seed: int = 0


def load_config(source: str | os.PathLike[str] | Mapping[str, Any] | None) -> SimConfig:
    """Load and validate a config from a YAML path, a mapping, or None (built-in defaults).

    Shape: ``{seed: N, defaults: {behaviour...}, channels: {name: {behaviour overrides}}}``.
    """
    if source is None:
        data: Mapping[str, Any] = {}
    elif isinstance(source, Mapping):
        data = source
    else:
        with open(source, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
        if not isinstance(data, Mapping):
            raise ValueError(f"{os.fspath(source)}: top level must be a mapping")
    unknown = sorted(set(data) - {"seed", "defaults", "channels"})
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(unknown)}")
    defaults = _merge(DEFAULT_BEHAVIOUR, data.get("defaults") or {}, "defaults.")
    channels_raw = data.get("channels")
    if channels_raw is None:
        channels_raw = DEFAULT_CHANNELS
    if not isinstance(channels_raw, Mapping) or not channels_raw:
        raise ValueError("config 'channels' must be a non-empty mapping")
    channels = {}
    for name, overrides in channels_raw.items():
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"channel name must be [A-Za-z0-9_-]+, got {name!r}")
        try:
            channels[name] = Behaviour.from_dict(_merge(defaults, overrides or {}, f"channels.{name}."))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"channel {name!r}: {exc}") from None
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError("config 'seed' must be an integer")
    return SimConfig(channels=channels, seed=seed)


# --------------------------------------------------------------------------------------
# Core (no HTTP): faults, idempotency, ledger
# --------------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    channel TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    event_ids TEXT NOT NULL,          -- JSON list
    batch_id TEXT,
    received_at_ms INTEGER NOT NULL,
    attempt INTEGER NOT NULL,         -- attempt number of this key when accepted
    message_hash TEXT NOT NULL,
    response TEXT NOT NULL,           -- the stored (first) answer, JSON
    UNIQUE (channel, idempotency_key)
);
CREATE TABLE IF NOT EXISTS rejections (
    channel TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    status INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    message_hash TEXT NOT NULL,
    response TEXT NOT NULL,
    UNIQUE (channel, idempotency_key)
);
CREATE TABLE IF NOT EXISTS attempts (
    channel TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_status INTEGER NOT NULL,
    last_at_ms INTEGER NOT NULL,
    UNIQUE (channel, idempotency_key)
);
CREATE TABLE IF NOT EXISTS batches (
    channel TEXT NOT NULL,
    batch_key TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    response TEXT NOT NULL,
    UNIQUE (channel, batch_key)
);
"""

Reply = tuple[int, dict[str, str], dict[str, Any]]


class _Ledger:
    """SQLite ledger; one connection guarded by a lock, one transaction per request."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def clear(self) -> None:
        with self.lock:
            self.db.execute("BEGIN")
            for table in ("deliveries", "rejections", "attempts", "batches"):
                self.db.execute(f"DELETE FROM {table}")
            self.db.execute("COMMIT")

    def bump_attempts(self, channel: str, keys: Iterable[str], status: int, now_ms: int) -> None:
        """Count one attempt for each key (used for request-level failures)."""
        rows = [(channel, k, status, now_ms) for k in keys]
        with self.lock:
            self.db.execute("BEGIN")
            self.db.executemany(_UPSERT_ATTEMPT, rows)
            self.db.execute("COMMIT")


_UPSERT_ATTEMPT = """
INSERT INTO attempts (channel, idempotency_key, attempts, last_status, last_at_ms)
VALUES (?, ?, 1, ?, ?)
ON CONFLICT (channel, idempotency_key)
DO UPDATE SET attempts = attempts + 1, last_status = excluded.last_status,
              last_at_ms = excluded.last_at_ms
RETURNING attempts
"""


@dataclass
class _Counters:
    requests: int = 0
    messages: int = 0
    accepted: int = 0
    duplicates: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "messages": self.messages,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "errors": dict(sorted(self.errors.items())),
        }


class _Channel:
    """Mutable per-channel runtime: behaviour, RNG, rate limiter, counters."""

    def __init__(self, name: str, behaviour: Behaviour, seed: int) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.configured = behaviour
        self.reset(seed)

    def reset(self, seed: int) -> None:
        with self.lock:
            self.behaviour = self.configured
            self.rng = random.Random(f"{seed}:{self.name}")
            self.bucket: TokenBucket | None = None
            self.outage_until: float | None = None
            self.counters = _Counters()
            self._make_bucket()

    def _make_bucket(self) -> None:
        b = self.behaviour
        self.bucket = TokenBucket(b.rate_limit_per_s, b.rate_limit_burst) if b.rate_limit_per_s > 0 else None

    def set_behaviour(self, behaviour: Behaviour) -> None:
        with self.lock:
            old = self.behaviour
            self.behaviour = behaviour
            if (old.rate_limit_per_s, old.rate_limit_burst) != (
                behaviour.rate_limit_per_s,
                behaviour.rate_limit_burst,
            ):
                self._make_bucket()

    def count_error(self, kind: str, n: int = 1) -> None:
        with self.lock:
            self.counters.errors[kind] = self.counters.errors.get(kind, 0) + n


def _hash_message(message: Mapping[str, Any]) -> str:
    blob = orjson.dumps(message, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(blob, digest_size=12).hexdigest()


def _event_ids(message: Mapping[str, Any]) -> list[str]:
    ids = message.get("event_ids")
    if isinstance(ids, list):
        return [str(i) for i in ids]
    eid = message.get("event_id")
    return [] if eid is None else [str(eid)]


def _recipient(message: Mapping[str, Any], fields_: Sequence[str]) -> str | None:
    """First string recipient among ``fields_``, in the message or its ``recipient`` object."""
    nested = message.get("recipient")
    for source in (message, nested if isinstance(nested, Mapping) else None):
        if source is None:
            continue
        for name in fields_:
            value = source.get(name)
            if isinstance(value, str) and value:
                return value
    if isinstance(nested, str) and nested:
        return nested
    return None


class _Core:
    """Request handling without HTTP: returns (status, headers, body) tuples."""

    def __init__(self, config: SimConfig, ledger_path: str | os.PathLike[str], seed: int) -> None:
        self.config = config
        self.seed = seed
        self.ledger = _Ledger(ledger_path)
        self.stop_event = threading.Event()
        self.started_mono = time.monotonic()
        self.channels = {name: _Channel(name, beh, seed) for name, beh in config.channels.items()}
        self._seq = 0
        self._seq_lock = threading.Lock()

    # -- helpers ------------------------------------------------------------------------

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.stop_event.wait(seconds)

    def _next_id(self, channel: str) -> str:
        with self._seq_lock:
            self._seq += 1
            return f"{channel}-{os.getpid()}-{self._seq}"

    def in_outage(self, ch: _Channel, now_mono: float) -> bool:
        b = ch.behaviour
        if b.outage or (ch.outage_until is not None and now_mono < ch.outage_until):
            return True
        t = now_mono - self.started_mono
        return any(t0 <= t < t1 for t0, t1 in b.outage_windows)

    def _request_fault(self, ch: _Channel, n_messages: int) -> tuple[float, Reply | None, bool]:
        """Draw latency and request-level faults: (latency_s, error reply or None, timeout)."""
        now = time.monotonic()
        with ch.lock:
            b = ch.behaviour
            ch.counters.requests += 1
            ch.counters.messages += n_messages
            latency = b.latency_s(ch.rng, n_messages)
            u429 = ch.rng.random()
            utimeout = ch.rng.random()
            wait = 0.0
            if ch.bucket is not None and not self.in_outage(ch, now):
                wait = ch.bucket.try_take(now, min(n_messages, ch.bucket.burst))
        if self.in_outage(ch, now):
            ch.count_error("outage")
            return latency, (503, {}, {"error": "outage", "message": "provider outage"}), False
        if wait > 0 or u429 < b.rate_429:
            retry_after = max(wait, b.retry_after_s) if wait > 0 else b.retry_after_s
            header = str(max(1, math.ceil(retry_after))) if retry_after > 0 else "0"
            ch.count_error("rate_limited")
            body = {"error": "rate_limited", "retry_after_s": retry_after}
            return latency, (429, {"Retry-After": header}, body), False
        if utimeout < b.timeout_rate:
            ch.count_error("timeout")
            return latency, None, True
        return latency, None, False

    def _timeout_reply(self, ch: _Channel) -> Reply:
        self._sleep(ch.behaviour.hang_s)
        return 504, {}, {"error": "timeout", "message": "provider did not answer in time"}

    def _process(
        self,
        ch: _Channel,
        items: Sequence[tuple[str, Mapping[str, Any]]],
        batch_id: str | None,
    ) -> list[tuple[int, dict[str, Any], bool]]:
        """Decide and record every message in one transaction: [(status, body, replayed)]."""
        b = ch.behaviour
        now_ms = int(time.time() * 1000)
        out: list[tuple[int, dict[str, Any], bool]] = []
        accepted = duplicates = 0
        errors: dict[str, int] = {}
        db = self.ledger.db
        with self.ledger.lock:
            db.execute("BEGIN")
            try:
                for key, message in items:
                    msg_hash = _hash_message(message)
                    row = db.execute(
                        "SELECT response, message_hash FROM deliveries "
                        "WHERE channel = ? AND idempotency_key = ? UNION ALL "
                        "SELECT response, message_hash FROM rejections "
                        "WHERE channel = ? AND idempotency_key = ? LIMIT 1",
                        (ch.name, key, ch.name, key),
                    ).fetchone()
                    if row is not None:
                        body: dict[str, Any]
                        stored = orjson.loads(row[0])
                        if b.reject_key_reuse and row[1] != msg_hash:
                            status = 422
                            body = {
                                "error": "idempotency_key_reuse",
                                "idempotency_key": key,
                                "message": "key reused with a different message",
                            }
                            errors["idempotency_key_reuse"] = errors.get("idempotency_key_reuse", 0) + 1
                            db.execute(_UPSERT_ATTEMPT, (ch.name, key, status, now_ms)).fetchone()
                            out.append((status, body, False))
                            continue
                        duplicates += 1
                        db.execute(_UPSERT_ATTEMPT, (ch.name, key, stored["status"], now_ms)).fetchone()
                        out.append((stored["status"], stored, True))
                        continue
                    recipient = _recipient(message, b.recipient_fields)
                    error: str | None = None
                    if recipient is None:
                        status, error = 400, "missing_recipient"
                    elif recipient in b.invalid_recipients or (
                        b.invalid_substring and b.invalid_substring in recipient
                    ):
                        status, error = 400, "invalid_recipient"
                    elif ch.rng.random() < b.error_rate:
                        status, error = 503, "unavailable"
                    else:
                        status = 200
                    (attempt,) = db.execute(_UPSERT_ATTEMPT, (ch.name, key, status, now_ms)).fetchone()
                    if status == 200:
                        body = {
                            "status": 200,
                            "id": self._next_id(ch.name),
                            "idempotency_key": key,
                            "channel": ch.name,
                            "accepted_at_ms": now_ms,
                        }
                        db.execute(
                            "INSERT INTO deliveries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (
                                ch.name,
                                key,
                                orjson.dumps(_event_ids(message)).decode(),
                                batch_id,
                                now_ms,
                                attempt,
                                msg_hash,
                                orjson.dumps(body).decode(),
                            ),
                        )
                        accepted += 1
                    else:
                        assert error is not None
                        errors[error] = errors.get(error, 0) + 1
                        body = {"status": status, "error": error, "idempotency_key": key}
                        if status < 500:  # permanent: stored like an acceptance
                            db.execute(
                                "INSERT INTO rejections VALUES (?, ?, ?, ?, ?, ?)",
                                (
                                    ch.name,
                                    key,
                                    status,
                                    now_ms,
                                    msg_hash,
                                    orjson.dumps(body).decode(),
                                ),
                            )
                    out.append((status, body, False))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        with ch.lock:
            ch.counters.accepted += accepted
            ch.counters.duplicates += duplicates
            for kind, n in errors.items():
                ch.counters.errors[kind] = ch.counters.errors.get(kind, 0) + n
        return out

    # -- endpoints ----------------------------------------------------------------------

    def channel(self, name: str) -> _Channel | None:
        """Return the runtime of channel ``name``, or None."""
        return self.channels.get(name)

    def send(self, ch: _Channel, key: str, message: Mapping[str, Any]) -> Reply:
        """Handle one message."""
        latency, fault, timeout = self._request_fault(ch, 1)
        self._sleep(latency)
        if fault is not None:
            self.ledger.bump_attempts(ch.name, [key], fault[0], int(time.time() * 1000))
            return fault
        if timeout and not ch.behaviour.timeout_delivers:
            self.ledger.bump_attempts(ch.name, [key], 504, int(time.time() * 1000))
            return self._timeout_reply(ch)
        ((status, body, replayed),) = self._process(ch, [(key, message)], None)
        if timeout:
            return self._timeout_reply(ch)
        headers = {"Idempotent-Replayed": "true"} if replayed else {}
        return status, headers, body

    def bulk(self, ch: _Channel, batch_key: str | None, messages: Sequence[Mapping[str, Any]]) -> Reply:
        """Handle a batch; per-message results, HTTP 200 even when some messages failed."""
        if len(messages) > ch.behaviour.max_bulk:
            ch.count_error("batch_too_large")
            return 413, {}, {"error": "batch_too_large", "max_bulk": ch.behaviour.max_bulk}
        keys = [str(m["idempotency_key"]) for m in messages]
        if batch_key is not None:
            with self.ledger.lock:
                row = self.ledger.db.execute(
                    "SELECT response FROM batches WHERE channel = ? AND batch_key = ?",
                    (ch.name, batch_key),
                ).fetchone()
            if row is not None:
                latency, fault, timeout = self._request_fault(ch, len(messages))
                self._sleep(latency)
                if fault is not None:
                    self.ledger.bump_attempts(ch.name, keys, fault[0], int(time.time() * 1000))
                    return fault
                with ch.lock:
                    ch.counters.duplicates += len(messages)
                self.ledger.bump_attempts(ch.name, keys, 200, int(time.time() * 1000))
                return 200, {"Idempotent-Replayed": "true"}, orjson.loads(row[0])
        latency, fault, timeout = self._request_fault(ch, len(messages))
        self._sleep(latency)
        if fault is not None:
            self.ledger.bump_attempts(ch.name, keys, fault[0], int(time.time() * 1000))
            return fault
        if timeout and not ch.behaviour.timeout_delivers:
            self.ledger.bump_attempts(ch.name, keys, 504, int(time.time() * 1000))
            return self._timeout_reply(ch)
        batch_id = batch_key or self._next_id(f"{ch.name}-batch")
        results = self._process(ch, list(zip(keys, messages, strict=True)), batch_id)
        out_results = []
        counts = {"accepted": 0, "failed": 0, "replayed": 0}
        final = True
        for status, body, replayed in results:
            item = dict(body)
            item["status"] = status
            if replayed:
                item["replayed"] = True
                counts["replayed"] += 1
            if status == 200:
                counts["accepted"] += 1
            else:
                counts["failed"] += 1
            if status >= 500 or status in (408, 429):
                final = False
            out_results.append(item)
        reply = {"batch_id": batch_id, **counts, "results": out_results}
        if batch_key is not None and final:
            with self.ledger.lock:
                self.ledger.db.execute(
                    "INSERT OR IGNORE INTO batches VALUES (?, ?, ?, ?)",
                    (ch.name, batch_key, int(time.time() * 1000), orjson.dumps(reply).decode()),
                )
        if timeout:
            return self._timeout_reply(ch)
        return 200, {}, reply

    def stats(self) -> dict[str, Any]:
        """Per-channel counters."""
        channels = {}
        for name, ch in self.channels.items():
            with ch.lock:
                channels[name] = ch.counters.as_dict()
            channels[name]["outage"] = self.in_outage(ch, time.monotonic())
        return {"uptime_s": round(time.monotonic() - self.started_mono, 3), "channels": channels}

    def ledger_rows(self, channel: str | None, limit: int | None) -> list[dict[str, Any]]:
        """List accepted deliveries, oldest first, with the key's total attempt count."""
        sql = (
            "SELECT d.channel, d.idempotency_key, d.event_ids, d.batch_id, d.received_at_ms, "
            "d.attempt, a.attempts FROM deliveries d LEFT JOIN attempts a "
            "ON a.channel = d.channel AND a.idempotency_key = d.idempotency_key"
        )
        args: list[Any] = []
        if channel is not None:
            sql += " WHERE d.channel = ?"
            args.append(channel)
        sql += " ORDER BY d.rowid"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self.ledger.lock:
            rows = self.ledger.db.execute(sql, args).fetchall()
        return [
            {
                "channel": r[0],
                "idempotency_key": r[1],
                "event_ids": orjson.loads(r[2]),
                "batch_id": r[3],
                "received_at_ms": r[4],
                "attempt": r[5],
                "attempts": r[6],
            }
            for r in rows
        ]

    def ledger_count(self, channel: str | None) -> int:
        """Count accepted deliveries."""
        sql, args = "SELECT COUNT(*) FROM deliveries", []
        if channel is not None:
            sql, args = sql + " WHERE channel = ?", [channel]
        with self.ledger.lock:
            return int(self.ledger.db.execute(sql, args).fetchone()[0])

    def attempts(self, channel: str | None, key: str | None) -> list[dict[str, Any]]:
        """Attempt counts per key (accepted or not)."""
        sql = "SELECT channel, idempotency_key, attempts, last_status FROM attempts WHERE 1=1"
        args: list[Any] = []
        if channel is not None:
            sql += " AND channel = ?"
            args.append(channel)
        if key is not None:
            sql += " AND idempotency_key = ?"
            args.append(key)
        with self.ledger.lock:
            rows = self.ledger.db.execute(sql + " ORDER BY rowid", args).fetchall()
        return [
            {"channel": r[0], "idempotency_key": r[1], "attempts": r[2], "last_status": r[3]} for r in rows
        ]

    def set_outage(self, ch: _Channel, active: bool, duration_s: float | None) -> None:
        """Start (optionally for ``duration_s``) or stop an outage now."""
        with ch.lock:
            if active and duration_s is not None:
                ch.behaviour = ch.behaviour.patched({"outage": False})
                ch.outage_until = time.monotonic() + duration_s
            else:
                ch.behaviour = ch.behaviour.patched({"outage": active})
                ch.outage_until = None

    def reset(self) -> None:
        """Clear ledger and counters; restore configured behaviour, RNGs and the clock."""
        self.ledger.clear()
        self.started_mono = time.monotonic()
        for ch in self.channels.values():
            ch.reset(self.seed)


# --------------------------------------------------------------------------------------
# HTTP layer
# --------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # never wait for hanging handlers on stop
    core: _Core

    def __init__(self, addr: tuple[str, int], core: _Core) -> None:
        self.core = core
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(addr, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a dropped connection in one line (no traceback; never message contents)."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            log.warning("connection error: %s", type(exc).__name__)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024  # buffered: headers + body leave in one send (flushed per request)
    server_version = "provider-sim/1"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.sockets_lock:
            self.server.open_sockets.add(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        with self.server.sockets_lock:
            self.server.open_sockets.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
        """No access log: URLs are safe, but a log line per request is too slow and noisy."""

    def _reply(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        data = orjson.dumps(body)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # client gone (e.g. it timed out while we hung)
            self.close_connection = True

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return orjson.loads(raw) if raw else None

    def do_GET(self) -> None:
        """Handle admin reads."""
        self._dispatch("GET")

    def do_POST(self) -> None:
        """Handle sends and admin writes."""
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        core = self.server.core
        url = urllib.parse.urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        query = dict(urllib.parse.parse_qsl(url.query))
        try:
            body = self._body() if method == "POST" else None
        except (orjson.JSONDecodeError, ValueError):
            self._reply(400, {"error": "bad_request", "message": "body is not valid JSON"})
            return
        try:
            self._route(core, method, parts, query, body)
        except Exception as exc:  # never leak message contents into logs
            log.error("internal error on %s %s: %s", method, url.path, type(exc).__name__)
            self._reply(500, {"error": "internal", "message": type(exc).__name__})

    def _route(
        self,
        core: _Core,
        method: str,
        parts: list[str],
        query: dict[str, str],
        body: Any,
    ) -> None:
        if len(parts) == 3 and parts[0] == "v1" and method == "POST":
            ch = core.channel(parts[1])
            if ch is None:
                self._reply(404, {"error": "unknown_channel", "channel": parts[1]})
                return
            if parts[2] == "send":
                key = self.headers.get("Idempotency-Key")
                if not key:
                    ch.count_error("bad_request")
                    self._reply(400, {"error": "missing_idempotency_key"})
                    return
                if not isinstance(body, dict):
                    ch.count_error("bad_request")
                    self._reply(400, {"error": "bad_request", "message": "body must be an object"})
                    return
                status, headers, reply = core.send(ch, key, body)
                self._reply(status, reply, headers)
                return
            if parts[2] == "bulk":
                messages = body.get("messages") if isinstance(body, dict) else None
                if not isinstance(messages, list) or not all(
                    isinstance(m, dict) and isinstance(m.get("idempotency_key"), str | int) for m in messages
                ):
                    ch.count_error("bad_request")
                    self._reply(
                        400,
                        {
                            "error": "bad_request",
                            "message": "body must be {messages: [{..., idempotency_key}]}",
                        },
                    )
                    return
                status, headers, reply = core.bulk(ch, self.headers.get("Idempotency-Key") or None, messages)
                self._reply(status, reply, headers)
                return
        if parts[:1] == ["admin"]:
            self._admin(core, method, parts[1:], query, body)
            return
        self._reply(404, {"error": "not_found"})

    def _admin(
        self,
        core: _Core,
        method: str,
        parts: list[str],
        query: dict[str, str],
        body: Any,
    ) -> None:
        name = parts[0] if parts else ""
        channel = query.get("channel")
        if method == "GET" and name == "health":
            self._reply(200, {"status": "ok", "channels": sorted(core.channels)})
        elif method == "GET" and name == "stats":
            self._reply(200, core.stats())
        elif method == "GET" and name == "ledger":
            if query.get("count") in ("1", "true"):
                self._reply(200, {"count": core.ledger_count(channel)})
            else:
                limit = int(query["limit"]) if "limit" in query else None
                self._reply(200, core.ledger_rows(channel, limit))
        elif method == "GET" and name == "attempts":
            self._reply(200, core.attempts(channel, query.get("key")))
        elif method == "POST" and name == "reset":
            core.reset()
            self._reply(200, {"status": "reset"})
        elif name in ("behaviour", "outage") and len(parts) == 2:
            ch = core.channel(parts[1])
            if ch is None:
                self._reply(404, {"error": "unknown_channel", "channel": parts[1]})
            elif method == "GET" and name == "behaviour":
                self._reply(200, ch.behaviour.raw)
            elif method == "POST" and name == "behaviour":
                if not isinstance(body, dict):
                    self._reply(400, {"error": "bad_request", "message": "patch must be an object"})
                    return
                try:
                    ch.set_behaviour(ch.behaviour.patched(body))
                except (ValueError, KeyError, TypeError) as exc:
                    self._reply(400, {"error": "bad_behaviour", "message": str(exc)})
                    return
                log.info("behaviour of %s patched: keys %s", ch.name, sorted(body))
                self._reply(200, ch.behaviour.raw)
            elif method == "POST" and name == "outage":
                active = body.get("active") if isinstance(body, dict) else None
                duration = body.get("duration_s") if isinstance(body, dict) else None
                if not isinstance(active, bool) or not (
                    duration is None or (isinstance(duration, int | float) and duration >= 0)
                ):
                    self._reply(
                        400,
                        {
                            "error": "bad_request",
                            "message": 'body: {"active": bool, "duration_s"?}',
                        },
                    )
                    return
                core.set_outage(ch, active, duration)
                log.info("outage on %s: active=%s duration_s=%s", ch.name, active, duration)
                self._reply(200, {"channel": ch.name, "active": active, "duration_s": duration})
            else:
                self._reply(405, {"error": "method_not_allowed"})
        else:
            self._reply(404, {"error": "not_found"})


class PortInUseError(OSError):
    """The requested port is taken."""


class ProviderSim:
    """The simulator, embeddable: ``start()`` serves in a background thread, ``stop()`` ends it."""

    def __init__(
        self,
        config: str | os.PathLike[str] | Mapping[str, Any] | SimConfig | None = None,
        ledger_path: str | os.PathLike[str] = ":memory:",
        seed: int | None = None,
    ) -> None:
        self.config = config if isinstance(config, SimConfig) else load_config(config)
        self.ledger_path = ledger_path
        self.seed = self.config.seed if seed is None else seed
        self._core: _Core | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123``."""
        if self.address is None:
            raise RuntimeError("provider-sim is not running")
        return f"http://{self.address[0]}:{self.address[1]}"

    def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Bind and serve in a daemon thread; returns the bound (host, port)."""
        if self._server is not None:
            raise RuntimeError("provider-sim already started")
        core = _Core(self.config, self.ledger_path, self.seed)
        try:
            server = _Server((host, port), core)
        except OSError as exc:
            core.ledger.close()
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(exc.errno, f"port {port} on {host} is already in use") from None
            raise
        self._core, self._server = core, server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="provider-sim"
        )
        self._thread.daemon = True
        self._thread.start()
        bound = server.server_address
        self.address = (str(bound[0]), int(bound[1]))
        log.info("provider-sim serving channels %s", ", ".join(sorted(core.channels)))
        return self.address

    def stop(self) -> None:
        """Stop serving, drop open connections, wake hanging handlers, close the ledger."""
        server, core, thread = self._server, self._core, self._thread
        if server is None or core is None:
            return
        core.stop_event.set()
        server.shutdown()
        server.server_close()
        with server.sockets_lock:
            for sock in list(server.open_sockets):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5)
        core.ledger.close()
        self._server = self._core = self._thread = None
        self.address = None

    def __enter__(self) -> ProviderSim:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------


class ProviderSimError(RuntimeError):
    """An admin call failed."""


class SimClient(ProviderClient):
    """Provider client plus the simulator's admin API (tests, benchmarks, scripts)."""

    def _admin(self, method: str, path: str, body: Any = None) -> Any:
        status, _, reply = self.request(method, path, body)
        if status != 200:
            raise ProviderSimError(f"{method} {path} -> {status}: {reply}")
        return reply

    def health(self) -> dict[str, Any]:
        """GET /admin/health."""
        return dict(self._admin("GET", "/admin/health"))

    def stats(self) -> dict[str, Any]:
        """GET /admin/stats."""
        return dict(self._admin("GET", "/admin/stats"))

    def ledger(self, channel: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """List accepted deliveries (all channels if ``channel`` is None)."""
        q = {k: v for k, v in (("channel", channel), ("limit", limit)) if v is not None}
        return list(self._admin("GET", "/admin/ledger?" + urllib.parse.urlencode(q)))

    def ledger_count(self, channel: str | None = None) -> int:
        """Count accepted deliveries."""
        q = {"count": "1", **({"channel": channel} if channel else {})}
        return int(self._admin("GET", "/admin/ledger?" + urllib.parse.urlencode(q))["count"])

    def attempts(self, channel: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        """Attempt counts per key."""
        q = {k: v for k, v in (("channel", channel), ("key", key)) if v is not None}
        return list(self._admin("GET", "/admin/attempts?" + urllib.parse.urlencode(q)))

    def set_behaviour(self, channel: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Patch a channel's behaviour; returns the full new behaviour."""
        return dict(self._admin("POST", f"/admin/behaviour/{channel}", dict(patch)))

    def set_outage(self, channel: str, active: bool, duration_s: float | None = None) -> None:
        """Start or stop an outage now (optionally for ``duration_s``)."""
        body: dict[str, Any] = {"active": active}
        if duration_s is not None:
            body["duration_s"] = duration_s
        self._admin("POST", f"/admin/outage/{channel}", body)

    def reset(self) -> None:
        """Clear ledger and counters; back to the configured behaviour."""
        self._admin("POST", "/admin/reset", {})


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator in the foreground until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="provider-sim", description="Provider simulator for email/SMS/push/... channels."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--config", default=None, help="YAML config (default: built-in)")
    parser.add_argument("--ledger", default=":memory:", help="SQLite ledger file")
    parser.add_argument("--seed", type=int, default=None, help="RNG seed (default: config's)")
    parser.add_argument("--port-file", default=None, help="also write the bound port here")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    try:
        sim = ProviderSim(args.config, args.ledger, args.seed)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"provider-sim: bad config: {exc}", file=sys.stderr)
        return 2
    try:
        host, port = sim.start(args.host, args.port)
    except PortInUseError:
        print(
            f"provider-sim: port {args.port} on {args.host} is already in use; "
            f"pick another --port (0 = any free port).",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        print(f"provider-sim: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    if args.port_file:  # written before the line below, so either signals readiness
        tmp = f"{args.port_file}.tmp"
        Path(tmp).write_text(f"{port}\n", encoding="utf-8")
        os.replace(tmp, args.port_file)
    print(f"provider-sim listening on http://{host}:{port}", flush=True)
    done = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not done.wait(1.0):
            pass
    finally:
        sim.stop()
        log.info("provider-sim stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
