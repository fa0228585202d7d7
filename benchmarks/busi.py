"""BUSI breast ultrasound: lesion segmentation Dice and benign/malignant/normal classification AUC, with 95% CIs, on
the published grouped 5-fold split (``src/medsight/data/busi_folds.json``, docs/ultrasound.md).

For each CV fold asked for (``--folds``, default 0): the fold is the test split, the next fold is validation (early
stopping, calibration, post-processing, every choice) and the other three train. Segmentation is ``medsight train``
(self-configured plan, ``--preset`` default or fast) then ``medsight evaluate --split test``; classification is the
same with ``--task classification``. Each fold's test images are scored once, at the end.

Run (the lead, on a quiet machine; hours for all five folds):
``MEDSIGHT_DATA=../shared/data MEDSIGHT_THREADS=2 .venv/bin/python benchmarks/busi.py --folds 0,1,2,3,4``
Writes ``benchmarks/results/busi.json`` (``--results`` elsewhere). ``--limit N`` keeps N images per fold: a smoke run
whose figures mean nothing (the tests use it). Folds can run in separate processes (one core each) with their own
``--results`` files, then ``--merge A.json B.json ...`` joins them into ``--results`` (later files win per fold and
task; each fold keeps the command and commit that measured it).

Besides the Dice over every test image (a normal image with no lesion drawn scores 1, with one drawn 0), each fold
reports the Dice over the test images that have a lesion (the protocol of UNeXt and most BUSI papers, which leave
the normal images out) and, as an ablation, the Dice of the same bundle without its unsure-lesion gate (the
post-processing chosen on the validation fold, ``segmentation/inference.py``).
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
from support.provenance import provenance
from support.seg_record import RESULTS, machine

from medsight import config
from medsight.data import busi
from medsight.evaluation.metrics import bootstrap
from medsight.io.atomic import write_json
from medsight.tasks import classification, segmentation
from medsight.tasks.classification import ClassificationOptions
from medsight.tasks.segmentation import SegmentationOptions
from medsight.training.bundle import load_bundle, write_bundle_json

#: Published 5-fold figures on BUSI (targets for the lesion; not the same folds, so context, not a comparison).
REFERENCES = {
    "UNeXt (Valanarasu & Patel, MICCAI 2022), F1 = Dice": {"dice": 0.794},
    "U-Net (as reported by UNeXt)": {"dice": 0.76},
    "goal (issue 13)": {"dice": 0.80},
}


def parse_folds(text: str) -> list[int]:
    folds = sorted({int(v) for v in text.split(",") if v.strip()})
    if not folds or any(not 0 <= f < busi.N_FOLDS for f in folds):
        raise argparse.ArgumentTypeError(f"folds are 0-{busi.N_FOLDS - 1}, e.g. 0 or 0,1,2,3,4 (got {text!r})")
    return folds


def segmentation_fold(view: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    task = segmentation.TASK
    options = SegmentationOptions(
        seed=args.seed,
        epochs=args.seg_epochs,
        time_budget_s=args.seg_time_budget,
        plan=plan_overrides(args, out),
    )
    started = time.monotonic()
    meta = task.train(str(view), out / "seg_bundle", options)
    tr = meta["training"]
    post = meta["postprocessing"]
    return {
        **scored_on_test(out / "seg_bundle", view, out / "seg_eval", args.bootstrap),
        "val_dice": meta["metrics"]["val"].get("dice"),
        "val_dice_before_gate": (post.get("unsure_trials") or {}).get("1", {}).get("dice_before"),
        "preset": meta["plan"]["preset"],
        "image_pixels": meta["plan"].get("image_pixels"),
        "patch_size": meta["plan"]["patch_size"],
        "flip_axes": meta["plan"].get("flip_axes"),
        "max_rotation_degrees": meta["plan"].get("max_rotation_degrees"),
        "filters": meta["plan"]["network"]["filters"],
        "res_block": meta["plan"]["network"].get("res_block", False),
        "batch_size": meta["plan"]["batch_size"],
        "training": {k: tr.get(k) for k in ("epochs_run", "iterations", "stopped_by", "seconds", "threads")},
        "seconds": round(time.monotonic() - started, 1),
    }


def scored_on_test(bundle: Path, view: Path, out: Path, n_boot: int) -> dict[str, Any]:
    """A fold's test figures: ``bundle`` scored once on the view's test split, and once with its unsure-lesion gate
    switched off (the ablation); the post-processing it was scored with."""
    task = segmentation.TASK
    result = task.evaluate(bundle, str(view), "test", out, n_boot)
    without = task.evaluate(without_gate(bundle), str(view), "test", out.with_name(out.name + "_no_gate"), 0)
    post = load_bundle(bundle).meta["postprocessing"]
    return {
        "n_test": result["n"],
        "dice": result["metrics"]["dice"],
        "dice_lesion_images": lesion_image_dice(result["per_case"], n_boot),
        "postprocessing": {k: post.get(k) for k in ("keep_largest_component", "drop_unsure", "unsure_trials")},
        "ablation_without_unsure_gate": {
            "dice": without["metrics"]["dice"]["value"],
            "case_situations": without.get("case_situations"),
            "dice_lesion_images": lesion_image_dice(without["per_case"], 0)["value"],
        },
        "hd95": result["metrics"].get("hd95"),
        "case_situations": result.get("case_situations"),
        "engine": result["engine"],
    }


def plan_overrides(args: argparse.Namespace, out: Path) -> Path | None:
    """The plan asked for: the preset's name, or, with ``--image-pixels``, ``--flip-axes``, ``--max-rotation``,
    ``--filters`` or ``--res-block``, a plan-override file beside the fold."""
    extra: dict[str, Any] = {
        key: value
        for key, value in (
            ("image_pixels", args.image_pixels),
            ("flip_axes", args.flip_axes),
            ("max_rotation_degrees", args.max_rotation),
        )
        if value is not None
    }
    network = {key: value for key, value in (("filters", args.filters), ("res_block", args.res_block)) if value}
    if network:
        extra["network"] = network
    if not extra:
        return Path(args.preset) if args.preset != "default" else None
    path = out / "plan_overrides.json"
    write_json(path, {"preset": args.preset, **extra})
    return path


def without_gate(bundle: Path) -> Path:
    """A copy of ``bundle`` whose unsure-lesion gate is off (the ablation; the copy sits beside the bundle)."""
    copy = bundle.with_name(bundle.name + "_no_gate")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(bundle, copy)
    meta = load_bundle(copy).meta
    meta["postprocessing"]["drop_unsure"] = {}
    write_bundle_json(copy, meta)
    return copy


def lesion_image_dice(per_case: list[dict[str, Any]], n_boot: int) -> dict[str, Any]:
    """Mean Dice over the images whose reference has a lesion (found or missed), with a bootstrap CI over them."""
    rows = [c["lesion"] for c in per_case if c["lesion"]["situation"] in ("both_present", "missed")]
    dice = np.asarray([r["dice"] for r in rows], dtype=float)
    if n_boot <= 0:
        return {"value": float(dice.mean()), "n": len(dice)}
    return bootstrap(lambda ix: {"dice": float(dice[ix].mean())}, len(dice), None, n_boot)["dice"] | {"n": len(dice)}


def classification_fold(view: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    task = classification.TASK
    options = ClassificationOptions(seed=args.seed, epochs=args.cls_epochs, time_budget_s=args.cls_time_budget)
    started = time.monotonic()
    meta = task.train(str(view), out / "cls_bundle", options)
    result = task.evaluate(out / "cls_bundle", str(view), "test", out / "cls_eval", args.bootstrap)
    return {
        "n_test": result.get("n"),
        "metrics": result["metrics"],
        "per_class_one_vs_rest": result.get("per_class"),
        "labels": meta["label_names"],
        "split_method": meta["data"].get("split_method"),
        "seconds": round(time.monotonic() - started, 1),
    }


def pooled(folds: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """Mean of per-fold point estimates with their spread (the CIs are per fold, over that fold's test images)."""
    values = [f[key]["value"] if isinstance(f[key], dict) else f[key] for f in folds if f.get(key) is not None]
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
        "n_folds": len(values),
    }


def _fold(entry: dict[str, Any]) -> int:
    return int(entry["fold"])


def keep_earlier_folds(record: dict[str, Any], results: Path, folds: list[int], skip: list[str]) -> None:
    """Carry over the folds of an earlier run in ``results`` that this run does not test (or tests only for the
    other task: ``skip``), each with the provenance (command, commit, date) of the run that measured it, so that five
    folds can be run in several sittings."""
    if not results.is_file():
        return
    earlier = json.loads(results.read_text(encoding="utf-8"))
    for task in ("segmentation", "classification"):
        for entry in earlier.get(task, {}).get("folds", []):
            if entry["fold"] not in folds or task in skip:
                entry.setdefault("provenance", earlier["provenance"])
                record[task]["folds"].append(entry)
        record[task]["folds"].sort(key=_fold)
    tested = {f["fold"] for t in ("segmentation", "classification") for f in record[t]["folds"]}
    record["split"]["folds_tested"] = sorted(tested | set(folds))
    record["earlier_runs"] = [earlier["provenance"], *earlier.get("earlier_runs", [])]


def merge(record: dict[str, Any], files: list[Path]) -> None:
    """Fold entries of several results files into ``record``, later files winning per task and fold; every entry
    keeps (or is given) the provenance of the run that measured it."""
    runs = []
    for path in files:
        earlier = json.loads(path.read_text(encoding="utf-8"))
        runs += [earlier["provenance"], *earlier.get("earlier_runs", []), *earlier.get("merged_from", [])]
        for task in ("segmentation", "classification"):
            for entry in earlier.get(task, {}).get("folds", []):
                entry.setdefault("provenance", earlier["provenance"])
                kept = [f for f in record[task]["folds"] if f["fold"] != entry["fold"]]
                record[task]["folds"] = sorted([*kept, entry], key=_fold)
    tested = {f["fold"] for t in ("segmentation", "classification") for f in record[t]["folds"]}
    record["split"]["folds_tested"] = sorted(tested)
    record["merged_from"] = runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=config.data_root() / "busi")
    parser.add_argument("--out", type=Path, default=Path("bench_out/busi"))
    parser.add_argument("--results", type=Path, default=RESULTS / "busi.json")
    parser.add_argument(
        "--folds", type=parse_folds, default=[0], help="CV folds to test on, e.g. 0,1,2,3,4 (default 0)"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (the folds are fixed)")
    parser.add_argument("--preset", default="default", choices=["default", "fast"], help="segmentation plan preset")
    parser.add_argument(
        "--image-pixels",
        type=int,
        help="plan override: resize every image, aspect kept, to about this many pixels (whole image in view)",
    )
    parser.add_argument(
        "--flip-axes",
        type=lambda text: [int(a) for a in text.split(",") if a != ""],
        help="plan override: the spatial axes training flips and test time mirrors, e.g. 1 (left-right only); "
        "'' for none",
    )
    parser.add_argument(
        "--max-rotation", type=float, help="plan override: training's largest in-plane rotation, in degrees"
    )
    parser.add_argument(
        "--filters",
        type=lambda text: [int(f) for f in text.split(",")],
        help="plan override: the network's filters per level, e.g. 16,32,64,128,128 (one per level the plan makes)",
    )
    parser.add_argument(
        "--res-block", action="store_true", help="plan override: residual blocks in the network (MONAI DynUNet)"
    )
    parser.add_argument("--seg-epochs", type=int, help="segmentation epochs (default: planned)")
    parser.add_argument("--seg-time-budget", type=float, help="segmentation training seconds (default: planned)")
    parser.add_argument("--cls-epochs", type=int, help="classification epochs (default: planned)")
    parser.add_argument("--cls-time-budget", type=float, help="classification training seconds (default: planned)")
    parser.add_argument("--skip", choices=["segmentation", "classification"], action="append", default=[])
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--limit", type=int, help="smoke run: at most this many images per fold (figures mean nothing)")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="join these results files (later files win per fold and task) into --results; trains nothing",
    )
    parser.add_argument(
        "--add",
        action="store_true",
        help="keep the folds already in --results that this run does not test (each fold records its own command)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    record: dict[str, Any] = {
        "provenance": provenance("busi.py", seeds=[args.seed]),
        "machine": machine(),
        "split": {
            "file": "src/medsight/data/busi_folds.json",
            "method": busi.published()["method"],
            "folds_tested": args.folds,
            "limit_per_fold": args.limit,
            "rule": "test = fold k, validation = fold k+1 (every choice), training = the other three",
        },
        "references": REFERENCES,
        "segmentation": {"folds": []},
        "classification": {"folds": []},
    }
    if args.merge:
        merge(record, args.merge)
    elif args.add:
        keep_earlier_folds(record, args.results, args.folds, args.skip)
    for k in [] if args.merge else args.folds:
        out = args.out / f"fold{k}"
        view = busi.fold_view(args.data, k, out / "data", args.limit)
        if "segmentation" not in args.skip:
            fold = {"fold": k, **segmentation_fold(view, out, args), "provenance": record["provenance"]}
            record["segmentation"]["folds"] = sorted([*record["segmentation"]["folds"], fold], key=_fold)
        if "classification" not in args.skip:
            fold = {"fold": k, **classification_fold(view, out, args), "provenance": record["provenance"]}
            record["classification"]["folds"] = sorted([*record["classification"]["folds"], fold], key=_fold)
        write_json(args.results, record)  # after every fold: a long run that stops keeps what it measured
    seg, cls = record["segmentation"]["folds"], record["classification"]["folds"]
    if seg:
        record["segmentation"]["across_folds"] = {
            "dice": pooled(seg, "dice"),
            "dice_lesion_images": pooled(seg, "dice_lesion_images"),
            "ablation_without_unsure_gate": pooled([f.get("ablation_without_unsure_gate", {}) for f in seg], "dice"),
        }
    if cls:
        record["classification"]["across_folds"] = {
            "auc": pooled([{"auc": f["metrics"].get("auc")} for f in cls], "auc")
        }
    write_json(args.results, record)
    for f in seg:
        print(f"fold {f['fold']}: lesion Dice {f['dice']} on {f['n_test']} test images")
    for f in cls:
        print(f"fold {f['fold']}: classification AUC {f['metrics'].get('auc')}")
    print(f"results: {args.results}")


if __name__ == "__main__":
    main()
