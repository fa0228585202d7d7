"""``medsight predict BUNDLE FILE... --out DIR``: a thin layer over the runtime (load once, predict, write)."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsight import runtime


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict on new images with a bundle",
        description="Run BUNDLE on PNG, JPEG, TIFF, BMP, GIF, WebP, PPM/PGM, DICOM (file or series folder), NIfTI or "
        "npz inputs and write DIR/predictions.json (calibrated probabilities, the decision at the bundle's operating "
        "point, masks, boxes or risks; for classification the conformal prediction set, per label for multi-label "
        "models, and whether to defer to the radiologist) plus, with --explain, a heatmap per input. DICOM inputs "
        "also get DICOM results (TID 1500 SR, SEG, Secondary Capture).",
    )
    p.add_argument("bundle", type=Path, help="bundle folder written by 'medsight train'")
    p.add_argument("inputs", nargs="+", type=Path, metavar="FILE", help="images to predict on")
    p.add_argument("--out", required=True, type=Path, help="output folder (replaced atomically)")
    p.add_argument("--explain", action="store_true", help="also write a heatmap (e.g. Grad-CAM) per input")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = runtime.load(args.bundle)
    results = model.predict(args.inputs, explain=args.explain)
    runtime.write_predictions(model, results, args.out)
    for r in results:
        heatmap = f"; heatmap {args.out / r.files['heatmap_image']}" if "heatmap_image" in r.files else ""
        print(f"{r.input}: {r.summary()}{heatmap}")
    print(f"results: {args.out}")
    return 0
