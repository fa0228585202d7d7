"""A DRIVE vessel model on simulated other cameras: the DRIVE test images as-is, rescaled to 999x960 and to 2x, and
recoloured (gamma 1.4, channel gains 1.3/0.7/0.55), each scored with ``medsight evaluate`` (pixel AUC/F1 inside the
FOV against the 1st manual annotation, with CIs) and its shift report against the training fingerprint, with
temperature scaling fitted on 5 images and the ECE before/after on the other 15 (the external-validation path on a
labelled pair made honestly: the labels are DRIVE's, resampled with the images; the "camera" is simulated).

Scale and colour normalisation use the FOV the model finds itself in each image (``fundus.find_fov``; a plan
without a field of view, from older code, does neither). Scoring and the suppression outside the FOV use DRIVE's FOV
mask resampled with the image (nearest, in ``roi/``), so that every variant is scored on the same retina by DRIVE's
protocol. Run it once with a bundle from before the FOV plan (``--bundle``) and once trained on the new code to see
the difference.

Run (trains the default DRIVE model first, ~20 min on 2 CPU cores):
``MEDSIGHT_DATA=../shared/data MEDSIGHT_THREADS=2 .venv/bin/python benchmarks/trust_drive_shift.py --time-budget 1200``
or score an existing bundle: ``... benchmarks/trust_drive_shift.py --bundle benchmark_out/drive/bundle``.
Writes ``benchmarks/results/trust_drive_shift.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from support.provenance import provenance
from support.seg_record import RESULTS, machine

from medsight import config
from medsight.io.atomic import write_json
from medsight.io.images import read_image
from medsight.monitoring.site import labelled_site_report
from medsight.tasks import segmentation
from medsight.tasks.segmentation import SegmentationOptions
from medsight.training.bundle import load_bundle

VARIANTS: dict[str, dict[str, Any]] = {
    "as-is": {},
    "999x960": {"shape": (960, 999)},
    "2x": {"shape": (2 * 584, 2 * 565)},
    "recoloured": {"gamma": 1.4, "gains": (1.3, 0.7, 0.55)},
}
KEYS = ("pixel_auc", "pixel_f1", "pixel_sensitivity", "pixel_specificity", "dice")


def _resize(arr: np.ndarray, shape: tuple[int, int], nearest: bool) -> np.ndarray:
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(arr).resize((shape[1], shape[0]), method))


def make_variant(drive: Path, root: Path, spec: dict[str, Any], limit: int | None) -> Path:
    """DRIVE's test split as another camera would give it: images (PNG), vessel labels, and (for scoring only, in
    ``roi/``) DRIVE's FOV resampled with the image. The training folder is linked so the layout stays DRIVE's."""
    test = root / "test"
    for folder in ("images", "1st_manual", "roi"):
        (test / folder).mkdir(parents=True, exist_ok=True)
    (root / "training").mkdir(parents=True, exist_ok=True)
    for sub in ("images", "1st_manual", "mask"):
        link = root / "training" / sub
        if not link.exists():
            link.symlink_to((drive / "training" / sub).resolve())
    images = sorted((drive / "test" / "images").iterdir())[:limit]
    for path in images:
        cid = path.name.split("_")[0]
        rgb = np.moveaxis(read_image(path), 0, -1)
        with Image.open(drive / "test" / "1st_manual" / f"{cid}_manual1.gif") as m:
            label = (np.asarray(m) > 0).astype(np.uint8) * 255
        with Image.open(drive / "test" / "mask" / f"{cid}_test_mask.gif") as m:
            fov = (np.asarray(m) > 0).astype(np.uint8) * 255
        if "gamma" in spec:
            rgb = 255 * (rgb / 255) ** spec["gamma"] * np.asarray(spec["gains"])
        rgb = np.clip(rgb, 0, 255).astype(np.uint8)
        if "shape" in spec:
            rgb = _resize(rgb, spec["shape"], nearest=False)
            label = _resize(label, spec["shape"], nearest=True)
            fov = _resize(fov, spec["shape"], nearest=True)
        Image.fromarray(rgb).save(test / "images" / f"{cid}_test.png")
        Image.fromarray(label).save(test / "1st_manual" / f"{cid}_manual1.png")
        Image.fromarray(fov).save(test / "roi" / f"{cid}_fov.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=config.data_root() / "drive")
    parser.add_argument("--bundle", type=Path, default=None, help="score this bundle instead of training one")
    parser.add_argument("--out", type=Path, default=Path("benchmark_out/trust_drive_shift"))
    parser.add_argument("--time-budget", type=float, default=1200.0, help="training seconds when training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--recalibrate", type=int, default=5, help="images of each variant to fit the temperature on")
    parser.add_argument(
        "--name", default="trust_drive_shift", help="results file name (e.g. trust_drive_shift_before)"
    )
    parser.add_argument("--limit", type=int, default=None, help="score only the first N test images (smoke runs)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.monotonic()

    bundle = args.bundle
    if bundle is None:
        bundle = args.out / "bundle"
        options = SegmentationOptions(seed=args.seed, time_budget_s=args.time_budget or None)
        segmentation.TASK.train(str(args.data), bundle, options)
    plan = load_bundle(bundle).meta["plan"]
    results: dict[str, Any] = {}
    for name, spec in VARIANTS.items():
        root = args.out / "variants" / name
        if root.exists():
            shutil.rmtree(root)
        make_variant(args.data, root, spec, args.limit)
        out = args.out / "evaluation" / name
        internal = args.out / "evaluation" / "as-is" if name != "as-is" else None
        result = segmentation.TASK.evaluate(bundle, str(root), "test", out, args.bootstrap)
        report = labelled_site_report(bundle, str(root), "test", out, result, args.recalibrate, internal)
        results[name] = {
            "n": result["n"],
            "metrics": {k: result["metrics"].get(k) for k in KEYS},
            "flagged": report["flagged"],
            "recalibration": report["recalibration"],
            "features": report["features"],
        }
        m = result["metrics"]
        print(
            f"{name:12s} AUC {m['pixel_auc']['value']:.4f}  F1 {m['pixel_f1']['value']:.4f}  "
            f"shift flagged: {', '.join(report['flagged']) or 'none'}; ECE {report['recalibration']['ece_before']:.4f}"
            f" -> {report['recalibration']['ece_after']:.4f}"
        )
    wall = time.monotonic() - started
    write_json(
        RESULTS / f"{args.name}.json",
        {
            "what": "DRIVE test as-is vs simulated other cameras (rescaled 999x960 and 2x, recoloured), scored inside "
            "DRIVE's FOV resampled with the image; scale and colour normalised by the FOV the model finds itself",
            "bundle": str(bundle),
            "trained_here": args.bundle is None,
            "field_of_view_plan": plan.get("field_of_view"),
            "variants": {k: {kk: vv for kk, vv in v.items()} for k, v in VARIANTS.items()},
            "results": results,
            "limit": args.limit,
            "wall_s": round(wall, 1),
            "machine": machine(),
            **provenance("trust_drive_shift.py"),
        },
    )
    print(json.dumps({k: v["metrics"]["pixel_auc"] for k, v in results.items()}))


if __name__ == "__main__":
    main()
