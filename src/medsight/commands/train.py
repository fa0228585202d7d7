"""``medsight train DATA --out BUNDLE``: train a model and write its bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsight import tasks
from medsight.commands._arguments import output_folder, refuse_inputs_inside, whole
from medsight.data.splits import SPLIT_SEED, SPLIT_SEED_ENV
from medsight.defaults import DEFAULT_ALPHA

#: Flags that become task options when given; a task that does not take one rejects it by name.
OPTION_FLAGS = (
    "seed",
    "epochs",
    "time_budget_s",
    "batch_size",
    "lr",
    "target_sensitivity",
    "plan",
    "fold",
    "class_balance",
    "ensemble",
    "tta",
    "seed_members",
    "mixup",
    "image_size",
    "positive",
    "alpha",
    "split_seed",
    "init",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model and write a bundle",
        description="Train on DATA's train split, select and calibrate on its validation split, and write a bundle "
        "(weights, ONNX, bundle.json). DATA is medmnist:<name>[_<size>], a MedMNIST-layout .npz, a manifest CSV "
        "(path,label[,patient_id,split,attributes...]) or its folder, or a task-specific folder. Options left unset "
        "are planned from the data; the plan, with the expected training time, is printed before training starts.",
    )
    p.add_argument("data", help="data source, e.g. medmnist:breastmnist or path/to/manifest.csv")
    p.add_argument(
        "--out", required=True, type=output_folder("bundle.json"), help="bundle folder to write (replaced atomically)"
    )
    p.add_argument("--task", choices=tasks.TASKS, help="task (default: detected from DATA)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed repeats the run (default 0)")
    p.add_argument("--epochs", type=int, help="maximum epochs (default: planned from the data)")
    p.add_argument(
        "--time-budget",
        dest="time_budget_s",
        type=float,
        metavar="SECONDS",
        help="stop training after about this long (default: planned from the measured speed)",
    )
    p.add_argument("--batch-size", type=int, help="batch size (default: planned from the data)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the task's own)")
    p.add_argument(
        "--target-sensitivity",
        type=float,
        metavar="S",
        help="classification, outcome: choose the operating point reaching this validation sensitivity "
        "(default: Youden)",
    )
    p.add_argument(
        "--plan",
        type=Path,
        metavar="JSON",
        help="segmentation: a JSON file of plan overrides (e.g. patch size, batch size, spacing); see "
        "docs/segmentation.md",
    )
    p.add_argument("--fold", type=int, help="segmentation: which cross-validation fold to train (default 0)")
    p.add_argument(
        "--class-balance",
        choices=("auto", "on", "off"),
        help="classification: weight the loss by inverse class frequency (default auto: when classes are imbalanced)",
    )
    p.add_argument(
        "--ensemble",
        choices=("auto", "on", "off"),
        help="classification: when several recipes are trained (e.g. plain and class-balanced loss), the mean of "
        "their logits competes on validation (auto, default), is kept (on) or is not built (off: half the "
        "inference cost)",
    )
    p.add_argument(
        "--tta",
        choices=("auto", "on", "off"),
        help="classification: test-time augmentation, the mean over the image, its left-right mirror (where the "
        "modality allows one) and shifts by 4%% of its side: decided on validation (auto, default), kept (on) or "
        "not used (off: one forward pass per image instead of up to 6)",
    )
    p.add_argument(
        "--seed-members",
        type=int,
        metavar="N",
        help="classification: train each recipe from N seeds (1-3); the further models join the ensemble only "
        "(default: as many as the time limit holds without cutting an epoch; 1 with --epochs alone, --ensemble off "
        "or --init)",
    )
    p.add_argument(
        "--mixup",
        type=float,
        metavar="ALPHA",
        help="classification: mixup, blending each training batch with a shuffled copy by a weight drawn from "
        "Beta(ALPHA, ALPHA) and the loss alike (0: off, the default as decided on validation)",
    )
    p.add_argument(
        "--positive",
        metavar="LABEL",
        help="classification (binary): the label that counts as positive, i.e. the finding sensitivity is about "
        "(default: what the data set declares, e.g. malignant for BreastMNIST, pneumonia for PneumoniaMNIST)",
    )
    p.add_argument("--image-size", type=int, help="detection, outcome: side of the square model input in pixels")
    p.add_argument(
        "--alpha",
        type=float,
        metavar="A",
        help="classification, outcome: conformal miscoverage, 0 < A < 1; prediction sets, calibrated on validation, "
        f"hold the true label for at least 1 - A of cases (default {DEFAULT_ALPHA}); recorded in the bundle",
    )
    p.add_argument(
        "--split-seed",
        type=int,
        metavar="N",
        help="classification, detection, outcome: seed of the derived patient-level train/val/test split, never the "
        f"training seed (default ${SPLIT_SEED_ENV} or {SPLIT_SEED}); recorded in the bundle and used by evaluate. "
        "Segmentation uses its stored folds (--fold) instead",
    )
    p.add_argument(
        "--init",
        type=Path,
        metavar="BUNDLE",
        help="classification, segmentation: fine-tune from BUNDLE's weights (same task, labels and network; "
        "segmentation also keeps its plan); the new bundle records BUNDLE's checksum as its parent. See "
        "docs/feedback.md",
    )
    p.add_argument(
        "--workers",
        type=whole(1),
        metavar="N",
        help="classification, outcome: train on N data-parallel workers (PyTorch DDP on Ray Train; needs Ray, see "
        "docs/scale.md), on a local cluster started for the run unless --address is given",
    )
    p.add_argument(
        "--address",
        metavar="ADDR",
        help="train on the existing Ray cluster at ADDR (e.g. ray://head:10001); the bundle folder and DATA must be "
        "reachable from every node",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    refuse_inputs_inside(args.out, args.data, args.init)
    name = args.task or (_parent_task(args.init) if args.init is not None else tasks.detect(args.data))
    task = tasks.get(name)
    given = {k: getattr(args, k) for k in OPTION_FLAGS if getattr(args, k, None) is not None}
    options = task.Options.from_mapping(given, name)
    if args.init is not None:  # refuse a parent of another task before any data are read
        from medsight.training.warm_start import open_parent

        open_parent(args.init, name)
    if args.workers is not None or args.address is not None:  # scale out on Ray (imported only here)
        from medsight.distributed.train import train as train_distributed

        meta = train_distributed(name, args.data, args.out, options, args.workers or 1, args.address)
    else:
        meta = task.train(args.data, args.out, options)
    print(f"bundle: {args.out}")
    val = meta.get("metrics", {}).get("val", {})
    if val:
        print("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in val.items() if isinstance(v, float)))
    for warning in meta.get("training", {}).get("warnings", []):
        print(f"warning: {warning}")
    return 0


def _parent_task(bundle: Path) -> str:
    """The task of the bundle to fine-tune from: a fine-tuned model does what its parent does."""
    from medsight.training.bundle import load_bundle

    return load_bundle(bundle).task
