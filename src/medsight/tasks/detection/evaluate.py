"""Score a detection bundle on a split: FROC/CPM (lesions), AP@0.5 per class and mAP, image-level AUC, each with a
95% bootstrap CI over images; the subgroup audit (mini-MIAS tissue); metrics.json, detections.json and the card.

Inference goes through :class:`~medsight.tasks.detection.predict.DetectionModel`, the path ``medsight predict``
and the service use.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from medsight.data.fingerprint import case_hashes, check_leakage
from medsight.data.splits import recorded_split_seed
from medsight.errors import MedsightError
from medsight.evaluation.card import card_record, write_evaluation
from medsight.evaluation.froc import FP_RATES, ImageMatch, detection_metrics, froc_curve, match_image
from medsight.evaluation.metrics import bootstrap
from medsight.evaluation.subgroups import audit
from medsight.tasks.detection.data import DetectionItem, load_detection, read_items, split_digest
from medsight.tasks.detection.network import Detections
from medsight.training.bundle import load_bundle

log = logging.getLogger("medsight")


def match(dets: list[Detections], items: list[DetectionItem]) -> list[ImageMatch]:
    """Each image's detections matched to its ground truth once (FROC hit: centre inside the box)."""
    return [
        match_image(d.boxes, d.scores, it.boxes, d.labels, it.labels, criterion="centre")
        for d, it in zip(dets, items, strict=True)
    ]


def operating_point(matches: list[ImageMatch], kind: str) -> dict[str, Any]:
    """Lesions: the lowest score threshold with ≤ 1 FP per image on validation. Objects: 0.5."""
    if kind != "lesions":
        return {"method": "fixed", "threshold": 0.5, "chosen_on": "none"}
    thr, fppi, sens = froc_curve(matches)
    ok = np.flatnonzero(fppi <= 1.0)
    if len(ok) == 0 or np.all(np.isnan(sens)):
        return {"method": "<=1 FP per image on val", "threshold": 0.5, "chosen_on": "val (no threshold qualified)"}
    i = int(ok[-1])
    return {
        "method": "<=1 FP per image on val",
        "threshold": float(thr[i]),
        "val_sensitivity": float(sens[i]),
        "val_fp_per_image": float(fppi[i]),
        "chosen_on": "val",
    }


def evaluate(bundle_path: Path, spec: str, split: str, out: Path, n_boot: int) -> dict[str, Any]:
    """Metrics with 95% bootstrap CIs over images (stratified by 'has any box'), written with the model card."""
    from medsight.tasks.detection import card
    from medsight.tasks.detection.predict import DetectionModel

    bundle = load_bundle(bundle_path)
    model = DetectionModel(bundle)
    data = load_detection(spec)
    parts = data.split(recorded_split_seed(bundle.meta))
    if split not in parts:
        raise MedsightError(f"unknown split {split!r} (train, val or test)")
    idx = parts[split]
    recorded = bundle.meta["data"].get("split_digest", {}).get(split)
    same_split = recorded == split_digest(data.items, idx)
    if recorded and not same_split:
        log.warning("the %s split differs from the one recorded at training (other data?)", split)
    prepared = read_items([data.items[i] for i in idx], model.plan.image_size)
    leakage = check_leakage(bundle.meta["data"], case_hashes(prepared.images), split, spec)
    items = prepared.items
    started = time.monotonic()
    dets = model.detect(prepared.images, prepared.scales)
    seconds = time.monotonic() - started
    matches = match(dets, items)
    names = bundle.label_names
    lesions = data.kind == "lesions"
    has = np.asarray([len(it.boxes) > 0 for it in items], int)
    strata = has if len(np.unique(has)) == 2 else None
    metrics = bootstrap(
        lambda ix: detection_metrics([matches[i] for i in ix], names, froc=lesions), len(items), strata, n_boot
    )
    op = bundle.meta["operating_point"]
    thr = float(op["threshold"])
    result: dict[str, Any] = {
        "split": split,
        "n": len(items),
        "n_boxes": int(sum(len(it.boxes) for it in items)),
        "data": data.name,
        "task_type": data.kind,
        "bundle": str(bundle_path),
        "labels": names,
        "split_matches_training": bool(same_split) if recorded else None,
        "leakage": leakage,
        "metrics": metrics,
        "operating_point": op,
        "inference_engine": model.engine,
        "inference_seconds_per_image": seconds / max(len(items), 1),
        "definitions": {
            "froc_hit": "detection centre inside the ground-truth box; duplicates on one lesion are not FPs",
            "sensitivity_at_fp": "highest sensitivity with FP/image <= rate (step, no interpolation)",
            "cpm": "mean sensitivity at " + ", ".join(f"{r:g}" for r in FP_RATES) + " FP per image (LUNA16)",
            "ap50": "all-point interpolated AP, greedy matching at IoU >= 0.5, duplicates are FPs",
            "image_auc": "ROC AUC of the highest box score per image for 'any lesion'",
            "ci95": f"percentile bootstrap over images ({n_boot} resamples, stratified by 'has any box')",
        },
    }
    if lesions and len(np.unique(has)) == 2:
        score = np.asarray([m.max_score for m in matches])
        attrs = _attributes(items)
        result["subgroups"] = audit(has, score, (score >= thr).astype(int), attrs) if len(attrs.columns) else {}
    else:
        result["subgroups"] = {}
    figures = card.figures(items, dets, matches, thr, names, lesions)
    result["examples"] = [it.key for it in card.example_items(items)]
    detections = [
        {
            "key": it.key,
            "boxes": np.round(d.boxes, 2).tolist(),
            "scores": np.round(d.scores, 4).tolist(),
            "labels": [names[int(c)] for c in d.labels],
            "truth": np.round(it.boxes, 2).tolist(),
        }
        for it, d in zip(items, dets, strict=True)
    ]
    write_evaluation(
        out,
        result,
        figures,
        f"Model card: {bundle.meta['data']['source']} (detection)",
        card.intro(bundle, data.name, split),
        card.sections(bundle, result, figures),
        card_record(bundle.meta, result),
        extra_json={"detections.json": detections},
    )
    return result


def _attributes(items: list[DetectionItem]) -> Any:
    import pandas as pd

    keys = [k for k in ("tissue", "sex", "age") if all(k in it.attributes for it in items)]
    frame = pd.DataFrame({k: [it.attributes[k] for it in items] for k in keys})
    if "age" in frame:
        frame["age"] = pd.to_numeric(frame["age"], errors="coerce")
    return frame
