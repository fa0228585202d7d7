"""MSD Task04 Hippocampus: patient-level cross-validation (Dice per class on each fold's validation cases) and the
fold-0 model on the held-out test split, beside nnU-Net's figures in targets.md.

Run: ``MEDSIGHT_DATA=../shared/data .venv/bin/python benchmarks/hippocampus.py --folds 0 --time-budget 1200``
(``--folds 0 1 2 3 4`` for the full 5-fold CV). Each fold is ``medsight train`` with its self-configured plan and
``fold=k``, only the time budget given. Labels: 1 = anterior, 2 = posterior (MSD dataset.json, see SOURCE.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from medsight import config
from medsight.pipelines import segmentation

NAMES = {"label_1": "anterior", "label_2": "posterior"}
REFERENCES = {
    "nnU-Net (MSD test set)": (0.90, 0.89),
    "goal (5-fold CV)": (0.89, 0.88),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=config.data_root() / "msd_hippocampus")
    parser.add_argument("--out", type=Path, default=Path("bench_out/hippocampus"))
    parser.add_argument("--folds", type=int, nargs="+", default=[0])
    parser.add_argument("--time-budget", type=float, default=1200.0, help="training seconds per fold (default 1200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--skip-test", action="store_true", help="do not score the held-out test split")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    start = time.monotonic()
    rows = []
    for fold in args.folds:
        bundle = args.out / f"fold{fold}"
        meta = segmentation.train(str(args.data), bundle, seed=args.seed, fold=fold, time_budget_s=args.time_budget)
        val = segmentation.evaluate(bundle, str(args.data), "val", args.out / f"fold{fold}_val", args.bootstrap)
        rows.append((fold, meta["training"], val))
    test = None
    if not args.skip_test:
        first = args.out / f"fold{args.folds[0]}"
        test = segmentation.evaluate(first, str(args.data), "test", args.out / "test_evaluation", args.bootstrap)
    wall = time.monotonic() - start

    print()
    print("MSD Hippocampus, Dice per class (mean over cases, 95% bootstrap CI over cases)")
    print(f"{'':28s} {'anterior':>22s} {'posterior':>22s}  training")
    for fold, tr, val in rows:
        pc = val["per_class"]
        cells = [_cell(pc[k]["dice"]) for k in ("label_1", "label_2")]
        label = f"fold {fold} val (n={val['n']})"
        print(
            f"{label:28s} {cells[0]} {cells[1]}  {tr['epochs_run']} epochs x "
            f"{tr['iterations_per_epoch']} it, batch {tr['batch_size']}, {tr['seconds']:.0f} s"
        )
    cv = {k: statistics.mean(v["per_class"][k]["dice"]["value"] for _, _, v in rows) for k in ("label_1", "label_2")}
    print(f"{f'CV mean over {len(rows)} fold(s)':28s} {cv['label_1']:>22.4f} {cv['label_2']:>22.4f}")
    if test is not None:
        pc = test["per_class"]
        label = f"held-out test (n={test['n']})"
        print(f"{label:28s} {_cell(pc['label_1']['dice'])} {_cell(pc['label_2']['dice'])}")
        print(
            "held-out test HD95 (mm): "
            + ", ".join(f"{NAMES[k]} {pc[k]['hd95']['value']:.2f}" for k in ("label_1", "label_2"))
            + "; NSD (1 mm): "
            + ", ".join(f"{NAMES[k]} {pc[k]['nsd']['value']:.4f}" for k in ("label_1", "label_2"))
        )
    for name, (a, p) in REFERENCES.items():
        print(f"{name:28s} {a:>22.2f} {p:>22.2f}")
    print(f"wall time: {wall / 60:.1f} min")
    summary = {
        "folds": [
            {"fold": f, "training": {k: v for k, v in tr.items() if k != "history"}, "per_class": val["per_class"]}
            for f, tr, val in rows
        ],
        "cv_mean_dice": cv,
        "test": None if test is None else {"n": test["n"], "per_class": test["per_class"], "metrics": test["metrics"]},
        "wall_s": wall,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))


def _cell(v: dict) -> str:
    lo, hi = v["ci95"]
    return f"{v['value']:.4f} [{lo:.4f},{hi:.4f}]" if lo is not None else f"{v['value']:>22.4f}"


if __name__ == "__main__":
    main()
