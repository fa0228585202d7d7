"""PneumoniaMNIST and BreastMNIST at 28 px, 3 seeds each: test AUC and ACC beside MedMNIST v2's numbers.

Run: ``make benchmarks`` or ``MEDSIGHT_DATA=../shared/data .venv/bin/python benchmarks/medmnist.py``
Options: ``--sets pneumoniamnist breastmnist --seeds 0 1 2 --epochs 40 --time-budget 540``.
Each run trains through the classification task's contract (``medsight train`` with ``--epochs`` and
``--time-budget``; everything else planned), then evaluates on the official test split. ACC is reported as
MedMNIST defines it (threshold 0.5) and at the operating point chosen on val.

Results go to ``benchmarks/results/medmnist.json`` (``--results``): per data set the list of runs (figures with
95% CIs, seed, epochs, seconds) and, under ``provenance``, the command, git commit, date and seeds of the runs
that produced them. Only the data sets run are replaced, so earlier figures of the others are kept; the figures a
run replaces move to ``previous[<set>]`` (a list, newest first, each with its provenance) for comparison.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from support.provenance import commit

from medsight.evaluation.metrics import N_BOOTSTRAP
from medsight.io.atomic import write_json
from medsight.tasks.classification import TASK, ClassificationOptions

RESULTS = Path(__file__).resolve().parent / "results" / "medmnist.json"

#: MedMNIST v2 (Yang et al., Scientific Data 2023), test AUC / ACC, and the goals in targets.md.
BASELINES = {
    "pneumoniamnist": {
        "ResNet-18 (28)": (0.944, 0.854),
        "ResNet-50 (224)": (0.962, 0.884),
        "AutoML Vision": (0.991, 0.946),
        "goal": (0.99, 0.95),
    },
    "breastmnist": {
        "ResNet-18 (28)": (0.901, 0.863),
        "ResNet-50 (224)": (0.866, 0.842),
        "AutoML Vision": (0.919, 0.861),
        "goal": (0.93, 0.89),
    },
}


#: The code these figures depend on: a local change there marks the commit ``-dirty``.
DEPENDS_ON = (
    "src/medsight/tasks/classification",
    "src/medsight/training",
    "src/medsight/evaluation",
    "src/medsight/data",
    "src/medsight/transforms.py",
    "benchmarks/medmnist.py",
)


def run_one(flag: str, seed: int, epochs: int, budget: float, work: Path) -> dict[str, Any]:
    bundle, evaluation = work / f"{flag}_{seed}", work / f"{flag}_{seed}_eval"
    start = time.monotonic()
    options = ClassificationOptions(seed=seed, epochs=epochs, time_budget_s=budget)
    meta = TASK.train(f"medmnist:{flag}", bundle, options)
    train_s = time.monotonic() - start
    result = TASK.evaluate(bundle, f"medmnist:{flag}", "test", evaluation, N_BOOTSTRAP)
    m, at05 = result["metrics"], result["operating_point"]["at_0.5"]
    return {
        "seed": seed,
        "auc": m["auc"]["value"],
        "auc_ci95": m["auc"]["ci95"],
        "acc_at_0.5": at05["accuracy"]["value"],
        "acc_at_0.5_ci95": at05["accuracy"]["ci95"],
        "acc_at_operating_point": m["accuracy"]["value"],
        "acc_at_operating_point_ci95": m["accuracy"]["ci95"],
        "sensitivity": m["sensitivity"]["value"],
        "specificity": m["specificity"]["value"],
        "ece_after_calibration": m["ece"]["value"],
        "recipe": meta["training"].get("recipe_selection", {}).get("chosen"),
        "recipe_candidates_val": meta["training"].get("recipe_selection", {}).get("candidates"),
        "weights": meta["training"].get("weights"),  # trained or averaged weights, chosen on validation
        # the recipes' models averaged (mean logits), when validation kept that candidate
        "ensemble_members": meta["training"].get("ensemble_members"),
        # seeds each recipe was trained from (the further ones join the ensemble only), as the planner chose
        "seed_members": meta["plan"].get("seed_members", 1),
        # test-time augmentation: the views averaged and every candidate's validation scores (chosen on validation)
        "test_time_views": meta["training"].get("test_time_views"),
        "epochs_run": meta["training"]["epochs_run"],
        "best_epoch": meta["training"]["best_epoch"],
        "stopped_by": meta["training"]["stopped_by"],
        "expected_train_seconds": meta["training"]["expected_seconds"],
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.monotonic() - start, 1),
    }


def mean_sd(runs: list[dict[str, Any]], key: str) -> str:
    vals = [r[key] for r in runs]
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} ± {sd:.3f}"


def save(path: Path, runs: dict[str, list[dict[str, Any]]], provenance: dict[str, Any]) -> None:
    """Replace the data sets just run in ``path``, keeping the others (and their provenance)."""
    document: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    known = document.setdefault("provenance", {})
    for flag, rs in runs.items():
        earlier = known.get(flag)
        if earlier is not None and earlier.get("commit") != provenance["commit"] and flag in document:
            # Keep the figures this run replaces, with their provenance, to compare against.
            history = document.setdefault("previous", {}).setdefault(flag, [])
            if isinstance(history, dict):  # files written before the history was a list
                history = document["previous"][flag] = [history]
            history.insert(0, {"provenance": earlier, "runs": document[flag]})
        document[flag] = [{**r, "commit": provenance["commit"]} for r in rs]
        known[flag] = provenance
    write_json(path, document)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["pneumoniamnist", "breastmnist"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--time-budget", type=float, default=540.0, help="training seconds per run (< 10 min)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"results file to update (default {RESULTS})")
    parser.add_argument("--json", type=Path, help="also write this invocation's runs alone to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")  # the plan, before each run
    provenance = {
        "command": "python benchmarks/medmnist.py " + shlex.join(sys.argv[1:]),
        "commit": commit(DEPENDS_ON),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seeds": args.seeds,
        "epochs": args.epochs,
        "time_budget_s": args.time_budget,
    }
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for flag in args.sets:
            runs[flag] = []
            for seed in args.seeds:
                r = run_one(flag, seed, args.epochs, args.time_budget, Path(tmp))
                runs[flag].append(r)
                print(
                    f"{flag} seed {seed}: AUC {r['auc']:.4f} {r['auc_ci95']}, ACC@0.5 {r['acc_at_0.5']:.4f}, "
                    f"ACC@op {r['acc_at_operating_point']:.4f}, {r['epochs_run']} epochs, "
                    f"{r['train_seconds']} s training, {r['total_seconds']} s with evaluation",
                    flush=True,
                )
                save(args.results, {flag: runs[flag]}, provenance)  # a later failure keeps finished runs
    print()
    print("| data set | model | test AUC | test ACC (0.5) | ACC at val operating point | train s/run |")
    print("|---|---|---|---|---|---|")
    for flag, rs in runs.items():
        secs = statistics.mean(r["train_seconds"] for r in rs)
        print(
            f"| {flag} | medsight ResNet (28 px), {len(rs)} seeds | {mean_sd(rs, 'auc')} | "
            f"{mean_sd(rs, 'acc_at_0.5')} | "
            f"{mean_sd(rs, 'acc_at_operating_point')} | {secs:.0f} |"
        )
        for name, (auc, acc) in BASELINES[flag].items():
            print(f"| {flag} | {name} | {auc:.3f} | {acc:.3f} | | |")
    print(f"results: {args.results}")
    if args.json:
        write_json(args.json, {"provenance": provenance, **runs})


if __name__ == "__main__":
    main()
