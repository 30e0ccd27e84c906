"""HTTP client for notification providers (and the provider simulator): bulk and single sends.

One persistent HTTP/1.1 connection per client (calls on one client are serialised; use one
client per thread for concurrency). Sends never raise for HTTP errors, timeouts or
connection errors: they return a :class:`ProviderResponse` that ``delivery_policy.classify``
takes directly. Every send carries an idempotency key, which is what makes the one
automatic reconnect-and-resend on a stale kept-alive connection safe.

Example::

    client = ProviderClient("http://127.0.0.1:8900", timeout_s=2.0)
    r = client.bulk("email", [{"to": "a@example.com", "idempotency_key": "e1:email"}])
    r.status, r.body["results"][0]["status"]
"""

from __future__ import annotations

import http.client
import socket
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["ProviderClient", "ProviderResponse"]


@dataclass(frozen=True)
class ProviderResponse:
    """Outcome of one send/bulk call; fits ``delivery_policy.classify`` directly.

    ``status`` is None when no HTTP answer arrived (``timed_out`` or a connection error).
    """

    status: int | None
    body: dict[str, Any]
    retry_after_s: float | None = None
    replayed: bool = False
    timed_out: bool = False

    @property
    def error_code(self) -> str | None:
        """The provider's error code, or ``timeout``/``connection_error`` without answer."""
        if self.timed_out:
            return "timeout"
        if self.status is None:
            return "connection_error"
        err = self.body.get("error")
        return err if isinstance(err, str) else None


class ProviderClient:
    """Client with one persistent HTTP/1.1 connection (thread-safe, calls serialised)."""

    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"base_url must be http://host:port, got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the connection (a later call reconnects)."""
        with self._lock:
            self._drop()

    def __enter__(self) -> ProviderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self, timeout_s: float) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout_s)
            self._conn.connect()
            assert self._conn.sock is not None
            self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert self._conn.sock is not None
        self._conn.sock.settimeout(timeout_s)
        return self._conn

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """One request over the kept-alive connection; reconnects once on a stale connection.

        Raises ``TimeoutError`` on timeout and ``OSError`` on connection errors.
        """
        data = orjson.dumps(body) if body is not None else b""
        hdrs = {"Content-Type": "application/json", "Content-Length": str(len(data))}
        hdrs.update(headers or {})
        with self._lock:
            for attempt in (1, 2):
                fresh = self._conn is None
                try:
                    conn = self._connection(timeout_s or self.timeout_s)
                    conn.request(method, path, body=data, headers=hdrs)
                    resp = conn.getresponse()
                    raw = resp.read()
                except TimeoutError:
                    self._drop()
                    raise
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                    self._drop()
                    # A kept-alive connection the server closed: retry once on a new one.
                    # Safe because every send carries an idempotency key.
                    if fresh or attempt == 2:
                        raise
                    continue
                except (OSError, http.client.HTTPException):
                    self._drop()
                    raise
                if resp.will_close:
                    self._drop()
                return resp.status, dict(resp.headers.items()), orjson.loads(raw) if raw else None
        raise AssertionError("unreachable")

    def _call(self, path: str, body: Any, key: str | None, timeout_s: float | None) -> ProviderResponse:
        headers = {"Idempotency-Key": key} if key is not None else {}
        try:
            status, hdrs, reply = self.request("POST", path, body, headers, timeout_s)
        except TimeoutError:
            return ProviderResponse(None, {}, timed_out=True)
        except (OSError, http.client.HTTPException) as exc:
            return ProviderResponse(None, {"error": "connection_error", "message": type(exc).__name__})
        retry_after = hdrs.get("Retry-After")
        return ProviderResponse(
            status=status,
            body=reply if isinstance(reply, dict) else {},
            retry_after_s=float(retry_after) if retry_after is not None else None,
            replayed=hdrs.get("Idempotent-Replayed") == "true",
        )

    def send(
        self,
        channel: str,
        message: Mapping[str, Any],
        idempotency_key: str,
        timeout_s: float | None = None,
    ) -> ProviderResponse:
        """POST one message; never raises for HTTP errors, timeouts or connection errors."""
        return self._call(f"/v1/{channel}/send", dict(message), idempotency_key, timeout_s)

    def bulk(
        self,
        channel: str,
        messages: Sequence[Mapping[str, Any]],
        batch_key: str | None = None,
        timeout_s: float | None = None,
    ) -> ProviderResponse:
        """POST a batch; each message must carry ``idempotency_key``; results in ``body``."""
        return self._call(
            f"/v1/{channel}/bulk", {"messages": [dict(m) for m in messages]}, batch_key, timeout_s
        )
