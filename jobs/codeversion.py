"""A fingerprint of the pipeline code (``jobs/`` and ``udfs/``), to catch stale TaskManagers.

Thread mode runs Python inside the TaskManager JVM, and that interpreter lives as long as
the TaskManager: a module imported by an earlier job stays loaded. A new job version whose
code changed would then run old code silently. The client computes :func:`fingerprint` when
it builds the job; every Python operator compares it with :data:`LOADED` (computed when the
worker first imported the code) and fails with a clear message on a mismatch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fingerprint() -> str:
    """Return a short hash of every ``.py`` file under ``jobs/`` and ``udfs/`` (contents + names)."""
    digest = hashlib.sha256()
    for folder in ("jobs", "udfs"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


LOADED = fingerprint()
"""The fingerprint of the code as this process imported it."""


def check(expected: str) -> None:
    """Raise a clear error when the loaded code is not the code the job was built with."""
    if expected and expected != LOADED:
        raise RuntimeError(
            f"stale pipeline code in this TaskManager: loaded {LOADED}, job built with {expected}. "
            "Thread-mode Python lives as long as the TaskManager; restart it "
            "(scripts/cluster restart-taskmanager, or scripts/submit upgrade --restart-taskmanager)."
        )
