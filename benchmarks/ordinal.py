"""Ordinal grades (issue 13): BUSI's normal < benign < malignant as an ordered scale, declared in a manifest, trained
with the loss, class balance and decoding chosen on validation, and scored once on the test fold: quadratic weighted
kappa, accuracy and macro AUC with 95% bootstrap CIs, over seeds.

BUSI is the only data here with labels that can be read as ordered: its three classes (normal, benign, malignant)
form a malignancy scale comparable to BI-RADS groups (1 / 2-3 / 4-5), but they are **not** BI-RADS assessments, and
the figures are not comparable with published BI-RADS or retinopathy-grading results.

Split: the published grouped 5-fold split (``src/medsight/data/busi_folds.json``), CV fold ``--fold`` (default 0):
that fold is the test split, the next fold validation, the other three training, exactly as ``benchmarks/busi.py``.
The benchmark writes a manifest (paths into the shared data, nothing copied) with a ``split`` column and a sidecar
``{"task": "ordinal", "labels": ["normal", "benign", "malignant"]}``, then for each seed runs ``medsight train``'s
library call and ``evaluate --split test`` once.

Decision rule (fixed before the runs, :mod:`medsight.tasks.classification.recipes`): training compares plain
cross-entropy and soft ordinal labels (SORD), each plain and class-balanced, on the validation fold's quadratic
weighted kappa; within 0.002 is a tie, won by the higher validation AUC, then the simpler recipe. The decoding
(arg-max, median or expected grade) is chosen the same way. The test fold is read only by the evaluation at the end.

Run: ``MEDSIGHT_DATA=../shared/data MEDSIGHT_THREADS=1 .venv/bin/python benchmarks/ordinal.py --seeds 0,1,2``
(images are resized to ``--size`` px so that a run fits about 10 minutes on 2 cores). Writes
``benchmarks/results/ordinal.json``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import pandas as pd
from support.provenance import provenance

from medsight import config
from medsight.data import busi, manifest
from medsight.io.atomic import write_json
from medsight.tasks.classification import TASK, ClassificationOptions

RESULTS = Path(__file__).resolve().parent / "results" / "ordinal.json"
#: Lowest grade first.
ORDER = ["normal", "benign", "malignant"]
METRICS = ("qwk", "accuracy", "auc", "mae")
DEPENDS_ON = (
    "src/medsight/tasks/classification",
    "src/medsight/training",
    "src/medsight/data",
    "src/medsight/evaluation",
)


def write_manifest(root: Path, dest: Path, fold: int = 0) -> Path:
    """A manifest of BUSI CV fold ``fold`` (test = that fold, validation = the next, training = the rest) declaring
    the classes as ordered grades; paths point into ``root`` (nothing is copied)."""
    split = busi.folds(fold)
    val, test = set(split.folds[0]), set(split.test)
    rows = [
        {
            "path": str(im.image.resolve()),
            "label": im.cls,
            "patient_id": split.patients.get(im.id, im.id),  # identical-pixel groups stay on one side
            "split": "test" if im.id in test else "val" if im.id in val else "train",
        }
        for im in busi.list_images(root)
    ]
    dest.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(dest / "manifest.csv", index=False)
    write_json(dest / "manifest.json", {"task": "ordinal", "labels": ORDER})
    return dest / "manifest.csv"


def run_seed(csv: Path, out: Path, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train (every choice on validation), then score the test fold once."""
    started = time.monotonic()
    options = ClassificationOptions(seed=seed, epochs=args.epochs, time_budget_s=args.time_budget)
    meta = TASK.train(str(csv), out / f"bundle_seed{seed}", options)
    trained = time.monotonic() - started
    result = TASK.evaluate(out / f"bundle_seed{seed}", str(csv), "test", out / f"eval_seed{seed}", args.bootstrap)
    tr = meta["training"]
    return {
        "seed": seed,
        "n_test": result["n"],
        "test": {k: result["metrics"][k] for k in METRICS},
        "recipe_selection": tr["recipe_selection"],
        "decoding": meta["operating_point"]["decoding"],
        "decoding_val_qwk": meta["operating_point"]["val_qwk"],
        "val": {k: meta["metrics"]["val"].get(k) for k in METRICS},
        "training": {k: tr.get(k) for k in ("epochs_run", "best_epoch", "stopped_by", "time_budget_s")},
        "train_seconds": round(trained, 1),
        "seconds": round(time.monotonic() - started, 1),
    }


def across(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sample std of each test metric over seeds (the CIs are per seed, over the test images)."""
    out: dict[str, Any] = {}
    for k in METRICS:
        values = [float(r["test"][k]["value"]) for r in runs if r["test"][k]["value"] is not None]
        out[k] = {
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None,
            "n_seeds": len(values),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=config.data_root() / "busi")
    parser.add_argument("--out", type=Path, default=Path("bench_out/ordinal"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--fold", type=int, default=0, choices=range(busi.N_FOLDS))
    parser.add_argument("--seeds", default="0", help="training seeds, e.g. 0,1,2 (the split is fixed)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (manifest images are resized)")
    parser.add_argument("--epochs", type=int, help="epochs per recipe (default: planned)")
    parser.add_argument("--time-budget", type=float, help="training seconds per seed, shared by the recipes")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    manifest.MAX_2D = args.size  # manifests are resized to their median size capped at MAX_2D: BUSI's is ~500 px
    csv = write_manifest(args.data, args.out / "data", args.fold)
    record: dict[str, Any] = {
        "provenance": provenance("ordinal.py", depends_on=DEPENDS_ON, seeds=seeds),
        "data": {
            "set": "BUSI (Al-Dhabyani et al. 2020), 780 breast ultrasound images",
            "grades": ORDER,
            "caveat": "BUSI's three classes used as an ordered malignancy scale (normal < benign < malignant); they "
            "are not BI-RADS grades, so these figures are not comparable with BI-RADS or retinopathy grading results",
            "split": f"published grouped 5-fold split, CV fold {args.fold}: test = fold {args.fold}, validation = "
            "the next fold (every choice), training = the other three (an internal hold-out, not an official test "
            "set)",
            "image_size": [args.size, args.size],
            "channels": "3 (the manifest reader keeps the 16 RGB images in colour and repeats grey for the rest)",
        },
        "rule": "recipes (plain / soft-ordinal loss x plain / class-balanced) and the decoding (argmax / median / "
        "expected grade) chosen on validation QWK (ties within 0.002: higher validation AUC, then the simpler); "
        "test scored once per seed",
        "runs": [],
    }
    for seed in seeds:
        record["runs"].append(run_seed(csv, args.out, seed, args))
        record["across_seeds"] = across(record["runs"])
        write_json(args.results, record)  # after every seed: a run that stops keeps what it measured
    for r in record["runs"]:
        t = r["test"]
        print(
            f"seed {r['seed']}: {r['recipe_selection']['chosen']} + {r['decoding']} decoding: "
            + ", ".join(f"{k} {t[k]['value']:.3f} ({t[k]['ci95'][0]:.3f}-{t[k]['ci95'][1]:.3f})" for k in METRICS)
        )
    print(f"results: {args.results}")


if __name__ == "__main__":
    main()
