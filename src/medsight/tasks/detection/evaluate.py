"""Score a detection bundle on a split: FROC/CPM (lesions, LUNA16), AP@0.5 per class and mAP (COCO), image-level
AUC, each with a 95% bootstrap CI over images; the per-image uncertainty and how well it ranks images with errors;
the subgroup audit (mini-MIAS tissue); metrics.json, detections.json and the card.

Inference goes through :class:`~medsight.tasks.detection.predict.DetectionModel`, the path ``medsight predict``
and the service use.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from medsight.data.fingerprint import case_hashes, check_leakage
from medsight.data.splits import recorded_split_seed
from medsight.errors import MedsightError
from medsight.evaluation.card import card_record, write_evaluation
from medsight.evaluation.froc import FP_RATES, ImageMatch, detection_metrics, froc_curve, image_errors, match_image
from medsight.evaluation.metrics import bootstrap
from medsight.evaluation.subgroups import audit
from medsight.tasks.detection import uncertainty
from medsight.tasks.detection.data import DetectionData, DetectionItem, load_detection, read_items, split_digest
from medsight.tasks.detection.network import Detections
from medsight.training.bundle import load_bundle

log = logging.getLogger("medsight")

DEFINITIONS: dict[str, Any] = {
    "froc_hit": {
        "lesions": "detection centre strictly within the lesion radius of the lesion centre (LUNA16; the lesion "
        "circle is the one inscribed in its box, i.e. mini-MIAS's centre and radius); several detections on one "
        "lesion are one TP and no FP",
        "objects": "detection centre inside the ground-truth box; several detections on one box are one TP and no FP",
    },
    "sensitivity_at_fp": "sensitivity at r FP/image interpolated linearly along the FROC curve "
    "(monai.metrics.compute_froc_curve_data / compute_froc_score)",
    "cpm": "mean sensitivity at " + ", ".join(f"{r:g}" for r in FP_RATES) + " FP per image (LUNA16)",
    "ap50": "COCO AP at IoU 0.5 (monai.apps.detection.metrics matching_batch + COCOMetric: greedy matching in "
    "score order, duplicates are FPs, 101 recall points, top 100 detections per image); mAP = mean over classes "
    "with ground truth",
    "image_auc": "ROC AUC of the highest box score per image for 'any lesion'",
    "image_errors": "misses + false positives of an image at the operating point (FROC hit for lesions, COCO "
    "match at IoU 0.5 for objects)",
}


def criterion(kind: str) -> str:
    """The FROC hit test for a kind of data: circles (mini-MIAS lesions: centre + radius) or boxes."""
    return "radius" if kind == "lesions" else "centre"


def match(dets: list[Detections], items: list[DetectionItem], kind: str) -> list[ImageMatch]:
    """Each image's detections matched to its ground truth once (FROC hit by :func:`criterion`, COCO match)."""
    return [
        match_image(d.boxes, d.scores, it.boxes, d.labels, it.labels, criterion=criterion(kind))
        for d, it in zip(dets, items, strict=True)
    ]


def errors_at(matches: list[ImageMatch], threshold: float, kind: str) -> np.ndarray:
    """Misses + false positives of every image at the operating point."""
    return np.asarray([image_errors(m, threshold, froc=kind == "lesions") for m in matches], int)


def operating_point(matches: list[ImageMatch], kind: str) -> dict[str, Any]:
    """Lesions: the lowest score threshold with ≤ 1 FP per image on validation. Objects: 0.5."""
    if kind != "lesions":
        return {"method": "fixed", "threshold": 0.5, "chosen_on": "none"}
    thr, fppi, sens = froc_curve(matches)
    ok = np.flatnonzero((fppi <= 1.0) & np.isfinite(thr))
    if len(ok) == 0:
        return {"method": "<=1 FP per image on val", "threshold": 0.5, "chosen_on": "val (no threshold qualified)"}
    i = int(ok[0])  # thresholds ascend: the first that qualifies is the lowest
    return {
        "method": "<=1 FP per image on val",
        "threshold": float(thr[i]),
        "val_sensitivity": float(sens[i]),
        "val_fp_per_image": float(fppi[i]),
        "chosen_on": "val",
    }


def align_labels(data: DetectionData, names: list[str], spec: str) -> DetectionData:
    """The data's classes matched to the bundle's label names by name, never by position: the same names in another
    order are renumbered to the bundle's order; any other difference (a class the detector was not trained on, or
    one it was trained on missing from the data) is refused, listing both."""
    if list(data.class_names) == list(names):
        return data
    if sorted(data.class_names) != sorted(names) or len(set(names)) != len(names):
        only_data = [n for n in data.class_names if n not in names]
        only_bundle = [n for n in names if n not in data.class_names]
        raise MedsightError(
            f"the data's categories {list(data.class_names)} are not the bundle's labels {list(names)} "
            f"(matched by name; only in the data: {only_data}, only in the bundle: {only_bundle}): "
            "a detector is scored only on the classes it was trained on",
            spec,
        )
    to_bundle = np.asarray([names.index(n) for n in data.class_names], int)
    items = [replace(it, labels=to_bundle[np.asarray(it.labels, int)]) for it in data.items]
    return replace(data, items=items, class_names=list(names))


def evaluate(bundle_path: Path, spec: str, split: str, out: Path, n_boot: int) -> dict[str, Any]:
    """Metrics with 95% bootstrap CIs over images (stratified by 'has any box'), written with the model card."""
    from medsight.tasks.detection import card
    from medsight.tasks.detection.predict import DetectionModel

    bundle = load_bundle(bundle_path)
    model = DetectionModel(bundle)
    data = align_labels(load_detection(spec), list(bundle.label_names), spec)
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
    dets, unc = model.findings(prepared.images, prepared.scales)  # both passes: the image and the second view
    seconds = time.monotonic() - started
    matches = match(dets, items, data.kind)
    names = bundle.label_names
    lesions = data.kind == "lesions"
    has = np.asarray([len(it.boxes) > 0 for it in items], int)
    strata = has if len(np.unique(has)) == 2 else None
    metrics = bootstrap(
        lambda ix: detection_metrics([matches[i] for i in ix], names, froc=lesions), len(items), strata, n_boot
    )
    op = bundle.meta["operating_point"]
    thr = float(op["threshold"])
    errors = errors_at(matches, thr, data.kind)
    flags = [uncertainty.flag(float(u), model.review_threshold) for u in unc]
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
        "inference_seconds_per_image": seconds / max(len(items), 1),  # both passes (findings and uncertainty)
        "test_time_flip": bundle.meta.get("test_time_flip"),
        "uncertainty": {
            "method": uncertainty.method(model.plan.flip),
            "review_rule": (bundle.meta.get("uncertainty") or {}).get("rule"),
            **uncertainty.ranking(unc, errors, model.review_threshold, n_boot),
        },
        "definitions": {
            **DEFINITIONS,
            "froc_hit": DEFINITIONS["froc_hit"]["lesions" if lesions else "objects"],
            "ci95": f"percentile bootstrap over images ({n_boot} resamples, stratified by 'has any box'; the "
            "uncertainty figures unstratified)",
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
            "errors": int(e),
            "uncertainty": float(u),
            "flag_for_review": f,
        }
        for it, d, e, u, f in zip(items, dets, errors, unc, flags, strict=True)
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
