"""Test-time mirroring for BUSI's run of record: the decision of the rule fixed in docs/benchmarks.md before its run,
made on the validation folds alone, and, if it wins, the run of record's folds scored once on test with mirroring.

The `fast` preset predicts in one pass (no mirroring: it is made for frames/s). For the BUSI benchmark, whose figure
is Dice and not speed, mirroring costs only inference time. For each fold's bundle of the run of record (``busi.py``
wrote it under ``--out``/foldK), the validation images are predicted twice with the same ONNX model, in one pass and
averaged over nnU-Net's mirrors (every axis), and the post-processing (the unsure-lesion gate included) is chosen on
each as training chooses it. The decisive figure is the five-fold mean validation Dice before the gate. A folder
whose bundle did not train the run of record's fold (its iterations or training seconds differ) is refused.

Run: ``.venv/bin/python benchmarks/busi_tta.py --fold-dirs DIR0 ... DIR4 [--replace] [--results R.json]``.
Writes ``benchmarks/results/busi_tta.json``; with ``--replace`` and a win, the mirrored folds become the run of record
in ``--reference`` (the old one under ``previous``, with the records before it; the classifier folds kept).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from busi import pooled, scored_on_test
from support.provenance import provenance
from support.seg_record import RESULTS

from medsight import config
from medsight.io.atomic import write_json
from medsight.tasks.segmentation.data import open_dataset, read_cases
from medsight.tasks.segmentation.inference import onnx_predictor
from medsight.tasks.segmentation.plan import SegmentationPlan
from medsight.tasks.segmentation.train import validation_postprocessing
from medsight.training.bundle import ONNX, Bundle, load_bundle, write_bundle_json

RULE = (
    "docs/benchmarks.md, 'BUSI: test-time mirroring', fixed on 29 November 2026 before the run: the run of record's "
    "five fold bundles, unchanged, predict their validation fold in one pass and averaged over nnU-Net's mirrors; the "
    "post-processing is chosen on each as training chooses it; mirroring replaces the run of record only if its "
    "five-fold mean validation Dice before the unsure-lesion gate beats the one-pass figure computed the same way"
)


def fold_of(fold_dir: Path) -> int:
    """The CV fold a ``busi.py`` fold folder holds (its name: ``fold0`` ... ``fold4``)."""
    number = fold_dir.name.removeprefix("fold")
    if not number.isdigit():
        raise SystemExit(f"{fold_dir}: not a busi.py fold folder (named fold0 ... fold4)")
    return int(number)


def check_is_record(fold_dir: Path, bundle: Bundle, entry: dict[str, Any] | None) -> None:
    """Refuse a folder whose bundle is not the one that scored the run of record's fold (its training differs)."""
    trained = bundle.meta["training"]
    if entry is None or any(trained.get(k) != (entry.get("training") or {}).get(k) for k in ("iterations", "seconds")):
        raise SystemExit(f"{fold_dir}: its bundle did not train the run of record's fold (its training differs)")


#: The ways of predicting the rule compares: its name, and whether it averages over the mirrors.
WAYS = (("one_pass", False), ("mirrored", True))


def decide_ways(fold_dir: Path, bundle: Bundle, ways: tuple[tuple[str, bool], ...] = WAYS) -> dict[str, Any]:
    """Each way of predicting one fold's validation images: the post-processing it chooses and its figures."""
    plan = bundle.plan(SegmentationPlan)
    ds = open_dataset(str(fold_dir / "data"))
    val_cases = list(read_cases(ds, bundle.meta["data"]["val_ids"]).values())
    predictor = onnx_predictor(bundle.path / ONNX, torch.get_num_threads())
    decided: dict[str, Any] = {}
    for name, mirrored in ways:
        variant = plan.with_overrides({"test_time_flips": mirrored})
        post, metrics, review = validation_postprocessing(ds, val_cases, variant, predictor)
        decided[name] = {
            "val_dice_before_gate": float(post["unsure_trials"]["1"]["dice_before"]),
            "val_dice_after_gate": metrics["dice"],
            "postprocessing": post,
            "metrics": metrics,
            "uncertainty": review,
        }
    return decided


def decide(decided: dict[int, dict[str, Any]]) -> tuple[dict[str, float], bool]:
    """The five-fold mean validation Dice before the gate of each way, and whether mirroring wins (a tie does not)."""
    means = {
        way: sum(ways[way]["val_dice_before_gate"] for ways in decided.values()) / len(decided)
        for way in ("one_pass", "mirrored")
    }
    return means, means["mirrored"] > means["one_pass"]


def mirrored_bundle(fold_dir: Path, way: dict[str, Any]) -> Path:
    """A copy of the fold's bundle that predicts with mirroring and the post-processing chosen with it."""
    copy = fold_dir / "seg_bundle_mirrored"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(fold_dir / "seg_bundle", copy)
    meta = load_bundle(copy).meta
    meta["plan"]["test_time_flips"] = True
    meta["postprocessing"] = way["postprocessing"]
    meta["metrics"]["val"] = way["metrics"]
    meta["uncertainty"] = way["uncertainty"]
    write_json(copy / "plan.json", meta["plan"])
    write_bundle_json(copy, meta)
    return copy


def scored_folds(
    tested: dict[int, tuple[Path, Path, dict[str, Any], Path]],
    record_folds: dict[int, dict[str, Any]],
    prov: dict[str, Any],
    n_boot: int,
    extra: dict[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Each fold's adopted bundle scored once on its test fold (``tested``: fold -> bundle, fold folder, the way its
    validation figures were decided, evaluation folder), as run-of-record entries, and the figures across folds."""
    folds = []
    for fold, (bundle, fold_dir, way, out) in sorted(tested.items()):
        scored = scored_on_test(bundle, fold_dir / "data", out, n_boot)
        folds.append(
            record_folds[fold]
            | scored
            | {
                "val_dice": way["val_dice_after_gate"],
                "val_dice_before_gate": way["val_dice_before_gate"],
                **extra,
                "provenance": prov,
                "trained_by": record_folds[fold].get("trained_by", record_folds[fold]["provenance"]),
            }
        )
    across = {
        "dice": pooled(folds, "dice"),
        "dice_lesion_images": pooled(folds, "dice_lesion_images"),
        "ablation_without_unsure_gate": pooled([f["ablation_without_unsure_gate"] for f in folds], "dice"),
    }
    return folds, across


def test_summary(folds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a decision's results file keeps of each fold's test figures."""
    keys = ("fold", "dice", "dice_lesion_images", "ablation_without_unsure_gate", "case_situations")
    return [{k: f.get(k) for k in keys} for f in folds]


def install_record(
    path: Path,
    reference: dict[str, Any],
    folds: list[dict[str, Any]],
    across: dict[str, Any],
    rule: str,
    prov: dict[str, Any],
) -> None:
    """Make ``folds`` the run of record in ``path``: the old one under ``previous``, with the records before it."""
    previous = {"segmentation": reference["segmentation"], "provenance": reference["provenance"]}
    if "previous" in reference:
        previous["previous"] = reference["previous"]
    reference["segmentation"] = {"folds": folds, "across_folds": across, "chosen_by": rule}
    reference["previous"] = previous
    reference["provenance"] = prov
    write_json(path, reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--fold-dirs", type=Path, nargs="+", required=True, help="busi.py's foldK folders, one per fold"
    )
    parser.add_argument("--reference", type=Path, default=RESULTS / "busi.json", help="the run of record")
    parser.add_argument("--results", type=Path, default=RESULTS / "busi_tta.json")
    parser.add_argument("--replace", action="store_true", help="on a win, make the mirrored folds the run of record")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(config.num_threads())

    reference = json.loads(args.reference.read_text(encoding="utf-8"))
    record_folds = {f["fold"]: f for f in reference["segmentation"]["folds"]}
    decided: dict[int, dict[str, Any]] = {}
    for fold_dir in args.fold_dirs:
        fold, bundle = fold_of(fold_dir), load_bundle(fold_dir / "seg_bundle")
        check_is_record(fold_dir, bundle, record_folds.get(fold))
        decided[fold] = decide_ways(fold_dir, bundle)
    if sorted(decided) != sorted(record_folds):
        raise SystemExit(f"the run of record's folds are needed, got {sorted(decided)}")
    means, adopted = decide(decided)
    record: dict[str, Any] = {
        "provenance": provenance("busi_tta.py"),
        "rule": RULE,
        "validation": {
            "folds": [
                {
                    "fold": k,
                    **{
                        way: {key: v[way][key] for key in ("val_dice_before_gate", "val_dice_after_gate")}
                        for way in ("one_pass", "mirrored")
                    },
                }
                for k, v in sorted(decided.items())
            ],
            "val_dice_before_gate_mean": means,
        },
        "adopted": adopted,
    }
    if adopted:
        tested = {}
        for fold_dir in args.fold_dirs:
            way = decided[fold_of(fold_dir)]["mirrored"]
            bundle = mirrored_bundle(fold_dir, way)
            tested[fold_of(fold_dir)] = (bundle, fold_dir, way, fold_dir / "seg_eval_mirrored")
        folds, across = scored_folds(
            tested, record_folds, record["provenance"], args.bootstrap, {"test_time_flips": True}
        )
        record["test_across_folds"] = across
        record["test_folds"] = test_summary(folds)
        if args.replace:
            install_record(args.reference, reference, folds, across, RULE, record["provenance"])
    write_json(args.results, record)
    print(json.dumps({k: v for k, v in record.items() if k not in ("provenance", "test_folds")}, indent=1)[:3000])


if __name__ == "__main__":
    main()
