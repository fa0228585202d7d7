"""Real-time ultrasound: frames/s at 256x256 for ONNX Runtime fp32, ONNX Runtime int8 and eager PyTorch on the same
frames in the same run, the Dice each engine costs on held-out BUSI images, and the shared DICOM US cine loop
streamed end to end (``medsight stream``, fp32 and int8).

The bundle is a ``--preset fast`` segmentation bundle (``--bundle``, or trained here on BUSI CV fold 0 with the
planner's fast preset). Frames: the bundle's held-out (test-fold) BUSI images resized to 256x256, the same frames
for every engine. Each engine runs the whole per-frame path of ``medsight stream`` (``model.segment``:
normalisation, sliding window, softmax, post-processing) with ``MEDSIGHT_THREADS`` threads; the engines take turns
round by round so that a load on the machine falls on all of them alike. frames/s has a 95% bootstrap CI over
frames; Dice is per image at its own size against the merged lesion mask, with a 95% bootstrap CI and the paired
difference from ONNX Runtime fp32. No choice is made here: the int8 calibration uses training images only.

Run (the lead, on a quiet machine):
``MEDSIGHT_DATA=../shared/data MEDSIGHT_THREADS=2 .venv/bin/python benchmarks/stream.py --train-budget 900``
(or ``--bundle BUNDLE`` for a fast-preset bundle already trained). Writes ``benchmarks/results/stream.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from support.provenance import provenance
from support.seg_record import RESULTS, machine

from medsight import config, runtime
from medsight.data import busi
from medsight.evaluation.metrics import bootstrap
from medsight.io.atomic import write_json
from medsight.runtime.quantize import quantize_bundle
from medsight.runtime.stream import stream
from medsight.tasks import segmentation
from medsight.tasks.segmentation import SegmentationOptions
from medsight.tasks.segmentation.data import load_case, open_dataset, resize
from medsight.tasks.segmentation.inference import torch_predictor

US_CINE = Path("dicom_samples") / "pydicom_test_files" / "examples_ybr_color.dcm"
GOAL_FPS = 30.0


def load_engines(bundle: Path, int8: Path) -> dict[str, Any]:
    """The three engines as warm models with the same plan (no test-time flips, as ``medsight stream`` runs)."""
    models = {"onnxruntime_fp32": runtime.load(bundle), "onnxruntime_int8": runtime.load(int8)}
    eager = runtime.load(bundle)
    eager.predictor = torch_predictor(eager.bundle.network("cpu"), "cpu")  # type: ignore[attr-defined]
    eager.engine = "PyTorch eager"  # type: ignore[attr-defined]
    models["pytorch_eager"] = eager
    for m in models.values():
        m.plan = dataclasses.replace(m.plan, test_time_flips=False)  # type: ignore[attr-defined]
        m.uncertainty = False  # type: ignore[attr-defined]
    return models


def frames_from(ds: Any, ids: list[str], size: int) -> list[np.ndarray]:
    """The held-out images as ``size`` x ``size`` grey frames ``(1, H, W)``, raw intensities (as a scanner sends)."""
    return [resize(load_case(ds, ds.case(i)).image, [size, size], label=False) for i in ids]


def speed(models: dict[str, Any], frames: list[np.ndarray], n_frames: int, rounds: int, n_boot: int) -> dict[str, Any]:
    """Per-frame seconds of each engine over ``rounds`` interleaved rounds of ``n_frames`` frames (after warm-up)."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for m in models.values():
        for f in frames[:3]:
            m.segment(f, (1.0, 1.0))
    for _ in range(rounds):
        for name, m in models.items():
            for k in range(n_frames):
                t0 = time.perf_counter()
                m.segment(frames[k % len(frames)], (1.0, 1.0))
                times[name].append(time.perf_counter() - t0)
    out: dict[str, Any] = {}
    for name, t in times.items():
        arr = np.asarray(t)
        stats = bootstrap(lambda ix, a=arr: {"fps": float(len(ix) / a[ix].sum())}, len(arr), n_boot=n_boot)
        out[name] = {
            "frames_per_second": stats["fps"],
            "ms_per_frame_p50": float(np.percentile(arr * 1000, 50)),
            "ms_per_frame_p95": float(np.percentile(arr * 1000, 95)),
            "frames_timed": len(arr),
            "reaches_goal": bool(stats["fps"]["value"] >= GOAL_FPS),  # type: ignore[operator]
        }
    return out


def dice_cost(models: dict[str, Any], ds: Any, ids: list[str], n_boot: int) -> dict[str, Any]:
    """Lesion Dice per engine on ``ids`` (each image at its own size) with CIs, and the paired difference from fp32."""
    per: dict[str, list[float]] = {name: [] for name in models}
    for i in ids:
        case = load_case(ds, ds.case(i))
        assert case.label is not None
        ref = case.label > 0
        for name, m in models.items():
            pred = m.segment(case.image, case.spacing)[0] > 0
            total = int(pred.sum() + ref.sum())
            per[name].append(1.0 if total == 0 else 2.0 * float((pred & ref).sum()) / total)
    base = np.asarray(per["onnxruntime_fp32"])
    out: dict[str, Any] = {"n_images": len(ids)}
    for name, values in per.items():
        arr = np.asarray(values)
        stats = bootstrap(
            lambda ix, a=arr: {"dice": float(a[ix].mean()), "minus_fp32": float((a[ix] - base[ix]).mean())},
            len(arr),
            n_boot=n_boot,
        )
        out[name] = {"dice": stats["dice"], "dice_minus_onnxruntime_fp32": stats["minus_fp32"]}
    return out


def end_to_end(bundle: Path, int8: Path, dicom: Path, out: Path) -> dict[str, Any]:
    """``medsight stream`` on the shared DICOM US cine loop, fp32 and int8, overlaid video included."""
    done = {}
    for name, b in (("onnxruntime_fp32", bundle), ("onnxruntime_int8", int8)):
        report = stream(b, dicom, out / name, progress=False)
        done[name] = report.to_json()
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=config.data_root() / "busi")
    parser.add_argument("--dicom", type=Path, default=config.data_root() / US_CINE)
    parser.add_argument("--bundle", type=Path, help="a fast-preset 2D segmentation bundle (default: train one)")
    parser.add_argument("--train-budget", type=float, default=900.0, help="training seconds when training here")
    parser.add_argument("--train-epochs", type=int, help="training epochs when training here (no time budget)")
    parser.add_argument("--out", type=Path, default=Path("bench_out/stream"))
    parser.add_argument("--results", type=Path, default=RESULTS / "stream.json")
    parser.add_argument("--size", type=int, default=256, help="frame size (default 256: 256x256)")
    parser.add_argument("--frames", type=int, default=100, help="frames timed per engine and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--heldout", type=int, help="held-out images for the Dice (default: the whole test fold)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument(
        "--keep-previous", action="store_true", help="keep the run already in --results under 'previous' (a rerun)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(config.num_threads())

    bundle = args.bundle
    if bundle is None:
        view = busi.fold_view(args.data, 0, args.out / "data")
        options = SegmentationOptions(
            seed=args.seed,
            plan=Path("fast"),
            epochs=args.train_epochs,
            time_budget_s=None if args.train_epochs else args.train_budget,
        )
        bundle = args.out / "bundle"
        segmentation.TASK.train(str(view), bundle, options)
    int8 = quantize_bundle(bundle, args.out / "bundle_int8")
    meta = json.loads((bundle / "bundle.json").read_text())
    ds = open_dataset(meta["data"]["root"])
    ids = list(meta["data"]["test_ids"])
    if args.heldout is not None:
        ids = [ids[int(k)] for k in np.unique(np.linspace(0, len(ids) - 1, args.heldout).round())]
    models = load_engines(bundle, int8)
    frames = frames_from(ds, ids, args.size)
    record: dict[str, Any] = {
        "provenance": provenance("stream.py", seeds=[args.seed]),
        "machine": machine(),
        "settings": {
            "frame_size": [args.size, args.size],
            "threads": config.num_threads(),
            "frames_per_round": args.frames,
            "rounds": args.rounds,
            "bundle": str(bundle),
            "plan_preset": meta["plan"]["preset"],
            "network_filters": meta["plan"]["network"]["filters"],
            "patch_size": meta["plan"]["patch_size"],
            "image_pixels": meta["plan"].get("image_pixels"),
            "training": {k: meta["training"].get(k) for k in ("epochs_run", "iterations", "stopped_by", "seconds")},
            "int8": json.loads((int8 / "bundle.json").read_text())["onnx"]["quantization"],
            "frames_from": f"{len(ids)} held-out BUSI images (test fold) resized to {args.size}x{args.size}",
            "goal_fps": GOAL_FPS,
        },
        "speed": speed(models, frames, args.frames, args.rounds, args.bootstrap),
        "dice_heldout": dice_cost(models, ds, ids, args.bootstrap),
        "dicom_us_cine": end_to_end(bundle, int8, args.dicom, args.out / "dicom_stream"),
    }
    if args.keep_previous and args.results.is_file():
        record["previous"] = json.loads(args.results.read_text(encoding="utf-8"))
    write_json(args.results, record)
    for name, s in record["speed"].items():
        d = record["dice_heldout"][name]["dice"]
        print(
            f"{name}: {s['frames_per_second']['value']:.1f} frames/s {s['frames_per_second']['ci95']}, "
            f"Dice {d['value']:.3f} {d['ci95']}"
        )
    print(f"results: {args.results}")


if __name__ == "__main__":
    main()
