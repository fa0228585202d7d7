"""DRIVE retinal vessels: train on the 20 official training images, score the 20 test images inside the FOV against
the 1st manual annotation, with the 2nd observer scored the same way, beside the references in targets.md.

Run: ``MEDSIGHT_DATA=../shared/data .venv/bin/python benchmarks/drive.py --time-budget 1200 --out bench_out/drive``
The training is ``medsight train`` with its self-configured plan, only the time budget given; the evaluation is
``medsight evaluate BUNDLE DRIVE --split test``. Writes ``benchmarks/results/drive.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from support import seg_record

from medsight import config
from medsight.tasks import segmentation
from medsight.tasks.segmentation import SegmentationOptions

#: targets.md: published DRIVE test-set results (inside the FOV, vs the 1st manual annotation) and the goal.
REFERENCES = {
    "U-Net": {"auc": 0.975},
    "IterNet": {"auc": 0.982},
    "LadderNet": {"f1": 0.820},
    "FR-UNet": {"f1": 0.831, "auc": 0.989},
    "goal (medsight)": {"f1": 0.83, "auc": 0.985},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=config.data_root() / "drive")
    parser.add_argument("--out", type=Path, default=Path("bench_out/drive"))
    parser.add_argument("--time-budget", type=float, default=1200.0, help="training seconds (default 1200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    start = time.monotonic()
    task = segmentation.TASK
    options = SegmentationOptions(seed=args.seed, time_budget_s=args.time_budget or None)
    meta = task.train(str(args.data), args.out / "bundle", options)
    trained = time.monotonic() - start
    result = task.evaluate(args.out / "bundle", str(args.data), "test", args.out / "evaluation", args.bootstrap)
    wall = time.monotonic() - start
    m = result["metrics"]
    so = result.get("second_observer", {}).get("metrics", {})
    tr = meta["training"]
    print()
    print(
        f"DRIVE test, {result['n']} images, inside the FOV, vs the 1st manual annotation (95% bootstrap CI over images)"
    )
    print(
        f"training: {tr['epochs_run']} epochs x {tr['iterations_per_epoch']} iterations, batch {tr['batch_size']}, "
        f"{tr['seconds']:.0f} s on {tr['device']} ({tr['threads']} threads), stopped by {tr['stopped_by']}"
    )
    print(f"{'':18s} {'AUC':>22s} {'F1':>22s} {'sensitivity':>22s} {'specificity':>22s} {'accuracy':>22s}")

    def cell(d: dict, k: str) -> str:
        v = d.get(k)
        if not v or v.get("value") is None:
            return f"{'—':>22s}"
        lo, hi = v["ci95"]
        return f"{v['value']:.4f} [{lo:.4f},{hi:.4f}]" if lo is not None else f"{v['value']:>22.4f}"

    keys = ["auc", "f1", "sensitivity", "specificity", "accuracy"]
    print(f"{'medsight':18s} " + " ".join(cell(m, f"pixel_{k}") for k in keys))
    if so:
        print(f"{'2nd observer':18s} " + " ".join(cell(so, f"pixel_{k}") for k in keys))
    for name, ref in REFERENCES.items():
        print(f"{name:18s} " + " ".join(f"{ref[k]:>22.3f}" if k in ref else f"{'':>22s}" for k in keys))
    print(f"Dice {m['dice']['value']:.4f}, HD95 {m['hd95']['value']:.2f} px, NSD(1 px) {m['nsd']['value']:.4f}")
    print(f"wall time: {wall / 60:.1f} min (training {trained / 60:.1f} min)")
    summary = {
        "metrics": {k: m[f"pixel_{k}"] for k in keys} | {k: m[k] for k in ("dice", "hd95", "nsd")},
        "second_observer": so,
        "uncertainty": result.get("uncertainty"),
        "postprocessing": result.get("postprocessing"),
        "training": {k: v for k, v in tr.items() if k != "history"},
        "wall_s": wall,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    seg_record.write("drive", {"seed": args.seed, "time_budget_s": args.time_budget, "n": result["n"], **summary})


if __name__ == "__main__":
    main()
