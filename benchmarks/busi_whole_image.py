"""BUSI's screened plan changes (first the whole image in view, the plan's ``image_pixels``; then a smaller whole
image; then the orientation training keeps; then a longer training budget; then the network): the decisions of the
rules fixed in docs/benchmarks.md before their runs, made from ``busi.py`` results files on validation figures alone.

1. Screen: of the fold-0 runs given (``--screen``, one setting each), the one with the higher validation Dice before
   the unsure-lesion gate goes on, if it beats the run of record's fold 0 (``--reference``).
2. Five folds: that setting's folds 1-4 (``--folds``) with its screen fold 0; it replaces the run of record (and the
   plan adopts it) only if its mean validation Dice before the gate beats the run of record's.

No test figure is read to decide: they are copied into the results file, reported whatever they are.
Run: ``.venv/bin/python benchmarks/busi_whole_image.py --screen A.json B.json [--folds C.json D.json] [--replace]
[--rule whole-image|smaller|orientation|longer|network] [--results R.json]``. Writes
``benchmarks/results/busi_whole_image.json`` (or ``--results``); with ``--replace`` and a win, ``--reference``
becomes the new run of record (its segmentation folds under ``previous`` with the records before them, its
classification folds kept).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from busi import pooled
from support.provenance import provenance
from support.seg_record import RESULTS

from medsight.io.atomic import write_json

#: The rules fixed in docs/benchmarks.md before their runs (``--rule``); each decides the same way.
RULES = {
    "whole-image": (
        "docs/benchmarks.md, 'BUSI: the whole image in view', fixed at commit 183366e before the runs: the decisive "
        "figure is each fold's validation Dice before the unsure-lesion gate; the screen's better setting goes on only "
        "if it beats the run of record's fold 0; it replaces the run of record (and the fast preset adopts it) only if "
        "its five-fold mean beats the run of record's"
    ),
    "smaller": (
        "docs/benchmarks.md, 'BUSI: a smaller whole image', fixed on 29 November 2026 at 14:16 UTC before the runs: "
        "image_pixels 12288 and 8192 against the run of record's 20480; the decisive figure is each fold's validation "
        "Dice before the unsure-lesion gate; the screen's better setting goes on only if it beats the run of record's "
        "fold 0; it replaces the run of record (and the fast preset adopts it) only if its five-fold mean beats the "
        "run of record's"
    ),
    "orientation": (
        "docs/benchmarks.md, 'BUSI: the transducer on top', fixed before the runs: training flips left-right only and "
        "rotates within 15 degrees (a) or not at all (b), against nnU-Net's flips of every axis and rotations of up to "
        "180 degrees in the run of record; the decisive figure is each fold's validation Dice before the unsure-lesion "
        "gate; the screen's better setting goes on only if it beats the run of record's fold 0; it replaces the run of "
        "record (and the planner adopts it for 2D ultrasound) only if its five-fold mean beats the run of record's"
    ),
    "longer": (
        "docs/benchmarks.md, 'BUSI: a longer training budget', fixed on 29 November 2026 before the runs: 1890 s of "
        "single-thread training per fold against the run of record's 1260 s, the plan unchanged; the decisive figure "
        "is each fold's validation Dice before the unsure-lesion gate; the setting goes on only if it beats the run of "
        "record's fold 0 (a fold-1 run started beside the screen counts only if it goes on); it replaces the run of "
        "record (and the benchmark's command of record trains 1890 s per fold) only if its five-fold mean beats the "
        "run of record's"
    ),
    "network": (
        "docs/benchmarks.md, 'BUSI: a wider network, or residual blocks', fixed on 29 November 2026 before the runs: "
        "residual blocks (a) or filters 16-128 (b) against the fast preset's plain blocks of 8-64 filters, 1260 s of "
        "single-thread training per fold as the run of record; the decisive figure is each fold's validation Dice "
        "before the unsure-lesion gate; the screen's better setting goes on only if it beats the run of record's fold "
        "0; it replaces the run of record only if its five-fold mean beats the run of record's"
    ),
}


def val_before_gate(entry: dict[str, Any]) -> float:
    """A fold's validation Dice before the unsure-lesion gate (recorded by busi.py, or in the gate's trials)."""
    value = entry.get("val_dice_before_gate")
    if value is None:
        value = entry["postprocessing"]["unsure_trials"]["1"]["dice_before"]
    return float(value)


def fold_entries(path: Path) -> list[dict[str, Any]]:
    record = json.loads(path.read_text(encoding="utf-8"))
    return [
        {**entry, "provenance": entry.get("provenance", record["provenance"])}
        for entry in record["segmentation"]["folds"]
    ]


def summary(entry: dict[str, Any]) -> dict[str, Any]:
    """What the results file shows per fold: the validation figures that decide, the test figures that do not."""
    return {
        "fold": entry["fold"],
        "image_pixels": entry.get("image_pixels"),
        "patch_size": entry.get("patch_size"),
        "flip_axes": entry.get("flip_axes"),
        "max_rotation_degrees": entry.get("max_rotation_degrees"),
        "filters": entry.get("filters"),
        "res_block": entry.get("res_block"),
        "val_dice_before_gate": val_before_gate(entry),
        "val_dice_after_gate": entry.get("val_dice"),
        "test_dice": entry["dice"],
        "test_dice_lesion_images": entry.get("dice_lesion_images"),
        "test_dice_without_gate": (entry.get("ablation_without_unsure_gate") or {}).get("dice"),
        "training": entry.get("training"),
        "provenance": entry.get("provenance"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screen", type=Path, nargs="+", required=True, help="fold-0 busi.py results, one per setting")
    parser.add_argument("--folds", type=Path, nargs="*", default=[], help="the chosen setting's other folds")
    parser.add_argument("--reference", type=Path, default=RESULTS / "busi.json", help="the run of record")
    parser.add_argument("--results", type=Path, default=RESULTS / "busi_whole_image.json")
    parser.add_argument("--replace", action="store_true", help="on a five-fold win, make it the run of record")
    parser.add_argument("--rule", choices=sorted(RULES), default="whole-image", help="which fixed rule this applies")
    args = parser.parse_args()

    reference = json.loads(args.reference.read_text(encoding="utf-8"))
    ref_folds = {f["fold"]: f for f in reference["segmentation"]["folds"]}
    ref_val = {k: val_before_gate(f) for k, f in sorted(ref_folds.items())}
    screened = [entry for path in args.screen for entry in fold_entries(path) if entry["fold"] == 0]
    best = max(screened, key=val_before_gate)
    goes_on = val_before_gate(best) > ref_val[0]
    record: dict[str, Any] = {
        "provenance": provenance("busi_whole_image.py"),
        "rule": RULES[args.rule],
        "reference": {"file": str(args.reference.name), "val_dice_before_gate": ref_val},
        "screen": {
            "runs": [summary(e) for e in screened],
            "best_image_pixels": best.get("image_pixels"),
            "best_setting": {
                k: best.get(k) for k in ("image_pixels", "flip_axes", "max_rotation_degrees", "filters", "res_block")
            },
            "goes_on": goes_on,
        },
    }
    if args.folds and not goes_on:  # run beside the screen to save a round: reported, deciding nothing
        record["folds_not_counted"] = [summary(e) for path in args.folds for e in fold_entries(path)]
    if goes_on and args.folds:
        chosen = {0: best} | {e["fold"]: e for path in args.folds for e in fold_entries(path)}
        folds = [chosen[k] for k in sorted(chosen)]
        if sorted(chosen) != sorted(ref_val):
            raise SystemExit(f"five folds needed, got {sorted(chosen)}")
        new_mean = sum(val_before_gate(f) for f in folds) / len(folds)
        ref_mean = sum(ref_val.values()) / len(ref_val)
        adopted = new_mean > ref_mean
        record["five_folds"] = {
            "folds": [summary(f) for f in folds],
            "val_dice_before_gate_mean": new_mean,
            "reference_val_dice_before_gate_mean": ref_mean,
            "adopted": adopted,
            "test_across_folds": {
                "dice": pooled(folds, "dice"),
                "dice_lesion_images": pooled(folds, "dice_lesion_images"),
                "ablation_without_unsure_gate": pooled(
                    [f.get("ablation_without_unsure_gate", {}) for f in folds], "dice"
                ),
            },
        }
        if adopted and args.replace:
            previous = {"segmentation": reference["segmentation"], "provenance": reference["provenance"]}
            if "previous" in reference:  # the chain of earlier records stays whole
                previous["previous"] = reference["previous"]
            reference["segmentation"] = {
                "folds": folds,
                "across_folds": record["five_folds"]["test_across_folds"],
                "chosen_by": RULES[args.rule],
            }
            reference["previous"] = previous
            reference["provenance"] = record["provenance"]
            write_json(args.reference, reference)
    write_json(args.results, record)
    print(json.dumps({k: v for k, v in record.items() if k != "provenance"}, indent=1)[:3000])


if __name__ == "__main__":
    main()
