"""MSD Task04 Hippocampus: patient-level cross-validation (Dice per class on each fold's validation cases) and the
fold-0 model on the held-out test split, beside nnU-Net's figures in targets.md.

Run: ``MEDSIGHT_DATA=../shared/data .venv/bin/python benchmarks/hippocampus.py --folds 0 --time-budget 1200``
(``--folds 0 1 2 3 4`` for the full 5-fold CV). Each fold is ``medsight train`` with its self-configured plan and
``fold=k``, only the time budget given (``--time-budget 0``: the plan's default epochs and budget, exactly as a
``medsight train`` without options). Writes ``benchmarks/results/hippocampus.json``.

``--bundle B --wall-s S --train-command CMD`` instead scores an already trained bundle (e.g. a default
``medsight train`` timed by the shell) on the held-out split and writes ``benchmarks/results/<--name>.json``.
Labels: 1 = anterior, 2 = posterior (MSD dataset.json, see SOURCE.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from support import seg_record

from medsight import config
from medsight.tasks import segmentation
from medsight.tasks.segmentation import SegmentationOptions

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
    parser.add_argument("--bundle", type=Path, help="score this trained bundle on the held-out split, train nothing")
    parser.add_argument("--wall-s", type=float, help="with --bundle: the measured wall time of its training")
    parser.add_argument("--train-command", help="with --bundle: the command that trained it")
    parser.add_argument("--name", default="hippocampus", help="results file name (default hippocampus)")
    parser.add_argument("--load-samples", type=Path, help="with --bundle: /proc/loadavg lines sampled during training")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    task = segmentation.TASK
    if args.bundle is not None:
        score_bundle(args)
        return

    start = time.monotonic()
    rows = []
    for fold in args.folds:
        bundle = args.out / f"fold{fold}"
        options = SegmentationOptions(seed=args.seed, fold=fold, time_budget_s=args.time_budget or None)
        meta = task.train(str(args.data), bundle, options)
        val = task.evaluate(bundle, str(args.data), "val", args.out / f"fold{fold}_val", args.bootstrap)
        rows.append((fold, meta["training"], val))
    test = None
    if not args.skip_test:
        first = args.out / f"fold{args.folds[0]}"
        test = task.evaluate(first, str(args.data), "test", args.out / "test_evaluation", args.bootstrap)
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
        "test": None
        if test is None
        else {
            "n": test["n"],
            "per_class": test["per_class"],
            "metrics": test["metrics"],
            "uncertainty": test.get("uncertainty"),
            "postprocessing": test.get("postprocessing"),
        },
        "wall_s": wall,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    seg_record.write(args.name, {"seed": args.seed, "time_budget_s": args.time_budget, **summary})


def score_bundle(args: argparse.Namespace) -> None:
    """The held-out test Dice (per label, 95% CI) of a bundle trained elsewhere, with its training record."""
    from medsight.training.bundle import load_bundle

    meta = load_bundle(args.bundle).meta
    test = segmentation.TASK.evaluate(args.bundle, str(args.data), "test", args.out / "test_evaluation", args.bootstrap)
    pc = test["per_class"]
    tr = {k: v for k, v in meta["training"].items() if k != "history"}
    curve = [
        {k: e[k] for k in ("epoch", "seconds", "train_loss", "val_dice") if k in e}
        for e in meta["training"]["history"]
        if "val_dice" in e
    ]
    print(f"held-out test (n={test['n']}): " + ", ".join(f"{NAMES[k]} {_cell(pc[k]['dice'])}" for k in NAMES))
    load = None
    if args.load_samples is not None and args.load_samples.is_file():
        ones = [float(line.split()[0]) for line in args.load_samples.read_text().splitlines() if line.strip()]
        if ones:
            load = {
                "samples": len(ones),
                "mean_1min": round(statistics.mean(ones), 2),
                "max_1min": max(ones),
                "min_1min": min(ones),
                "note": "1-minute load average sampled every 30 s during training, on 2 cores shared with others",
            }
    seg_record.write(
        args.name,
        {
            "train_command": args.train_command,
            "evaluate_command": " ".join(
                [".venv/bin/medsight evaluate", str(args.bundle), str(args.data), "--split test"]
            ),
            "seed": tr["seed"],
            "training_wall_s": args.wall_s,
            "load_during_training": load,
            "training": tr,
            "validation_curve": curve,
            "val_metrics": meta["metrics"]["val"],
            "test": {
                "n": test["n"],
                "dice_per_label": {NAMES[k]: pc[k]["dice"] for k in NAMES},
                "hd95_mm_per_label": {NAMES[k]: pc[k]["hd95"] for k in NAMES},
                "nsd_1mm_per_label": {NAMES[k]: pc[k]["nsd"] for k in NAMES},
                "mean_dice": test["metrics"]["dice"],
            },
            "goal": "Dice >= 0.85 in at most 20 minutes on 2 cores (issue 8, section 2)",
        },
    )


def _cell(v: dict) -> str:
    lo, hi = v["ci95"]
    return f"{v['value']:.4f} [{lo:.4f},{hi:.4f}]" if lo is not None else f"{v['value']:>22.4f}"


if __name__ == "__main__":
    main()
