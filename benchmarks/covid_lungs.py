"""COVID-19 chest X-ray lung boxes: AP@0.5 for the right and left lung and their mean (goal >= 0.95), with 95% CIs.

Run: ``MEDSIGHT_DATA=../shared/data .venv/bin/python benchmarks/covid_lungs.py --time-budget 900``
Trains ``medsight train <data>/covid_cxr_lung_boxes`` (RetinaNet; the 384-px staged images are downsized to 192 px,
longest side) on the patient-level train split, selects on val mAP@0.5, evaluates on the test split.
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
    ap.add_argument(
        "--data", type=Path, default=Path(os.environ.get("MEDSIGHT_DATA", "../shared/data")) / "covid_cxr_lung_boxes"
    )
    ap.add_argument("--out", type=Path, default=Path("benchmark_out/covid_lungs"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--time-budget", type=float, default=900.0)
    ap.add_argument("--image-size", type=int, default=192)
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
    print(
        f"COVID lung boxes, seed {args.seed}, {args.image_size} px, test n = {result['n']} images "
        f"({result['n_boxes']} boxes); split {meta['data']['n']}; goal mAP@0.5 >= 0.95 per lung"
    )
    print(
        f"training {trained:.0f} s ({meta['training']['epochs_run']} epochs, best {meta['training']['best_epoch']}, "
        f"stopped by {meta['training']['stopped_by']}); total wall {total:.0f} s"
    )
    for k, v in result["metrics"].items():
        lo, hi = v["ci95"]
        val = "nan" if v["value"] is None else f"{v['value']:.3f}"
        print(f"  {k:16s} {val}" + ("" if lo is None else f" [{lo:.3f}, {hi:.3f}]"))
    (args.out / "summary.json").write_text(json.dumps({"metrics": result["metrics"], "train_s": trained}, indent=2))


if __name__ == "__main__":
    main()
