"""``medsight train DATA --out BUNDLE``: train a model and write its bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsight.pipelines import TASKS, detect_task, pipeline


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model and write a bundle",
        description="Train on DATA's train split, select and calibrate on its validation split, and write a bundle "
        "(weights, ONNX, bundle.json). DATA is medmnist:<name>[_<size>], a MedMNIST-layout .npz, a manifest CSV "
        "(path,label[,patient_id,split,attributes...]) or its folder, or a task-specific folder.",
    )
    p.add_argument("data", help="data source, e.g. medmnist:breastmnist or path/to/manifest.csv")
    p.add_argument("--out", required=True, type=Path, help="bundle folder to write (replaced atomically)")
    p.add_argument("--task", choices=TASKS, help="task (default: detected from DATA)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed repeats the run (default 0)")
    p.add_argument("--epochs", type=int, help="maximum epochs (default: the task's own, 40 for classification)")
    p.add_argument("--time-budget", type=float, metavar="SECONDS", help="stop training after about this long")
    p.add_argument("--batch-size", type=int, help="batch size (default: planned from the data)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the task's own, 2e-3 for classification)")
    p.add_argument(
        "--target-sensitivity",
        type=float,
        metavar="S",
        help="choose the operating point reaching this validation sensitivity (default: Youden)",
    )
    p.add_argument(
        "--plan",
        type=Path,
        metavar="JSON",
        help="segmentation: a JSON file of plan overrides (e.g. patch size, batch size, spacing); see "
        "docs/segmentation.md",
    )
    p.add_argument(
        "--class-balance",
        choices=("auto", "on", "off"),
        default="auto",
        help="classification: weight the loss by inverse class frequency (auto: when classes are imbalanced)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    task = args.task or detect_task(args.data)
    options = {
        "epochs": args.epochs,
        "time_budget_s": args.time_budget,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "target_sensitivity": args.target_sensitivity,
        "balanced": {"auto": None, "on": True, "off": False}[args.class_balance],
        "plan_overrides": args.plan,
    }
    # Unset options are left out, so each task's pipeline applies its own defaults.
    given = {k: v for k, v in options.items() if v is not None}
    meta = pipeline(task).train(args.data, args.out, seed=args.seed, **given)
    print(f"bundle: {args.out}")
    val = meta.get("metrics", {}).get("val", {})
    if val:
        print("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in val.items() if isinstance(v, float)))
    return 0
