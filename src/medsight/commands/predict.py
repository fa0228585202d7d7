"""``medsight predict BUNDLE FILE... --out DIR``: predictions (and heatmaps with --explain) for new images."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsight.pipelines import pipeline
from medsight.training.bundle import load_bundle


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict on new images with a bundle",
        description="Run BUNDLE on PNG, JPEG, TIFF, DICOM (file or series folder), NIfTI or npz inputs and write "
        "DIR/predictions.json (probabilities, the decision at the bundle's operating point) plus, with "
        "--explain, a heatmap per input.",
    )
    p.add_argument("bundle", type=Path, help="bundle folder written by 'medsight train'")
    p.add_argument("inputs", nargs="+", type=Path, metavar="FILE", help="images to predict on")
    p.add_argument("--out", required=True, type=Path, help="output folder (replaced atomically)")
    p.add_argument("--explain", action="store_true", help="also write a Grad-CAM heatmap per input")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    bundle = load_bundle(args.bundle)
    results = pipeline(bundle.task).predict(args.bundle, args.inputs, args.out, explain=args.explain)
    for r in results:
        # A pipeline may give its own one-line summary (segmentation: volumes; detection: findings).
        summary = r.get("summary") or (
            f"{r.get('decision')} (" + ", ".join(f"{k} {v:.3f}" for k, v in r.get("probabilities", {}).items()) + ")"
        )
        heatmap = f"; heatmap {args.out / r['heatmap']['image']}" if r.get("heatmap") else ""
        print(f"{r['input']}: {summary}{heatmap}")
    print(f"results: {args.out}")
    return 0
