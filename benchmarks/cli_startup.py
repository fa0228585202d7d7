"""How long ``medsight --help`` takes in a fresh process: registering every command must not import the heavy
libraries (torch, scikit-learn, FastAPI...), which cost seconds before each command ran.

    python benchmarks/cli_startup.py [--src PATH --label NAME] [--runs 5]

``--src`` times another checkout's ``src`` (e.g. a worktree of an older commit, put first on PYTHONPATH) under
``--label``; each label's times and provenance (command, commit, date) are kept in benchmarks/results/cli_startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support.provenance import provenance

from medsight.io.atomic import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "cli_startup.json"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, help="a checkout's src folder to time instead of this one")
    p.add_argument("--label", default="this checkout")
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    env = dict(os.environ)
    commit = None
    if args.src is not None:
        env["PYTHONPATH"] = str(args.src.resolve())
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.src, capture_output=True,
                                text=True, check=True).stdout.strip()
    seconds = []
    for _ in range(args.runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "medsight", "--help"], env=env, check=True, capture_output=True)
        seconds.append(time.perf_counter() - started)
    record = provenance("cli_startup.py")
    if commit is not None:
        record["commit"] = commit
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for key in ("provenance", "median_seconds", "seconds"):
        results.setdefault(key, {})
    results["provenance"][args.label] = record
    results["median_seconds"][args.label] = round(statistics.median(seconds), 3)
    results["seconds"][args.label] = [round(s, 3) for s in seconds]
    write_json(RESULTS, results)
    print(f"{args.label}: median {results['median_seconds'][args.label]} s over {args.runs} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
