"""ONNX Runtime's thread spinning on the streaming path: frames/s of ``model.segment`` (what ``medsight stream``
runs per frame: resizing, normalisation, the network on ONNX Runtime, softmax, post-processing) with the runtime's
worker threads busy-waiting between calls (its default) and without, on the same frames, taking turns round by round.

Frames: the streaming bundle's **validation** images (never its test fold) resized to 256x256, so that the choice
of the default (``segmentation.inference.onnx_predictor``) is made on data that decides nothing else. frames/s with a
95% bootstrap CI over frames, p50/p95 per frame (``stream.speed``, every frame once per round).

Run: ``MEDSIGHT_DATA=../shared/data MEDSIGHT_THREADS=2 .venv/bin/python benchmarks/ort_spinning.py --bundle B``
Writes ``benchmarks/results/ort_spinning.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from stream import speed
from support.provenance import provenance
from support.seg_record import RESULTS, machine

from medsight import config, runtime
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
    started = provenance("ort_spinning.py")

    meta = json.loads((args.bundle / "bundle.json").read_text())
    ds = open_dataset(meta["data"]["root"])
    ids = list(meta["data"]["val_ids"])
    frames = [resize(load_case(ds, ds.case(i)).image, [args.size, args.size], label=False) for i in ids]
    models = {"spinning": model_with(args.bundle, True), "no_spinning": model_with(args.bundle, False)}
    measured = speed(models, frames, len(frames), args.rounds, args.bootstrap)
    faster = max(measured, key=lambda k: measured[k]["frames_per_second"]["value"])
    record = {
        "provenance": started,
        "machine": machine(),
        "settings": {
            "bundle": str(args.bundle),
            "frames_from": f"{len(ids)} validation images of the bundle resized to {args.size}x{args.size}",
            "threads": config.num_threads(),
            "rounds": args.rounds,
        },
        "speed": measured,
        "faster": faster,
    }
    write_json(args.results, record)
    for name, s in measured.items():
        print(f"{name}: {s['frames_per_second']['value']:.1f} frames/s {s['frames_per_second']['ci95']}")
    print(f"faster: {faster}; results: {args.results}")


if __name__ == "__main__":
    main()
