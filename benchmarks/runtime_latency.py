"""The runtime: latency of one prediction on a warm model against the per-call ``medsight predict`` path, and
ONNX Runtime against eager PyTorch at batch 1 for each task's network.

Run: ``MEDSIGHT_DATA=../shared/data .venv/bin/python benchmarks/runtime_latency.py [--bundle B] [--repeats 30]``

(a) One 2D prediction (a PNG made from a PneumoniaMNIST test image, and the real JPEG 2000 CR radiograph of
``make demo``) with the classification bundle ``--bundle`` (default: one trained here for 1 epoch on
PneumoniaMNIST; latency does not depend on how well it is trained), three ways: ``runtime.load`` once then
``model.predict`` per image (the service's path); ``runtime.load`` + ``predict`` + ``write_predictions`` per image
in one process; and the CLI, ``medsight predict`` as a new process per image (what a script calling the command
pays today). (b) For each task's planned network, random weights (speed does not depend on them): median latency
at batch 1, eager PyTorch (``torch.no_grad``, eval) against the exported ONNX model on ONNX Runtime, both with the
same threads. Medians over ``--repeats`` after warm-up. Results: ``benchmarks/results/runtime_latency.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from seg_speed import fingerprint as seg_speed_fingerprint
from support.provenance import provenance
from torch import nn

from medsight import runtime
from medsight.io.atomic import write_json
from medsight.runtime.onnx_export import OnnxPredictor, export_onnx

RESULTS = Path(__file__).resolve().parent / "results" / "runtime_latency.json"
ROOT = Path(__file__).resolve().parents[1]


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def networks() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """Each task's network as its planner sizes it, with the input shape at batch 1."""
    from medsight.tasks.classification.network import build_network, plan_network
    from medsight.tasks.detection.network import Heads, retinanet
    from medsight.tasks.outcome.network import WithEmbedding, plan_resnet
    from medsight.tasks.segmentation import network as seg_network
    from medsight.tasks.segmentation.plan import make_plan

    seg_fp = seg_speed_fingerprint()
    seg_plan = make_plan(seg_fp, "cpu", {"test_time_flips": False})
    return {
        "classification ResNet, 2D 28 px (MedMNIST)": (
            build_network(plan_network(2, [28, 28], 1, 2, 16)),
            (1, 1, 28, 28),
        ),
        "classification ResNet, 2D 224 px": (build_network(plan_network(2, [224, 224], 1, 2, 16)), (1, 1, 224, 224)),
        "classification ResNet, 3D 28^3 (MedMNIST 3D)": (
            build_network(plan_network(3, [28, 28, 28], 1, 11, 16)),
            (1, 1, 28, 28, 28),
        ),
        "outcome ResNet + embedding, 2D 128 px": (
            WithEmbedding(build_network(plan_resnet(128))),
            (1, 1, 128, 128),
        ),
        f"segmentation DynUNet {seg_plan.network.filters}, 2D patch {seg_plan.patch_size}": (
            seg_network.build(seg_plan),
            (1, 1, *seg_plan.patch_size),
        ),
        "detection RetinaNet heads, 2D 256 px": (Heads(retinanet()), (1, 1, 256, 256)),
    }


def eager_vs_ort(repeats: int, threads: int, work: Path) -> list[dict[str, Any]]:
    rows = []
    for k, (name, (model, shape)) in enumerate(networks().items()):
        model = model.eval()
        x = torch.randn(*shape)
        path = work / f"net{k}.onnx"
        if name.startswith("detection"):
            from medsight.tasks.detection.network import export_heads

            export_heads(model.network, x, path)  # type: ignore[attr-defined]
        else:
            export_onnx(model, torch.randn(2, *shape[1:]), path)
        ort = OnnxPredictor(path, threads)
        xn = x.numpy()

        def eager(model: nn.Module = model, x: torch.Tensor = x) -> None:
            with torch.no_grad():
                model(x)

        def onnx(ort: OnnxPredictor = ort, xn: np.ndarray = xn) -> None:
            ort.session.run(None, {ort.input_name: xn})

        e, o = median_ms(eager, repeats), median_ms(onnx, repeats)
        params = sum(p.numel() for p in model.parameters())
        rows.append({"network": name, "parameters": params, "eager_ms": e, "ort_ms": o, "ort_speedup": e / o})
        print(f"{name:60s} eager {e:8.2f} ms  ORT {o:8.2f} ms  {e / o:5.2f}x", flush=True)
    return rows


def train_bundle(work: Path) -> Path:
    from medsight.tasks.classification import TASK, ClassificationOptions

    bundle = work / "pneumonia_1epoch"
    TASK.train("medmnist:pneumoniamnist", bundle, ClassificationOptions(seed=0, epochs=1))
    return bundle


def one_prediction(bundle: Path, inputs: dict[str, Path], repeats: int, work: Path) -> list[dict[str, Any]]:
    rows = []
    medsight = str(Path(sys.executable).with_name("medsight"))
    for label, path in inputs.items():
        model = runtime.load(bundle)
        warm = median_ms(lambda model=model, path=path: model.predict([path]), repeats)

        def per_call(path: Path = path) -> None:
            m = runtime.load(bundle)
            runtime.write_predictions(m, m.predict([path]), work / "per_call")

        cold = median_ms(per_call, max(3, repeats // 3))

        def cli(path: Path = path) -> None:
            subprocess.run(
                [medsight, "predict", str(bundle), str(path), "--out", str(work / "cli")],
                check=True,
                capture_output=True,
            )

        process = median_ms(cli, 3, warmup=1)
        rows.append(
            {
                "input": label,
                "warm_model_predict_ms": warm,
                "load_predict_write_per_call_ms": cold,
                "cli_process_per_call_ms": process,
                "speedup_vs_per_call": cold / warm,
                "speedup_vs_cli": process / warm,
            }
        )
        print(
            f"{label:40s} warm {warm:8.1f} ms | load+predict+write {cold:8.1f} ms | CLI process {process:8.1f} ms",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="classification bundle (default: train one for 1 epoch)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("MEDSIGHT_THREADS", os.cpu_count() or 1)))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    prov = provenance("runtime_latency.py", ("src/medsight",), repeats=args.repeats, threads=args.threads)
    torch.set_num_threads(args.threads)
    os.environ["MEDSIGHT_THREADS"] = str(args.threads)
    data_root = Path(os.environ.get("MEDSIGHT_DATA", ROOT.parent / "shared" / "data"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        networks_rows = eager_vs_ort(args.repeats, args.threads, work)
        bundle = args.bundle or train_bundle(work)
        test = np.load(data_root / "medmnist" / "pneumoniamnist.npz")["test_images"][0]
        png = work / "pneumonia_test_0.png"
        Image.fromarray(np.asarray(test, np.uint8)).resize((224, 224)).save(png)
        inputs = {
            "PNG 224x224 (PneumoniaMNIST test image)": png,
            "DICOM CR, JPEG 2000 (RG3_J2KR.dcm)": data_root / "dicom_samples" / "pydicom_data" / "RG3_J2KR.dcm",
        }
        prediction_rows = one_prediction(bundle, inputs, args.repeats, work)
    write_json(
        args.results,
        {
            "one_2d_prediction": prediction_rows,
            "batch1_eager_vs_onnxruntime": networks_rows,
            "goal": "ORT >= 3x eager at batch 1 for the classifiers",
            "provenance": prov,
        },
    )
    print(f"results: {args.results}")


if __name__ == "__main__":
    main()
