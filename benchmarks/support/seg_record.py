"""What every segmentation benchmark writes beside its figures: the command, commit, date and the machine's load
(the CPU machine is shared, so a figure measured under load says so)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

from medsight.io.atomic import write_json
from support.provenance import commit

RESULTS = Path(__file__).resolve().parents[1] / "results"


def machine() -> dict[str, Any]:
    """Cores, threads used, and the 1/5/15-minute load averages at the time of writing."""
    load = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": int(os.environ.get("MEDSIGHT_THREADS", os.cpu_count() or 1)),
        "load_average_1_5_15_min": load,
        "note": "a shared machine: other engineers' jobs ran on the same cores",
    }


def write(name: str, record: dict[str, Any], command: str | None = None) -> Path:
    """``benchmarks/results/<name>.json`` with the record plus command, commit, date and machine."""
    full = {
        "command": command or " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv]),
        "commit": commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        **record,
    }
    path = RESULTS / f"{name}.json"
    write_json(path, full)
    print(f"results: {path}")
    return path
