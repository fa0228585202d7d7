"""Several seeds per fold as one model for BUSI's run of record: the decisions of the rules fixed in
docs/benchmarks.md before their runs (two seeds, then three), made on the validation folds alone, and, if the
ensemble wins, its folds scored once on test.

For each fold, the run of record's bundle (seed 0, ``busi.py --out``/foldK) and the same command's bundles with
``--seed 1`` (and ``--seed 2``) are combined by :func:`medsight.tasks.segmentation.ensemble.combine` into one network
that averages their softmax probabilities, predicting mirrored as the run of record does; its post-processing (the
unsure-lesion gate included) is chosen on the validation fold as training chooses it. The run of record's own figure
(``--baseline-seeds``: 1, the mirrored single model; 2, the two-seed ensemble) is computed again by the same code on
the same images. The decisive figure is the five-fold mean validation Dice before the gate; a tie keeps the record.

Run: ``.venv/bin/python benchmarks/busi_seed_ensemble.py --fold-dirs DIR0 ... DIR4 --seed-dirs S1_0 ... S1_4
[--seed-dirs S2_0 ... S2_4 --baseline-seeds 2] [--replace] [--results R.json]``. Writes
``benchmarks/results/busi_seed_ensemble.json``; with ``--replace`` and a win, the ensemble's folds become the run of
record in ``--reference`` (the old one under ``previous``).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch
from busi_tta import check_is_record, decide_ways, fold_of, install_record, scored_folds, test_summary
from support.provenance import provenance
from support.seg_record import RESULTS

from medsight import config
from medsight.io.atomic import write_json
from medsight.tasks.segmentation.ensemble import combine
from medsight.training.bundle import Bundle, load_bundle

RULES = {
    2: "docs/benchmarks.md, 'BUSI: two seeds per fold, one ensemble', fixed on 29 November 2026 before the runs: per "
    "fold, the run of record's bundle (seed 0) and the same command's with seed 1, their softmax probabilities "
    "averaged, predicting mirrored; the post-processing chosen on the validation fold as training chooses it; the "
    "ensemble replaces the run of record only if its five-fold mean validation Dice before the unsure-lesion gate "
    "beats the run of record's mirrored figure computed the same way",
    3: "docs/benchmarks.md, 'BUSI: a third seed', fixed on 29 November 2026 before the runs: per fold, seeds 0, 1 and "
    "2 of the run of record's command, their softmax probabilities averaged, predicting mirrored; the post-processing "
    "chosen on the validation fold; the ensemble replaces the run of record only if its five-fold mean validation "
    "Dice before the unsure-lesion gate beats the record's (as the two-seed rule left it) computed the same way",
}


def before_gate(meta: dict[str, Any]) -> dict[str, float]:
    """A bundle's validation Dice before and after the unsure-lesion gate, as its post-processing recorded them."""
    return {
        "val_dice_before_gate": float(meta["postprocessing"]["unsure_trials"]["1"]["dice_before"]),
        "val_dice_after_gate": float(meta["metrics"]["val"]["dice"]),
    }


def single_mirrored(fold_dir: Path, bundle: Bundle) -> dict[str, float]:
    """The run of record's single model (its seed-0 ``bundle``) on its validation fold, predicting mirrored."""
    way = decide_ways(fold_dir, bundle, (("mirrored", True),))["mirrored"]
    return {k: way[k] for k in ("val_dice_before_gate", "val_dice_after_gate")}


def members_of(fold_dir: Path, seed_dirs: list[Path]) -> list[Path]:
    """The fold's members in seed order: the run of record's bundle (seed 0), then seed 1, 2, ... (refused if not)."""
    members = [fold_dir / "seg_bundle"]
    for seed, folder in enumerate(seed_dirs, start=1):
        bundle = load_bundle(folder / "seg_bundle")
        if fold_of(folder) != fold_of(fold_dir) or bundle.meta["training"]["seed"] != seed:
            raise SystemExit(f"{folder}: not the seed-{seed} bundle of fold {fold_of(fold_dir)}")
        members.append(bundle.path)
    return members


def ensemble_of(fold_dir: Path, members: list[Path]) -> tuple[Path, dict[str, float]]:
    """The fold's ensemble of ``members`` (a bundle beside the run of record's) and its validation figures."""
    out = fold_dir / f"seg_bundle_seeds{len(members)}"
    return out, before_gate(combine(members, str(fold_dir / "data"), out, True))


def member_run(path: Path) -> dict[str, Any]:
    """A further seed's own run as ``busi.py`` recorded it (one model, one pass): reported, deciding nothing."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    (fold,) = doc["segmentation"]["folds"]
    return {
        "fold": fold["fold"],
        "seed": doc["provenance"].get("seeds", [None])[0],
        "iterations": fold["training"]["iterations"],
        "val_dice_before_gate": fold.get("val_dice_before_gate"),
        "test_dice": fold["dice"]["value"],
        "test_dice_lesion_images": fold["dice_lesion_images"]["value"],
        "provenance": doc["provenance"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fold-dirs", type=Path, nargs="+", required=True, help="the run of record's foldK folders")
    parser.add_argument(
        "--seed-dirs",
        type=Path,
        nargs="+",
        action="append",
        required=True,
        help="busi.py foldK folders of one more seed (1, then 2 if given again)",
    )
    parser.add_argument(
        "--baseline-seeds", type=int, default=1, help="seeds in the run of record: 1 (single model) or 2 (ensemble)"
    )
    parser.add_argument("--reference", type=Path, default=RESULTS / "busi.json", help="the run of record")
    parser.add_argument("--results", type=Path, default=RESULTS / "busi_seed_ensemble.json")
    parser.add_argument("--replace", action="store_true", help="on a win, make the ensemble folds the run of record")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument(
        "--member-runs", type=Path, nargs="*", default=[], help="busi.py results of the further seeds (reported only)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(config.num_threads())
    n_seeds = 1 + len(args.seed_dirs)
    if n_seeds not in RULES or not 1 <= args.baseline_seeds < n_seeds:
        raise SystemExit(f"{n_seeds} seeds against a record of {args.baseline_seeds}: no rule fixed for that")

    reference = json.loads(args.reference.read_text(encoding="utf-8"))
    record_folds = {f["fold"]: f for f in reference["segmentation"]["folds"]}
    by_fold = [{fold_of(d): d for d in group} for group in args.seed_dirs]
    decided: dict[int, dict[str, Any]] = {}
    bundles: dict[int, tuple[Path, list[Path]]] = {}
    for fold_dir in args.fold_dirs:
        fold = fold_of(fold_dir)
        record_bundle = load_bundle(fold_dir / "seg_bundle")
        check_is_record(fold_dir, record_bundle, record_folds.get(fold))
        if any(fold not in group for group in by_fold):
            raise SystemExit(f"fold {fold} is missing from a --seed-dirs list")
        members = members_of(fold_dir, [group[fold] for group in by_fold])
        path, candidate = ensemble_of(fold_dir, members)
        if args.baseline_seeds == 1:
            record_way = single_mirrored(fold_dir, record_bundle)
        else:
            record_way = ensemble_of(fold_dir, members[: args.baseline_seeds])[1]
        bundles[fold] = (path, members)
        decided[fold] = {"record": record_way, "ensemble": candidate}
    if sorted(decided) != sorted(record_folds):
        raise SystemExit(f"the run of record's folds are needed, got {sorted(decided)}")
    means = {
        way: sum(d[way]["val_dice_before_gate"] for d in decided.values()) / len(decided)
        for way in ("record", "ensemble")
    }
    adopted = means["ensemble"] > means["record"]
    seeds = list(range(n_seeds))
    record: dict[str, Any] = {
        "provenance": provenance("busi_seed_ensemble.py", seeds=seeds),
        "rule": RULES[n_seeds],
        "record_seeds": args.baseline_seeds,
        "ensemble_seeds": seeds,
        "validation": {
            "folds": [{"fold": k, **v} for k, v in sorted(decided.items())],
            "val_dice_before_gate_mean": means,
        },
        "adopted": adopted,
        "member_runs": [member_run(path) for path in args.member_runs],
    }
    if adopted:
        tested = {
            fold: (bundles[fold][0], fold_dir, decided[fold]["ensemble"], fold_dir / f"seg_eval_seeds{n_seeds}")
            for fold_dir in args.fold_dirs
            for fold in [fold_of(fold_dir)]
        }
        extra = {"test_time_flips": True, "ensemble_seeds": seeds}
        folds, across = scored_folds(tested, record_folds, record["provenance"], args.bootstrap, extra)
        for entry in folds:  # every member's training, as its bundle records it
            entry["members_training"] = [
                {k: load_bundle(m).meta["training"].get(k) for k in ("seed", "iterations", "seconds", "threads")}
                for m in bundles[entry["fold"]][1]
            ]
        record["test_across_folds"] = across
        record["test_folds"] = test_summary(folds)
        if args.replace:
            install_record(args.reference, reference, folds, across, RULES[n_seeds], record["provenance"])
    write_json(args.results, record)
    print(json.dumps({k: v for k, v in record.items() if k not in ("provenance", "test_folds")}, indent=1)[:3000])


if __name__ == "__main__":
    main()
