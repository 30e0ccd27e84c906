"""Where things live: repo root, runtime folder, jar cache, the venv's python."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(os.environ.get("NOTIFY_ROOT") or Path(__file__).resolve().parents[2])
"""Repository root (override with NOTIFY_ROOT)."""

RUN_DIR = Path(os.environ.get("NOTIFY_RUN_DIR") or ROOT / ".run")
"""Git-ignored runtime folder: Kafka data, Flink conf/logs/checkpoints, pid files."""

JAR_DIR = ROOT / ".cache" / "jars"
"""Git-ignored cache of the pinned JVM artifacts (see conf/jars/)."""

CONF_DIR = ROOT / "conf"


def venv_python() -> Path:
    """Return the project's virtualenv python, falling back to the running interpreter."""
    candidate = ROOT / ".venv" / "bin" / "python"
    return candidate if candidate.exists() else Path(sys.executable)


def kafka_classpath() -> str:
    """Return the broker classpath (all jars fetched by scripts/setup into the cache)."""
    return str(JAR_DIR / "kafka" / "*")
