"""The classification recipe's choices, decided on the validation split only (issue 9: the test split decides nothing).

Compares, on PneumoniaMNIST and BreastMNIST at 28 px, the recipe's candidate settings:

* ``balanced-w16``: class-balanced cross-entropy, ResNet widths 16-128 (the default before this comparison);
* ``plain-w16``: plain cross-entropy, widths 16-128;
* ``balanced-w32``: class-balanced cross-entropy, widths 32-256.

Each run trains with ``medsight train``'s planner (only ``--epochs`` and a budget that does not bind are given, so
the result does not depend on how busy the machine is) and is scored on the official **validation** split: the
AUC and the log-loss after temperature scaling, at the best epoch. The test split is never loaded.

Decision rule, fixed before the runs: the setting with the highest validation AUC averaged over the seeds and then
over the two data sets wins; a setting within 0.002 AUC of the best counts as tied, and a tie goes to the simpler
or cheaper setting (plain before balanced loss, width 16 before 32). Validation AUC at the selected epoch is
optimistic for every setting alike, so it ranks settings; it is not a performance estimate.

Run: ``MEDSIGHT_DATA=../shared/data MEDSIGHT_THREADS=1 .venv/bin/python benchmarks/classification_ablation.py``
(``--sets``, ``--seeds``, ``--settings``, ``--epochs``). Writes ``benchmarks/results/classification_ablation.json``,
adding runs to those already there, so two processes can split the work (different ``--sets``) and be merged.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from support.provenance import provenance

from medsight.io.atomic import write_json
from medsight.tasks.classification import TASK, ClassificationOptions
from medsight.tasks.classification.plan import ClassificationPlanner

RESULTS = Path(__file__).resolve().parent / "results" / "classification_ablation.json"
SETTINGS = {
    "balanced-w16": {"class_balance": "on", "width": 16},
    "plain-w16": {"class_balance": "off", "width": 16},
    "balanced-w32": {"class_balance": "on", "width": 32},
}
#: Simplest first: the order in which ties are broken.
SIMPLICITY = ["plain-w16", "balanced-w16", "balanced-w32"]
TIE = 0.002
DEPENDS_ON = ("src/medsight/tasks/classification", "src/medsight/training", "src/medsight/data")


def run_one(
    flag: str, setting: str, seed: int, epochs: int, work: Path, settings: dict[str, dict[str, Any]] = SETTINGS
) -> dict[str, Any]:
    """Train one model of ``setting`` and keep its validation scores. One model alone: no seed members, no
    ensemble and no test-time views (the later validation candidates), so settings are compared as trained."""
    cfg = settings[setting]
    ClassificationPlanner.default_width = int(cfg["width"])
    try:
        options = ClassificationOptions(
            seed=seed,
            epochs=epochs,
            time_budget_s=1e6,
            class_balance=cfg["class_balance"],
            mixup=cfg.get("mixup"),
            seed_members=1,
            ensemble="off",
            tta="off",
        )
        start = time.monotonic()
        meta = TASK.train(f"medmnist:{flag}", work / f"{flag}_{setting}_{seed}", options)
    finally:
        ClassificationPlanner.default_width = 16
    val = meta["metrics"]["val"]
    return {
        "set": flag,
        "setting": setting,
        "seed": seed,
        "val_auc": float(val["auc"]),
        "val_metrics": val,
        "epochs_run": meta["training"]["epochs_run"],
        "best_epoch": meta["training"]["best_epoch"],
        "stopped_by": meta["training"]["stopped_by"],
        "seconds": round(time.monotonic() - start, 1),
    }


def decide(runs: list[dict[str, Any]], simplicity: list[str] = SIMPLICITY) -> dict[str, Any]:
    """Mean validation AUC per setting (over seeds, then over data sets) and the winner by the rule above, among
    the settings of ``simplicity`` (simplest first)."""
    sets = sorted({r["set"] for r in runs})
    table: dict[str, dict[str, Any]] = {}
    for setting in simplicity:
        per_set = {}
        for flag in sets:
            vals = [r["val_auc"] for r in runs if r["set"] == flag and r["setting"] == setting]
            if vals:
                per_set[flag] = {
                    "mean": statistics.mean(vals),
                    "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                    "n": len(vals),
                }
        if len(per_set) == len(sets):
            table[setting] = {"per_set": per_set, "mean": statistics.mean(v["mean"] for v in per_set.values())}
    if not table:
        return {"table": table, "winner": None}
    best = max(v["mean"] for v in table.values())
    tied = [s for s in simplicity if s in table and table[s]["mean"] >= best - TIE]
    return {"table": table, "best_mean_val_auc": best, "tied_within": TIE, "winner": tied[0]}


def ablate(
    doc: str,
    script: str,
    settings: dict[str, dict[str, Any]],
    simplicity: list[str],
    results: Path,
    default_sets: tuple[str, ...] = ("pneumoniamnist", "breastmnist"),
) -> None:
    """The command line of an ablation: train every (set, setting, seed) asked, scored on validation, adding each
    run to ``results`` as it finishes (under a lock) with the decision by the rule in ``doc``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=list(default_sets))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=list(settings), choices=list(settings))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--results", type=Path, default=results)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    prov = provenance(script, DEPENDS_ON, seeds=args.seeds, epochs=args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        for flag in args.sets:
            for setting in args.settings:
                for seed in args.seeds:
                    r = run_one(flag, setting, seed, args.epochs, Path(tmp), settings) | {"provenance": prov}
                    print(
                        f"{flag} {setting} seed {seed}: val AUC {r['val_auc']:.4f}, {r['epochs_run']} epochs "
                        f"(best {r['best_epoch']}), {r['seconds']} s",
                        flush=True,
                    )
                    with open(args.results.with_suffix(".lock"), "w") as lock:
                        fcntl.flock(lock, fcntl.LOCK_EX)
                        saved = json.loads(args.results.read_text()) if args.results.is_file() else {"runs": []}
                        saved["runs"] = [
                            x for x in saved["runs"] if (x["set"], x["setting"], x["seed"]) != (flag, setting, seed)
                        ] + [r]
                        saved["decision"] = decide(saved["runs"], simplicity)
                        saved["rule"] = doc.split("Decision rule, fixed before the runs: ")[1].split("\n\n")[0]
                        write_json(args.results, saved)
    print(json.dumps(json.loads(args.results.read_text())["decision"], indent=1))


def main() -> None:
    ablate(__doc__, "classification_ablation.py", SETTINGS, SIMPLICITY, RESULTS)


if __name__ == "__main__":
    main()
