"""mini-MIAS lesion detection: FROC (sensitivity at 1/8 ... 8 FP per image), CPM, image-level AUC, with 95% CIs.

Run: ``MEDSIGHT_DATA=../shared/data .venv/bin/python benchmarks/mias.py --time-budget 1080``
Trains ``medsight train <data>/mini_mias`` (RetinaNet, images downsized 512 -> 256 px) on the patient-level train
split, selects the epoch on val CPM, and evaluates on the test split (1000 bootstrap resamples over images).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from medsight.pipelines import detection


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("MEDSIGHT_DATA", "../shared/data")) / "mini_mias")
    ap.add_argument("--out", type=Path, default=Path("benchmark_out/mias"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--time-budget", type=float, default=1080.0)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args()
    start = time.monotonic()
    meta = detection.train(
        str(args.data),
        args.out / "bundle",
        seed=args.seed,
        epochs=args.epochs,
        time_budget_s=args.time_budget,
        image_size=args.image_size,
    )
    trained = time.monotonic() - start
    result = detection.evaluate(
        args.out / "bundle", str(args.data), "test", args.out / "evaluation", n_boot=args.bootstrap
    )
    total = time.monotonic() - start
    m = result["metrics"]
    print(
        f"mini-MIAS detection, seed {args.seed}, {args.image_size} px, test n = {result['n']} images "
        f"({result['n_boxes']} lesions); split {meta['data']['n']}"
    )
    print(
        f"training {trained:.0f} s ({meta['training']['epochs_run']} epochs, best {meta['training']['best_epoch']}, "
        f"stopped by {meta['training']['stopped_by']}); total wall {total:.0f} s"
    )
    for k, v in m.items():
        lo, hi = v["ci95"]
        val = "nan" if v["value"] is None else f"{v['value']:.3f}"
        ci = "" if lo is None else f" [{lo:.3f}, {hi:.3f}]"
        print(f"  {k:14s} {val}{ci}")
    (args.out / "summary.json").write_text(json.dumps({"metrics": m, "train_s": trained, "total_s": total}, indent=2))


if __name__ == "__main__":
    main()
