"""Older commits of this repository checked out next to it (benchmarks, the upgrade test)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from ops.paths import ROOT


def short_rev(rev: str) -> str:
    """Return the abbreviated commit id of ``rev``."""
    out = subprocess.run(
        ["git", "rev-parse", "--short", rev], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return out.stdout.strip()


@contextlib.contextmanager
def worktrees(revs: list[str], tmp: Path) -> Iterator[dict[str, str]]:
    """Yield ``{name: checkout root}`` for git revisions, each a worktree under ``tmp``.

    ``HEAD`` is this checkout as it is (root ``""``, name ``<sha>-worktree``); the others are
    detached worktrees sharing this checkout's jar cache, removed again on the way out.
    """
    roots: dict[str, str] = {}
    try:
        for rev in revs:
            name = short_rev(rev) + ("-worktree" if rev == "HEAD" else "")
            if rev == "HEAD":
                roots[name] = ""
                continue
            tree = tmp / name
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT, check=True)
            (tree / ".cache").symlink_to(ROOT / ".cache")
            roots[name] = str(tree)
        yield roots
    finally:
        for root in roots.values():
            if root:
                subprocess.run(["git", "worktree", "remove", "--force", root], cwd=ROOT, check=False)
