"""mini-MIAS lesion detection: FROC as LUNA16 defines it (hit = within the lesion radius; sensitivity at 1/8 ... 8 FP
per image interpolated as MONAI's compute_froc_score), CPM, image-level AUC, per-image uncertainty against errors,
with 95% CIs.

Run: ``MEDSIGHT_THREADS=1 MEDSIGHT_DATA=../shared/data .venv/bin/python benchmarks/mias.py --time-budget 1080``
Trains the detection task (as ``medsight train <data>/mini_mias``: RetinaNet, images downsized 512 -> 256 px) on the
patient-level train split, selects the epoch on val CPM, and evaluates on the test split (1000 bootstrap resamples
over images). Writes ``benchmarks/results/mias.json`` (figures with CIs, the command, commit, date and seeds) and
``<out>/summary.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from support.provenance import provenance

from medsight import tasks
from medsight.io.atomic import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "mias.json"


def _num(v: float | None) -> str:
    return "undefined" if v is None else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("MEDSIGHT_DATA", "../shared/data")) / "mini_mias")
    ap.add_argument("--out", type=Path, default=Path("benchmark_out/mias"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--time-budget", type=float, default=1080.0)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--results", type=Path, default=RESULTS, help="results JSON to write")
    args = ap.parse_args()
    task = tasks.get("detection")
    options = task.Options.from_mapping(
        {"seed": args.seed, "epochs": args.epochs, "time_budget_s": args.time_budget, "image_size": args.image_size},
        "detection",
    )
    start = time.monotonic()
    meta = task.train(str(args.data), args.out / "bundle", options)
    trained = time.monotonic() - start
    result = task.evaluate(args.out / "bundle", str(args.data), "test", args.out / "evaluation", args.bootstrap)
    total = time.monotonic() - start
    tr = meta["training"]
    print(
        f"mini-MIAS detection, seed {args.seed}, {args.image_size} px, test n = {result['n']} images "
        f"({result['n_boxes']} lesions); split {meta['data']['n']}"
    )
    print(
        f"training {trained:.0f} s ({tr['epochs_run']} epochs, best {tr['best_epoch']}, stopped by "
        f"{tr['stopped_by']}); total wall {total:.0f} s"
    )
    for k, v in result["metrics"].items():
        lo, hi = v["ci95"]
        val = "nan" if v["value"] is None else f"{v['value']:.3f}"
        print(f"  {k:14s} {val}" + ("" if lo is None else f" [{lo:.3f}, {hi:.3f}]"))
    u = result["uncertainty"]
    rho = u["spearman_uncertainty_vs_errors"]
    print(
        f"  uncertainty vs errors per image: Spearman {_num(rho['value'])} [{_num(rho['ci95'][0])}, "
        f"{_num(rho['ci95'][1])}]; flagged {u['n_flagged']} of "
        f"{u['n']} (threshold {u['threshold']}, decided on {meta['uncertainty']['decided_on']})"
    )
    flip = meta.get("test_time_flip") or {}
    print(
        f"  test-time flip ({flip.get('decided_on')}): {'kept' if flip.get('kept') else 'not kept'}; "
        f"candidates {flip.get('candidates')}"
    )
    summary = {
        "test": {"n_images": result["n"], "n_lesions": result["n_boxes"], "split": meta["data"]["n"]},
        "metrics": result["metrics"],
        "test_time_flip": meta.get("test_time_flip"),
        "operating_point": meta["operating_point"],
        "training": {k: tr[k] for k in ("epochs_run", "best_epoch", "stopped_by", "seconds", "device", "warnings")},
        "uncertainty": {"review_threshold": meta["uncertainty"], "test": result["uncertainty"]},
        "definitions": result["definitions"],
        "inference_engine": result["inference_engine"],
        "train_s": round(trained, 1),
        "total_s": round(total, 1),
    }
    write_json(args.out / "summary.json", summary)
    record = {
        "benchmark": "mias",
        **provenance("mias.py", ("src/medsight",)),
        "seeds": [args.seed],
        "settings": {
            "epochs": args.epochs,
            "time_budget_s": args.time_budget,
            "image_size": args.image_size,
            "bootstrap": args.bootstrap,
        },
        "ci95": result["definitions"]["ci95"],
        **summary,
    }
    write_json(args.results, record)
    print(f"\nresults: {args.results}")


if __name__ == "__main__":
    main()
