"""Process helpers: free ports, pid files, waiting, and stopping only what we started."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path


class StackError(RuntimeError):
    """A clear, one-sentence failure of the local stack (printed without a traceback)."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Return True when something already listens on (or holds) ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def require_free_port(port: int, what: str, host: str = "127.0.0.1") -> None:
    """Raise a clear StackError when ``port`` is taken."""
    if port_in_use(port, host):
        raise StackError(
            f"Port {port} on {host} is already in use, so {what} cannot start there; "
            f"stop whatever holds it or choose another port."
        )


def wait_for(
    check: Callable[[], bool],
    timeout_s: float,
    what: str,
    interval_s: float = 0.2,
    alive: Callable[[], bool] | None = None,
    log_hint: Callable[[], str] | None = None,
) -> None:
    """Poll ``check`` until it returns True; raise StackError after ``timeout_s``.

    ``alive`` (optional) is polled too: when the process we wait for has died we stop early.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        if alive is not None and not alive():
            hint = log_hint() if log_hint else ""
            raise StackError(f"{what} exited during start-up.{hint}")
        time.sleep(interval_s)
    hint = log_hint() if log_hint else ""
    raise StackError(f"{what} was not up within {timeout_s:.0f} s.{hint}")


def pid_alive(pid: int) -> bool:
    """Return True when a process with ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def pid_cmdline(pid: int) -> str:
    """Return the command line of ``pid`` ('' when unknown)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def read_pid(pid_file: Path) -> int | None:
    """Return the pid recorded in ``pid_file`` when that process is still alive."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def stop_pid(pid: int, marker: str, timeout_s: float = 20.0) -> bool:
    """Stop ``pid`` (TERM, then KILL after ``timeout_s``; 0 = KILL at once) if it is ours.

    The marker check protects against pid reuse: we only ever stop processes we started.
    Returns True when a process was stopped.
    """
    if not pid_alive(pid) or marker not in pid_cmdline(pid):
        return False
    if timeout_s > 0:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        if not pid_alive(pid):
            break
        time.sleep(0.1)
    return True


def tail(path: Path, lines: int = 15) -> str:
    """Return the last ``lines`` lines of a log file for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
