"""mini-MIAS: a seed ensemble of lesion detectors against its members, decided on validation.

Run (after training the members with ``benchmarks/mias.py --seed S --out DIR_S``):
``MEDSIGHT_DATA=../shared/data .venv/bin/python benchmarks/mias_ensemble.py DIR_0/bundle DIR_1/bundle DIR_2/bundle``

Each member reports its findings as ``medsight predict`` would (its own test-time flip choice, all boxes above the
detector's score floor); the ensemble fuses them per image (:func:`medsight.tasks.detection.fusion.fused`). The rule,
announced in docs/benchmarks.md before the members were trained: the ensemble is kept only if its validation CPM
beats the best member's by more than 0.002. The operating point is fitted on validation (<= 1 FP per image) as
training fits a single detector's. Test figures (95% bootstrap CIs over images, stratified by "has a lesion") are
computed for the ensemble and every member and decide nothing. Writes
``benchmarks/results/mias_ensemble.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from support.provenance import provenance

from medsight.data.splits import recorded_split_seed
from medsight.evaluation.froc import detection_metrics
from medsight.evaluation.metrics import bootstrap
from medsight.io.atomic import write_json
from medsight.tasks.detection.data import load_detection, read_items, split_digest
from medsight.tasks.detection.evaluate import DEFINITIONS, match, operating_point
from medsight.tasks.detection.fusion import fused
from medsight.tasks.detection.predict import DetectionModel
from medsight.tasks.detection.test_time import TIE  # the ensemble must win on validation by the flip's margin
from medsight.training.bundle import load_bundle

RESULTS = Path(__file__).resolve().parent / "results" / "mias_ensemble.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("bundles", nargs="+", type=Path, help="the members' bundles (trained on the same split)")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("MEDSIGHT_DATA", "../shared/data")) / "mini_mias")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--results", type=Path, default=RESULTS, help="results JSON to write")
    ap.add_argument(
        "--member-results",
        nargs="*",
        type=Path,
        default=[],
        help="the members' mias.py results files, in the order of the bundles: their command, commit, date and "
        "training are recorded beside the ensemble's",
    )
    args = ap.parse_args()
    bundles = [load_bundle(b) for b in args.bundles]
    if args.member_results and len(args.member_results) != len(bundles):
        raise SystemExit("give one --member-results file per bundle, in the same order")
    trained = [json.loads(p.read_text()) for p in args.member_results] or [None] * len(bundles)
    models = [DetectionModel(b) for b in bundles]
    data = load_detection(str(args.data))
    seeds = {recorded_split_seed(b.meta) for b in bundles}
    if len(seeds) != 1:
        raise SystemExit(f"the members were trained on different splits (split seeds {sorted(seeds)})")
    parts = data.split(seeds.pop())
    sizes = {m.plan.image_size for m in models}
    if len(sizes) != 1:
        raise SystemExit(f"the members take different input sizes: {sorted(sizes)}")
    size = sizes.pop()
    names = bundles[0].label_names
    per_split: dict[str, dict[str, Any]] = {}
    for split in ("val", "test"):
        idx = parts[split]
        for b in bundles:
            recorded = b.meta["data"].get("split_digest", {}).get(split)
            if recorded != split_digest(data.items, idx):
                raise SystemExit(f"{b.path}: its {split} split differs from this data's")
        prepared = read_items([data.items[i] for i in idx], size)
        members = [m.findings(prepared.images, prepared.scales)[0] for m in models]  # as predict reports them
        per_split[split] = {
            "items": prepared.items,
            "members": [match(d, prepared.items, data.kind) for d in members],
            "ensemble": match(fused(members), prepared.items, data.kind),
        }
    val = per_split["val"]
    member_val = [detection_metrics(m, names)["cpm"] for m in val["members"]]
    ensemble_val = detection_metrics(val["ensemble"], names)["cpm"]
    best = float(np.nanmax(member_val))
    kept = bool(ensemble_val > best + TIE)
    op = operating_point(val["ensemble"], data.kind)
    test = per_split["test"]
    items = test["items"]
    has = np.asarray([len(it.boxes) > 0 for it in items], int)

    def metrics(matches: list[Any]) -> dict[str, Any]:
        return bootstrap(lambda ix: detection_metrics([matches[i] for i in ix], names), len(items), has, args.bootstrap)

    ensemble_test = metrics(test["ensemble"])
    member_test = [metrics(m) for m in test["members"]]
    record = {
        "benchmark": "mias_ensemble",
        **provenance("mias_ensemble.py", ("src/medsight",)),
        "members": [
            {
                "bundle": str(b.path),
                "seed": b.meta["training"]["seed"],
                "best_epoch": b.meta["training"].get("best_epoch"),
                "epochs_run": b.meta["training"].get("epochs_run"),
                "test_time_flip": (b.meta.get("test_time_flip") or {}).get("kept"),
                "val_cpm": round(float(v), 4),
                **(
                    {
                        k: r[k]
                        for k in ("command", "commit", "date", "load_average_1min", "settings", "training", "train_s")
                        if k in r
                    }
                    if r
                    else {}
                ),
            }
            for b, v, r in zip(bundles, member_val, trained, strict=True)
        ],
        "decision": {
            "rule": f"keep the ensemble only if its validation CPM beats the best member's by more than {TIE:g} "
            "(announced in docs/benchmarks.md before the members were trained)",
            "ensemble_val_cpm": round(float(ensemble_val), 4),
            "best_member_val_cpm": round(best, 4),
            "kept": kept,
            "decided_on": "val",
        },
        "operating_point": op,
        "fusion": "medsight.tasks.detection.fusion.fuse: one-to-one pairing (Hungarian on IoU >= 0.3) into clusters, "
        "score-weighted mean box, score = sum of the members' scores / number of members",
        "test": {"n_images": len(items), "n_lesions": int(sum(len(it.boxes) for it in items))},
        "metrics": ensemble_test,
        "member_metrics": member_test,
        "definitions": {**DEFINITIONS, "froc_hit": DEFINITIONS["froc_hit"]["lesions"]},
        "ci95": f"percentile bootstrap over test images ({args.bootstrap} resamples, stratified by 'has a lesion')",
    }
    write_json(args.results, record)
    print(
        f"validation CPM: members {[round(float(v), 4) for v in member_val]}, ensemble {ensemble_val:.4f} -> "
        f"{'kept' if kept else 'not kept'}"
    )
    for label, m in [("ensemble", ensemble_test)] + [(f"member {i}", s) for i, s in enumerate(member_test)]:
        print(
            label
            + ": "
            + ", ".join(
                f"{k} {v['value']:.3f}"
                for k, v in m.items()
                if k in ("sens@0.5fp", "sens@1fp", "sens@2fp", "cpm", "image_auc")
            )
        )
    print(f"results: {args.results}")


if __name__ == "__main__":
    main()
