"""Benchmark helpers: a run's history whatever dlexp wrote it, and another revision of dlexp
to time side by side with this one (`--against <git rev>` in sweep_speed.py, mnist_speed.py).

The other revision is a git worktree in a temporary folder; its contenders run with it first
on PYTHONPATH (its package, configs and batched launcher), under the same Python, torch and
machine, interleaved with this checkout's runs.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def history(run: Path) -> list[dict]:
    """A run's epochs: metrics.json's `history` (dlexp before format 4) or its TensorBoard
    events (dlexp.record.read_history; `time/train_seconds` read as `train_seconds`)."""
    metrics = json.loads((run / "metrics.json").read_text())
    if "history" in metrics:
        return metrics["history"]
    from dlexp.record import read_history

    rows = read_history(run)
    for row in rows:
        row["train_seconds"] = row.pop("time/train_seconds", None)
    return rows


def checkout(rev: str) -> Path:
    """A worktree of `rev`, removed when the benchmark exits."""
    folder = Path(tempfile.mkdtemp(prefix="dlexp-rev-"))
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), rev],
        check=True,
        capture_output=True,
    )

    def remove() -> None:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)],
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)

    atexit.register(remove)
    return folder


def env_for(tree: Path | None, env: dict[str, str]) -> dict[str, str]:
    """`env` running dlexp from `tree` (None: this checkout)."""
    if tree is None:
        return env
    return {**env, "PYTHONPATH": os.pathsep.join([str(tree), env.get("PYTHONPATH", "")])}
