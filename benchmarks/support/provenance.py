"""Provenance every results file records: the command, the git commit (``-dirty`` when the code the figures
depend on differs from it), the date, and how busy the machine was."""

from __future__ import annotations

import datetime as dt
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def commit(depends_on: Sequence[str] = ("src",)) -> str:
    """The checked-out commit, marked ``-dirty`` when a tracked file under ``depends_on`` has local changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *depends_on], cwd=ROOT, capture_output=True
        )
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def provenance(script: str, depends_on: Sequence[str] = ("src",), **extra: Any) -> dict[str, Any]:
    """Command, commit, date (UTC) and the 1-minute load average at the start (2 cores: > 2 means shared)."""
    threads = os.environ.get("MEDSIGHT_THREADS")
    return {
        "command": (f"MEDSIGHT_THREADS={threads} " if threads else "")
        + f"python benchmarks/{script} "
        + shlex.join(sys.argv[1:]),
        "commit": commit([*depends_on, f"benchmarks/{script}"]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        **extra,
    }
