"""ONNX Runtime's thread spinning on the streaming path: frames/s of ``model.segment`` (what ``medsight stream``
runs per frame: resizing, normalisation, the network on ONNX Runtime, softmax, post-processing) with the runtime's
worker threads busy-waiting between calls (its default) and without, on the same frames, taking turns round by round.

Frames: the streaming bundle's **validation** images (never its test fold) resized to 256x256, so that the choice
of the default (``segmentation.inference.onnx_predictor``) is made on data that decides nothing else. frames/s with a
95% bootstrap CI over frames, p50/p95 per frame.

Run: ``MEDSIGHT_DATA=../shared/data MEDSIGHT_THREADS=2 .venv/bin/python benchmarks/ort_spinning.py --bundle B``
Writes ``benchmarks/results/ort_spinning.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from support.provenance import provenance
from support.seg_record import RESULTS, machine

from medsight import config, runtime
from medsight.evaluation.metrics import bootstrap
from medsight.io.atomic import write_json
from medsight.tasks.segmentation.data import load_case, open_dataset, resize
from medsight.tasks.segmentation.inference import onnx_predictor


def model_with(bundle: Path, spinning: bool) -> Any:
    """The bundle as ``medsight stream`` runs it (no flips, no uncertainty), on ONNX Runtime with ``spinning``."""
    model = runtime.load(bundle)
    model.plan = dataclasses.replace(model.plan, test_time_flips=False)
    model.uncertainty = False
    model.predictor = onnx_predictor(model.bundle.onnx_path, config.num_threads(), spinning=spinning)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("bench_out/stream/bundle"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--results", type=Path, default=RESULTS / "ort_spinning.json")
    args = parser.parse_args()
    torch.set_num_threads(config.num_threads())

    meta = json.loads((args.bundle / "bundle.json").read_text())
    ds = open_dataset(meta["data"]["root"])
    ids = list(meta["data"]["val_ids"])
    frames = [resize(load_case(ds, ds.case(i)).image, [args.size, args.size], label=False) for i in ids]
    models = {"spinning": model_with(args.bundle, True), "no_spinning": model_with(args.bundle, False)}
    times: dict[str, list[float]] = {name: [] for name in models}
    for m in models.values():
        for f in frames[:3]:
            m.segment(f, (1.0, 1.0))
    for _ in range(args.rounds):
        for name, m in models.items():
            for f in frames:
                t0 = time.perf_counter()
                m.segment(f, (1.0, 1.0))
                times[name].append(time.perf_counter() - t0)
    speed: dict[str, Any] = {}
    for name, t in times.items():
        arr = np.asarray(t)
        stats = bootstrap(lambda ix, a=arr: {"fps": float(len(ix) / a[ix].sum())}, len(arr), n_boot=args.bootstrap)
        speed[name] = {
            "frames_per_second": stats["fps"],
            "ms_per_frame_p50": float(np.percentile(arr * 1000, 50)),
            "ms_per_frame_p95": float(np.percentile(arr * 1000, 95)),
            "frames_timed": len(arr),
        }
    faster = max(speed, key=lambda k: speed[k]["frames_per_second"]["value"])
    record = {
        "provenance": provenance("ort_spinning.py"),
        "machine": machine(),
        "settings": {
            "bundle": str(args.bundle),
            "frames_from": f"{len(ids)} validation images of the bundle resized to {args.size}x{args.size}",
            "threads": config.num_threads(),
            "rounds": args.rounds,
        },
        "speed": speed,
        "faster": faster,
    }
    write_json(args.results, record)
    for name, s in speed.items():
        print(f"{name}: {s['frames_per_second']['value']:.1f} frames/s {s['frames_per_second']['ci95']}")
    print(f"faster: {faster}; results: {args.results}")


if __name__ == "__main__":
    main()
