"""2D segmentation inference speed for a 256x256 frame: eager PyTorch vs ONNX Runtime, measured in the same run.

Run: ``.venv/bin/python benchmarks/seg_speed.py [--threads 2] [--seconds 10]``
The network is what the planner picks for a one-channel 256x256 binary task on a CPU budget (DynUNet, planned
patch), measured two ways: (a) one forward pass over the whole frame (the network exported at 256x256), and (b) the
deployed path, Gaussian sliding-window inference over the planned patch, without test-time flips. Weights are
random: speed does not depend on them. Writes ``benchmarks/results/seg_speed.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from support import seg_record

from medsight.runtime.onnx_export import export_onnx
from medsight.tasks.segmentation import network
from medsight.tasks.segmentation.inference import onnx_predictor, sliding_probabilities, torch_predictor
from medsight.tasks.segmentation.plan import make_plan

FRAME = (256, 256)


def fingerprint() -> dict:
    return {
        "n_cases": 500,
        "spatial_dims": 2,
        "n_channels": 1,
        "modality": "unknown",
        "spacing_median": [1.0, 1.0],
        "spacing_min": [1.0, 1.0],
        "spacing_max": [1.0, 1.0],
        "shape_median": list(FRAME),
        "foreground_intensity": [{"mean": 0.0, "std": 1.0, "p00_5": -3.0, "p99_5": 3.0}],
        "class_frequency": {"background": 0.9, "lesion": 0.1},
    }


def rate(fn: Callable[[], object], seconds: float) -> float:
    fn()  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("MEDSIGHT_THREADS", os.cpu_count() or 1)))
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time per engine and mode")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    plan = make_plan(fingerprint(), "cpu", {"test_time_flips": False})
    full = dataclasses.replace(plan, patch_size=list(FRAME))  # same network, one window = the whole frame
    model = network.build(plan).eval()
    params = sum(p.numel() for p in model.parameters())
    frame = np.random.default_rng(0).standard_normal((1, *FRAME)).astype(np.float32)
    rows: list[tuple[str, list[int], float, float]] = []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for name, p in (("whole frame, one pass", full), ("sliding window (planned patch)", plan)):
            onnx_path = Path(tmp) / f"{len(rows)}.onnx"
            export_onnx(model, torch.randn(2, 1, *p.patch_size), onnx_path)
            eager = torch_predictor(model)
            ort = onnx_predictor(onnx_path, args.threads)
            e = rate(lambda p=p, eager=eager: sliding_probabilities(frame, eager, p, flips=False), args.seconds)
            o = rate(lambda p=p, ort=ort: sliding_probabilities(frame, ort, p, flips=False), args.seconds)
            rows.append((name, p.patch_size, e, o))
    print(f"DynUNet {plan.network.filters} ({params / 1e6:.2f} M parameters), 256x256 frame, {args.threads} thread(s)")
    print(f"{'mode':34s} {'patch':>9s} {'eager f/s':>10s} {'ORT f/s':>10s} {'ORT/eager':>10s}")
    for name, patch, e, o in rows:
        print(f"{name:34s} {'x'.join(map(str, patch)):>9s} {e:>10.1f} {o:>10.1f} {o / e:>9.2f}x")
    print("goal (targets.md): >= 30 frames/s at 256x256 on 2 cores; UltraSeg 89.7 f/s on one core (0.13 M parameters)")
    seg_record.write(
        "seg_speed",
        {
            "network": {"filters": plan.network.filters, "parameters": params},
            "frame": list(FRAME),
            "threads": args.threads,
            "frames_per_s": [
                {
                    "mode": name,
                    "patch": patch,
                    "eager": round(e, 2),
                    "ort": round(o, 2),
                    "ort_over_eager": round(o / e, 2),
                }
                for name, patch, e, o in rows
            ],
        },
    )


if __name__ == "__main__":
    main()
