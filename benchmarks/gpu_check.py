"""The GPU path, measured in one prepared run (issue 14): PneumoniaMNIST for a fixed number of epochs (AMP on CUDA),
a Hippocampus fold for a fixed number of epochs, both exported to ONNX and checked against PyTorch by
``medsight train`` itself, then each bundle evaluated with the runtime (ONNX Runtime's CUDA provider where
present). Prints per-epoch time, images/s (iterations/s for 3D), cases/s at evaluation and the metrics, in under
10 minutes on one H100/H200, and writes ``benchmarks/results/gpu_check.json`` with the GPU model and command.

    MEDSIGHT_DATA=../shared/data python benchmarks/gpu_check.py [--epochs 5] [--seg-epochs 4]

Without a CUDA GPU it stops at once with a one-line message (exit 2): its figures are GPU figures. ``--allow-cpu``
runs the same steps on the CPU as a dry run of the script (tiny settings are sensible: ``--epochs 1
--seg-epochs 1``); a dry run writes its figures under ``--out`` only, never to benchmarks/results/.
The device machine has PyTorch but not MONAI and the rest: carry them as wheels (see the device tool's README).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_check.json"
ROOT = Path(__file__).resolve().parents[1]


def medsight(*args: str) -> float:
    """Run one ``medsight`` command; its wall-clock seconds (a failure stops the check with its output)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "medsight", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"medsight {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def training_record(bundle: Path) -> dict[str, Any]:
    meta = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    history = meta["training"].get("history", [])
    ends = [float(h["seconds"]) for h in history]
    per_epoch = [b - a for a, b in zip([0.0, *ends[:-1]], ends, strict=True)]
    return {
        "training": {k: v for k, v in meta["training"].items() if k not in ("history", "warnings")},
        "seconds_per_epoch": [round(s, 2) for s in per_epoch],
        "last_epoch": {k: v for k, v in (history[-1] if history else {}).items() if k != "lr"},
        "onnx_max_abs_diff_vs_torch": meta.get("onnx", {}).get("max_abs_diff_vs_torch"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="PneumoniaMNIST epochs (fixed: no early stop by budget)")
    parser.add_argument("--seg-epochs", type=int, default=4, help="Hippocampus epochs of the planned iterations")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "gpu_check")
    parser.add_argument("--allow-cpu", action="store_true", help="dry run of the script on the CPU")
    args = parser.parse_args()

    import torch

    from medsight import config

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        raise SystemExit("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); --allow-cpu for a dry run")
    os.environ["MEDSIGHT_DEVICE"] = "cuda" if cuda else "cpu"
    data = config.data_root()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    record: dict[str, Any] = {
        "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:]),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu (dry run)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    try:
        import onnxruntime

        record["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        record["onnxruntime_providers"] = []

    # 1. PneumoniaMNIST, fixed epochs; the budget is set far above so the epochs decide
    pneu = args.out / "pneumonia"
    seconds = medsight("train", "medmnist:pneumoniamnist", "--out", str(pneu), "--seed", "0",
                       "--epochs", str(args.epochs), "--time-budget", "100000")
    rec = training_record(pneu)
    n_train = json.loads((pneu / "bundle.json").read_text(encoding="utf-8"))["data"]["n"]["train"]
    epochs_run = rec["training"]["epochs_run"]
    train_s = rec["training"]["seconds"]
    rec["train_command_seconds"] = round(seconds, 1)
    if n_train:
        rec["images_per_second"] = round(int(n_train) * epochs_run / train_s, 1)
    eval_s = medsight("evaluate", str(pneu), "medmnist:pneumoniamnist", "--split", "val", "--out", str(pneu / "val"))
    metrics = json.loads((pneu / "val" / "metrics.json").read_text(encoding="utf-8"))
    rec["evaluate_val_seconds"] = round(eval_s, 1)
    rec["val_metrics"] = {k: metrics["metrics"][k] for k in ("auc", "accuracy") if k in metrics["metrics"]}
    record["pneumoniamnist"] = rec
    print(f"PneumoniaMNIST: {epochs_run} epochs, {rec['seconds_per_epoch']} s each, "
          f"{rec.get('images_per_second', '?')} images/s; validation {rec['val_metrics']}", flush=True)

    # 2. Hippocampus fold 0, fixed epochs of the planned iterations
    hippo = args.out / "hippocampus"
    seconds = medsight("train", str(data / "msd_hippocampus"), "--out", str(hippo), "--fold", "0", "--seed", "0",
                       "--epochs", str(args.seg_epochs), "--time-budget", "100000")
    rec = training_record(hippo)
    rec["train_command_seconds"] = round(seconds, 1)
    eval_s = medsight("evaluate", str(hippo), str(data / "msd_hippocampus"), "--split", "val", "--out",
                      str(hippo / "val"))
    metrics = json.loads((hippo / "val" / "metrics.json").read_text(encoding="utf-8"))
    rec["evaluate_val_seconds"] = round(eval_s, 1)
    rec["evaluate_inference_engine"] = metrics.get("engine")
    # the evaluation's own clock (inference and metrics, without the process start-up) decides cases/s
    rec["evaluate_cases_per_second"] = round(int(metrics["n"]) / float(metrics.get("seconds") or eval_s), 2)
    rec["val_metrics"] = {"n_cases": metrics["n"], "dice": metrics["metrics"]["dice"]}
    record["hippocampus_fold0"] = rec
    print(f"Hippocampus fold 0: {rec['training'].get('iterations')} iterations, "
          f"{rec['training'].get('iterations_per_s')} it/s; evaluation {rec.get('evaluate_cases_per_second', '?')} "
          f"cases/s; validation Dice {rec['val_metrics']['dice']}", flush=True)

    record["total_seconds"] = round(time.perf_counter() - started, 1)
    target = RESULTS if cuda else args.out / "gpu_check_dry_run.json"
    from medsight.io.atomic import write_json

    write_json(target, record)
    print(f"figures written to {target} ({record['total_seconds']} s in all)")


if __name__ == "__main__":
    main()
