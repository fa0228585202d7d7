"""LIDC-IDRI lung nodules on CT (issue 13 §2): a 3D nodule segmenter trained on one patient and scored per nodule
on the other, both ways (leave one patient out), with FROC against the readers' consensus (>= 2 of 4 readers).

Two patients and 4 consensus nodules (1 in LIDC-IDRI-0001, 3 in LIDC-IDRI-0003) cannot train or judge a nodule
detector: this proves the CT path (HU floor, lung mask and crop, resampling, the lung window as the model's
normalisation, patch-based 3D U-Net on the segmentation engine, candidates from the probability map, LUNA16 hits,
FROC), and its figure is a pipeline check with its tiny n beside it, not a clinical figure.

Each fold: the training patient goes through the lung CT chain into an MSD folder (its nodule-bearing lung trains,
its other lung validates: ``medsight.data.lidc.write_training_folder``); ``segmentation.TASK.train`` with a
small plan (lung-window normalisation, 64x64x32 patches at 1.25x1.25x2.5 mm, the ``fast`` preset's small
DynUNet, half the patches on a nodule) for a fixed time budget; the test patient's prepared CT is predicted once;
connected components of the nodule probability >= 0.1 inside the lung mask are the candidates. The FROC pools both
test scans (2 scans, 4 nodules). Sensitivities at 0.125-8 FP per scan are MONAI's interpolated FROC points; the
counts behind them (nodules found at the lowest threshold keeping FP per scan at or below the rate) carry exact
Clopper-Pearson 95% intervals, the only interval that means anything at n = 4.

Run (about 10 minutes on 2 cores, under the benchmark lock):
``flock /tmp/medsight_bench.lock env MEDSIGHT_DATA=/work/shared/data MEDSIGHT_THREADS=1 nice -n 19
.venv/bin/python benchmarks/lidc.py --time-budget 200``
Writes ``benchmarks/results/lidc.json`` (``--results`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest
from support.provenance import provenance
from support.seg_record import RESULTS, machine

from medsight import runtime
from medsight.data import lidc
from medsight.data.segmentation import Loaded
from medsight.evaluation import froc, nodules
from medsight.io.atomic import write_json
from medsight.tasks import segmentation
from medsight.tasks.segmentation import SegmentationOptions
from medsight.tasks.segmentation.predict import SegmentationModel
from medsight.transforms import lung_window_normalisation

SPACING = (1.25, 1.25, 2.5)
CANDIDATE_THRESHOLD = 0.1
RATES = (0.5, 1.0, 2.0, 4.0, 8.0)
FOLDS = (("LIDC-IDRI-0001", "LIDC-IDRI-0003"), ("LIDC-IDRI-0003", "LIDC-IDRI-0001"))


def plan_overrides(iterations_per_epoch: int) -> dict[str, Any]:
    """The small CPU plan: fixed so that both folds train the same model on the same budget."""
    return {
        "preset": "fast",
        "target_spacing": list(SPACING),
        "normalisation": lung_window_normalisation(),
        "patch_size": [64, 64, 32],
        "batch_size": 2,
        "iterations_per_epoch": iterations_per_epoch,
        "foreground_oversampling": 0.5,
        "validate_every": 0,
        "optimizer": {"warmup_iterations": 10},
    }


def run_fold(train_id: str, test_id: str, work: Path, args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    started = time.monotonic()
    folder = work / f"train_{train_id}"
    written = lidc.write_training_folder(lidc.read_case(train_id), folder, SPACING)
    plan = work / "plan.json"
    plan.write_text(json.dumps(plan_overrides(args.iterations_per_epoch)))
    bundle = work / f"bundle_{train_id}"
    options = SegmentationOptions(
        seed=args.seed, epochs=args.epochs, time_budget_s=args.time_budget, lr=args.lr, plan=plan, fold=0
    )
    meta = segmentation.TASK.train(str(folder), bundle, options)
    trained = time.monotonic()

    model = runtime.load(bundle)
    assert isinstance(model, SegmentationModel)
    test_case = lidc.read_case(test_id)
    prepared = lidc.prepare(test_case, SPACING)
    mask, probs = model.case(Loaded(test_id, prepared.image[None], None, prepared.spacing, prepared.affine))
    found = nodules.candidates(
        probs[1], prepared.affine, CANDIDATE_THRESHOLD, within=prepared.lung, rule=args.candidate_rule
    )
    truth = test_case.nodules()
    boxes = nodules.nodule_boxes([n.centre_lps for n in truth], [n.diameter_mm for n in truth])
    match = nodules.match_scan(found, boxes)
    inter = float(np.logical_and(mask == 1, prepared.label == 1).sum())
    dice = 2 * inter / max(1.0, float((mask == 1).sum() + (prepared.label == 1).sum()))
    tr = meta["training"]
    record = {
        "train_patient": train_id,
        "test_patient": test_id,
        "n_test_nodules": len(truth),
        "n_candidates": len(found),
        "nodules_found_at_any_score": int(np.sum(match.lesion_best > 0)),
        "voxel_dice_after_postprocessing": round(dice, 4),
        "training": {k: tr.get(k) for k in ("epochs_run", "iterations", "stopped_by", "seconds", "threads")},
        "val_metrics": {"case": written["val"], "trained_on": written["train"], **meta["metrics"]["val"]},
        "per_sample": {
            "test_nodules": [n.to_json() for n in truth],
            "nodule_best_score": [round(float(v), 4) for v in match.lesion_best],
            "false_positive_scores_top10": [round(float(v), 4) for v in sorted(match.fp_scores, reverse=True)[:10]],
            "top_candidates": [c.to_json() for c in found[:10]],
            "postprocessing": meta["postprocessing"],
        },
        "engine": model.engine,
        "seconds": {"train": round(trained - started, 1), "total": round(time.monotonic() - started, 1)},
    }
    return record, match


def exact_ci(k: int, n: int) -> list[float]:
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return [round(float(ci.low), 3), round(float(ci.high), 3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS / "lidc.json")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--time-budget", type=float, default=200.0, help="training seconds per fold")
    parser.add_argument("--epochs", type=int, default=100, help="epochs per fold (the time budget stops it first)")
    parser.add_argument("--iterations-per-epoch", type=int, default=10)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--work", type=Path, help="keep the folders and bundles here (default: a temporary folder)")
    parser.add_argument("--change", default="", help="what changed since the run kept under 'previous'")
    parser.add_argument(
        "--candidate-rule",
        choices=["touching", "centre"],
        default="touching",
        help="keep components touching the lung mask (default) or centred in it (the first run's rule)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.monotonic()
    lidc.locate(verify=True)

    folds: list[dict[str, Any]] = []
    matches = []
    with tempfile.TemporaryDirectory(prefix="medsight_lidc_") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for train_id, test_id in FOLDS:
            record, match = run_fold(train_id, test_id, work, args)
            folds.append(record)
            matches.append(match)

    metrics = froc.froc_metrics(matches)
    counts = {}
    for rate in RATES:
        k, n, threshold = nodules.found_at(matches, rate)
        counts[f"{rate:g}"] = {"found": k, "of": n, "threshold": round(threshold, 4), "exact_95ci": exact_ci(k, n)}
    record: dict[str, Any] = {
        "provenance": provenance("lidc.py", seeds=[args.seed]),
        "machine": machine(),
        "what": "3D nodule segmenter as detector, leave-one-patient-out over 2 LIDC-IDRI patients; per-nodule FROC "
        "against the consensus of >= 2 of 4 readers (LUNA16 hit: candidate centre within the nodule's radius)",
        "honesty": "n = 2 test scans and 4 consensus nodules (1 + 3), each model trained on one lung of one patient "
        "for minutes on a CPU: a check that the CT pipeline runs end to end, not a measure of clinical quality",
        "settings": {
            "spacing_mm": list(SPACING),
            "plan_overrides": plan_overrides(args.iterations_per_epoch),
            "candidate_threshold": CANDIDATE_THRESHOLD,
            "candidate_rule": args.candidate_rule,
            "candidates_within": "components touching the lung mask (below -400 HU, not outside air, 2 largest "
            "components, closed 5 voxels)",
            "time_budget_s_per_fold": args.time_budget,
            "lr": args.lr,
            "nodule_diameter": "sphere of the consensus volume",
        },
        "n": {"test_scans": len(matches), "consensus_nodules": int(sum(len(m.lesion_best) for m in matches))},
        "froc": {
            **{k: (None if np.isnan(v) else round(float(v), 4)) for k, v in metrics.items()},
            "note": "MONAI's interpolated FROC over the 2 pooled test scans; cpm = mean at 1/8-8 FP per scan",
        },
        "found_at_fp_per_scan": counts,
        "folds": folds,
        "wall_s": round(time.monotonic() - started, 1),
    }
    if args.results.is_file():  # keep the figures this run replaces, with their provenance and settings
        earlier = json.loads(args.results.read_text())
        kept = {k: earlier.get(k) for k in ("provenance", "settings", "froc", "found_at_fp_per_scan")}
        record["previous"] = [kept, *earlier.get("previous", [])]
        record["change_from_previous"] = args.change
    write_json(args.results, record)
    for f in folds:
        best = f["per_sample"]["nodule_best_score"]
        print(f"train {f['train_patient']} -> test {f['test_patient']}: best score per nodule {best}")
    print(", ".join(f"sens@{r:g}fp {metrics[f'sens@{r:g}fp']:.2f}" for r in RATES), f"cpm {metrics['cpm']:.3f}")
    print(f"results: {args.results}")


if __name__ == "__main__":
    main()
