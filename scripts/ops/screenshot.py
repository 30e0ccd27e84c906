"""A PNG of a running job's graph in the Flink UI, taken with headless Chromium (``scripts/screenshot``).

Usage::

    scripts/screenshot            # the most recent RUNNING job -> docs/img/flink-ui-job-graph.png
    scripts/screenshot --job JOB_ID --out /tmp/graph.png [--window-size 1600,1400] [--scale 2]

Needs a running cluster (``scripts/cluster start``) and Chromium (Debian: ``apt-get install
chromium``). Chromium runs headless and is driven over the DevTools protocol (a minimal
WebSocket client, standard library only): open the job's overview page, wait until the
Angular UI has drawn the graph and filled in its metrics, drag the divider under the graph
down so the graph gets the most room the UI allows, zoom the graph to fill that pane (the UI's
own fit also counts its invisible pan area and leaves the nodes tiny), and capture the page.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ops.cluster import LocalFlinkCluster
from ops.paths import ROOT
from ops.proc import StackError
from ops.watch import find_cluster, pick_job

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DEFAULT_OUT = ROOT / "docs" / "img" / "flink-ui-job-graph.png"
GRAPH_DIVIDER = "flink-resize .resize.horizontal"
"""The divider between the job graph and the vertex list on the job overview page."""
GRAPH_NODES = "flink-dagre g.node"

FIT_GRAPH = """(() => {
  const svg = document.querySelector('flink-dagre svg');
  const zoom = svg && svg.querySelector('g');
  if (!zoom) return null;
  const box = svg.getBoundingClientRect(), host = svg.closest('flink-dagre').getBoundingClientRect();
  const top = Math.max(box.top, host.top) - box.top, bottom = Math.min(box.bottom, host.bottom) - box.top;
  const t = zoom.transform.baseVal.consolidate().matrix;
  const parts = [...svg.querySelectorAll('g.node, g.link-group path, g.link-group text')]
    .map(e => e.getBoundingClientRect()).filter(b => b.width > 0 || b.height > 0);
  if (!parts.length) return null;
  const left = Math.min(...parts.map(b => b.left)), upper = Math.min(...parts.map(b => b.top));
  const w = (Math.max(...parts.map(b => b.right)) - left) / t.a;
  const h = (Math.max(...parts.map(b => b.bottom)) - upper) / t.a;
  const x0 = (left - box.left - t.e) / t.a, y0 = (upper - box.top - t.f) / t.a;
  const margin = 30, height = bottom - top;
  const k = Math.min((box.width - 2 * margin) / w, (height - 2 * margin) / h, 1.5);
  const x = (box.width - w * k) / 2 - x0 * k, y = top + (height - h * k) / 2 - y0 * k;
  zoom.setAttribute('transform', `translate(${x},${y}) scale(${k})`);
  return k;
})()"""
"""Zoom the drawn graph (nodes and edges, not the UI's huge pan area) to fill the visible part of its pane."""


def find_browser() -> str:
    """Return the Chromium executable ($CHROMIUM, else the first of :data:`BROWSERS` on PATH)."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        if shutil.which(explicit) is None:
            raise StackError(f"CHROMIUM={explicit} is not an executable")
        return explicit
    for name in BROWSERS:
        if shutil.which(name):
            return name
    raise StackError(
        "screenshots need headless Chromium, but none of "
        f"{', '.join(BROWSERS)} is on PATH; install it (Debian/Ubuntu: apt-get install -y chromium) "
        "or point CHROMIUM at the executable"
    )


def job_graph_url(cluster: LocalFlinkCluster, job_id: str) -> str:
    """Return the Flink UI page with the job's graph (its running or completed view, by state)."""
    try:
        state = cluster.rest(f"/jobs/{job_id}").get("state")
    except urllib.error.HTTPError as exc:
        raise StackError(f"the cluster on {cluster.rest_url} has no job {job_id} ({exc.code})") from exc
    kind = "completed" if state in {"FINISHED", "CANCELED", "FAILED"} else "running"
    return f"{cluster.rest_url}/#/job/{kind}/{job_id}/overview"


def chromium_command(browser: str, profile: Path) -> list[str]:
    """Return the command line of a headless Chromium that listens for DevTools on a free port."""
    cmd = [
        browser,
        "--headless=new",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",  # the chosen port is written to <profile>/DevToolsActivePort
        f"--user-data-dir={profile}",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox on
    return [*cmd, "about:blank"]


class DevTools:
    """A minimal Chrome DevTools protocol client: one page target over a WebSocket (RFC 6455)."""

    def __init__(self, ws_url: str, timeout_s: float = 30.0) -> None:
        url = urllib.parse.urlsplit(ws_url)
        address = (url.hostname or "127.0.0.1", url.port or 80)
        self._sock = socket.create_connection(address, timeout=timeout_s)
        key = base64.b64encode(os.urandom(16)).decode()
        self._sock.sendall(
            (
                f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self._sock.recv(4096)
            if not chunk:
                break
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise StackError(f"DevTools refused the WebSocket: {head[:200]!r}")
        self._buffer = head.split(b"\r\n\r\n", 1)[1]
        self._next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events in between are skipped)."""
        self._next_id += 1
        self._send(json.dumps({"id": self._next_id, "method": method, "params": params}).encode())
        while True:
            message = json.loads(self._receive())
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise StackError(f"DevTools {method} failed: {message['error']}")
                return dict(message.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the page and return its (JSON) value."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def close(self) -> None:
        """Close the connection."""
        self._sock.close()

    def _send(self, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 1 << 16:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._sock.sendall(header + mask + masked)

    def _read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = self._sock.recv(max(65536, n - len(self._buffer)))
            if not chunk:
                raise StackError("DevTools closed the connection")
            self._buffer += chunk
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def _receive(self) -> bytes:
        """Return the next complete text message (fragments joined; pings answered)."""
        message = b""
        while True:
            first, second = self._read(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._read(8))
            mask = self._read(4) if second & 0x80 else b""
            data = self._read(length)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            opcode = first & 0x0F
            if opcode == 0x8:
                raise StackError("DevTools closed the connection")
            if opcode == 0x9:  # ping
                self._sock.sendall(struct.pack("!BB", 0x8A, 0x80 | len(data)) + b"\0\0\0\0" + data)
                continue
            message += data
            if first & 0x80:
                return message


def _page_socket(profile: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    """Wait for Chromium's DevTools port and return the WebSocket URL of its page."""
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"Chromium exited with {proc.returncode} before it opened DevTools")
        if port_file.exists() and port_file.read_text().strip():
            port = port_file.read_text().split()[0]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as resp:
                targets = json.loads(resp.read())
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
        time.sleep(0.2)
    raise StackError(f"Chromium opened no DevTools port within {timeout_s:.0f} s")


def _wait_for(page: DevTools, expression: str, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if page.evaluate(expression):
            return
        time.sleep(0.5)
    raise StackError(f"the Flink UI showed no {what} within {timeout_s:.0f} s")


def _enlarge_graph(page: DevTools) -> bool:
    """Drag the divider under the graph as far down as the UI allows; False when there is none."""
    box = page.evaluate(
        f"(() => {{ const e = document.querySelector({json.dumps(GRAPH_DIVIDER)}); if (!e) return null;"
        " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
    )
    if not box:
        return False
    x, y = box
    page.call("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left", clickCount=1)
    for step in range(1, 11):  # the UI caps the graph pane at 900 px
        page.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y + 50 * step, button="left")
    page.call("Input.dispatchMouseEvent", type="mouseReleased", x=x, y=y + 500, button="left", clickCount=1)
    return True


def screenshot(
    url: str,
    out: Path,
    window: str = "1600,1400",
    scale: float = 2.0,
    settle_s: float = 6.0,
    timeout_s: float = 60.0,
) -> Path:
    """Capture the Flink UI page ``url`` (graph pane enlarged) into the PNG ``out``; return ``out``."""
    browser = find_browser()
    width, height = (int(v) for v in window.split(","))
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="notify-chromium-") as tmp:
        profile = Path(tmp)
        proc = subprocess.Popen(
            chromium_command(browser, profile),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        page: DevTools | None = None
        try:
            page = DevTools(_page_socket(profile, proc, timeout_s), timeout_s)
            page.call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=height,
                deviceScaleFactor=scale,
                mobile=False,
            )
            page.call("Page.navigate", url=url)
            drawn = f"document.querySelectorAll({json.dumps(GRAPH_NODES)}).length > 0"
            _wait_for(page, drawn, timeout_s, "job graph")
            time.sleep(settle_s)  # metrics (busy, backpressure) arrive in the nodes with the next refresh
            if not _enlarge_graph(page):
                print("note: found no divider under the graph; it keeps its height", file=sys.stderr)
            for _ in range(2):  # again right before the capture: a metrics refresh may re-layout the graph
                time.sleep(0.5)
                fitted = page.evaluate(FIT_GRAPH)
            if fitted is None:
                print("note: could not zoom the graph to its pane; it keeps the UI's zoom", file=sys.stderr)
            shot = page.call("Page.captureScreenshot", format="png")
            out.write_bytes(base64.b64decode(shot["data"]))
        except (OSError, ValueError) as exc:
            raise StackError(f"talking to Chromium failed: {exc}") from exc
        finally:
            if page is not None:
                with contextlib.suppress(OSError, StackError):
                    page.call("Browser.close")
                page.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return out


def main(argv: list[str] | None = None) -> int:
    """Run ``scripts/screenshot``."""
    parser = argparse.ArgumentParser(prog="scripts/screenshot", description=__doc__.split("\n")[0])
    parser.add_argument("--job", default=None, help="job id (default: the most recent RUNNING job)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"PNG to write (default {DEFAULT_OUT})")
    parser.add_argument("--window-size", default="1600,1400", help="window WIDTH,HEIGHT (CSS px)")
    parser.add_argument("--scale", type=float, default=2.0, help="device scale factor (2: sharper)")
    parser.add_argument("--settle", type=float, default=6.0, help="seconds the UI gets to fill in metrics")
    parser.add_argument("--rest-port", type=int, default=None, help="REST port of another cluster")
    args = parser.parse_args(argv)
    try:
        find_browser()
        cluster = find_cluster(args.rest_port)
        job_id = args.job or pick_job(cluster.rest("/jobs/overview").get("jobs", []))
        url = job_graph_url(cluster, job_id)
        path = screenshot(url, Path(args.out), args.window_size, args.scale, args.settle)
        print(f"screenshot of {url}: {path} ({path.stat().st_size:,} bytes)")
    except (urllib.error.URLError, OSError) as exc:
        print(f"error: cannot reach the Flink REST API: {exc}", file=sys.stderr)
        return 1
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
