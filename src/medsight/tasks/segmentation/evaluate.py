"""Evaluation: Dice, HD95 and NSD per class and case with 95% bootstrap CIs over cases, every case counted (empty
references and predictions scored and counted by situation, see ``metrics.py``); for binary tasks also pixel AUC, F1,
sensitivity, specificity and accuracy inside the ROI, and a second observer scored the same way; and the per-case
test-time-mirroring uncertainty with how well it ranks bad cases first, flagged against the threshold the bundle
chose on its validation cases (``uncertainty.py``; never re-chosen here). Inference goes through
:class:`SegmentationModel`, the path ``medsight predict`` and the service use."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from medsight.data.case_attributes import case_attributes
from medsight.data.fingerprint import case_hash, check_leakage
from medsight.errors import MedsightError
from medsight.evaluation.card import card_record, subgroup_section, write_evaluation
from medsight.evaluation.subgroups import audit_cases
from medsight.tasks.segmentation import card, uncertainty
from medsight.tasks.segmentation import metrics as segm
from medsight.tasks.segmentation.data import SegmentationDataset, folds_for, load_case, open_dataset
from medsight.tasks.segmentation.overlay import view
from medsight.tasks.segmentation.predict import SegmentationModel
from medsight.training.bundle import Bundle, load_bundle


def split_ids(bundle: Bundle, ds: SegmentationDataset, split: str) -> list[str]:
    """The case ids of ``split``; the test split must not hold a case the bundle was trained or selected on."""
    data = bundle.meta["data"]
    if split == "test":
        ids = [c.id for c in ds.test] if ds.official_test else list(folds_for(ds).test)
        if Path(data["root"]).resolve() == ds.root.resolve():
            seen = set(data["train_ids"]) | set(data["val_ids"])
            leaked = sorted(set(ids) & seen)
            if leaked:
                raise MedsightError(f"{len(leaked)} test case(s) were used in training, e.g. {leaked[0]}", ds.root)
        return ids
    if split in ("val", "validation"):
        return list(data["val_ids"])
    raise MedsightError(f"unknown split {split!r} for segmentation (use test or val)")


def _generic(name: str) -> bool:
    """A class name that says nothing of what the class is (inferred from label values): it matches any name."""
    return name.strip().lower() in ("foreground", "") or re.fullmatch(r"label_\d+", name.strip().lower()) is not None


def check_scorable(names: list[str], spatial_dims: int, ds: SegmentationDataset) -> None:
    """Refuse data the model cannot score, before any inference: another dimensionality, class values the model
    does not have, or classes that mean something else (matched by name where both sides name them: a data set
    numbering anterior and posterior the other way round was scored by index under the model's names)."""
    if ds.spatial_dims != spatial_dims:
        raise MedsightError(f"a {ds.spatial_dims}D data set, but the model segments {spatial_dims}D images", ds.root)
    declared = ", ".join(f"{k}={v}" for k, v in sorted(ds.labels.items()))
    model = ", ".join(f"{k}={v}" for k, v in enumerate(names))
    if max(ds.labels) >= len(names):
        raise MedsightError(
            f"the data declare classes {declared}, and the model knows {model}: it cannot score classes it does not "
            "have",
            ds.root,
        )
    for k, name in ds.labels.items():
        if k == 0 or _generic(name) or _generic(names[k]):
            continue
        if name.strip().lower() != names[k].strip().lower():
            raise MedsightError(
                f"class {k} is {name!r} in the data but {names[k]!r} in the model: the classes must mean the same "
                f"(data: {declared}; model: {model})",
                ds.root,
            )


def evaluate(bundle_path: Path, data: str, split: str, out: Path, n_boot: int) -> dict[str, Any]:
    """Score the bundle on ``split`` of ``data``; write metrics.json, card.html and card.json to ``out``."""
    bundle = load_bundle(bundle_path)
    model = SegmentationModel(bundle)
    ds = open_dataset(data)
    names = bundle.label_names
    n_classes = len(names)
    check_scorable(names, model.plan.spatial_dims, ds)
    ids = split_ids(bundle, ds, split)
    if not ids:
        raise MedsightError(f"the {split} split is empty", ds.root)
    hashes = [case_hash(load_case(ds, ds.case(c)).image) for c in tqdm(ids, desc="hash", disable=len(ids) < 8)]
    leakage = check_leakage(bundle.meta["data"], hashes, split, data)  # before any inference
    tol = float(model.plan.nsd_tolerance)
    per_case: list[dict[str, Any]] = []
    arrays: list[dict[str, np.ndarray]] = []
    binary = n_classes == 2
    pixels, observer = segm.PixelCounts(), segm.PixelCounts()
    observer_cases: list[dict[str, np.ndarray]] = []
    views: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    spread: list[float] = []
    review = bundle.meta.get("uncertainty") or {}
    threshold = review.get("threshold")
    passes = 0
    started = time.monotonic()
    for cid in tqdm(ids, desc="evaluate", unit="case"):
        case = load_case(ds, ds.case(cid))
        if case.label is None:
            raise MedsightError("case has no label to score against", ds.case(cid).images[0])
        if int(case.label.max(initial=0)) >= n_classes:
            raise MedsightError(
                f"the label holds class {int(case.label.max())}, and the model knows classes 0..{n_classes - 1} "
                f"({', '.join(names)})",
                ds.case(cid).label,
            )
        mirrors = uncertainty.Mirrors()  # on by default here: every case gets its uncertainty
        mask, probs = model.case(case, mirrors)
        passes = len(mirrors.masks)
        spread.append(uncertainty.disagreement(mirrors, n_classes))
        m = segm.case_metrics(mask, case.label, n_classes, case.spacing, tol)
        arrays.append(m)
        entry: dict[str, Any] = {"id": cid, "uncertainty": spread[-1]}
        entry["flag_for_review"] = uncertainty.flag(spread[-1], threshold)
        for k, name in enumerate(names[1:]):
            entry[name] = {key: _num(m[key][k]) for key in segm.METRICS} | {"situation": str(m["situation"][k])}
        if binary:
            score = probs[1]
            if case.roi is not None:
                score = np.where(case.roi, score, 0.0)
            pixels.add(score, case.label, case.roi)
            if case.second is not None:
                observer.add(case.second.astype(np.float64), case.label, case.roi)
                observer_cases.append(segm.case_metrics(case.second, case.label, n_classes, case.spacing, tol))
        per_case.append(entry)
        views.append(view(case.image, case.label, mask))
    metrics, per_class = segm.summarise(arrays, names[1:], n_boot)
    unit = "mm" if ds.spatial_dims == 3 else "pixels"
    ranked = uncertainty.ranking(spread, [segm.case_dice(a) for a in arrays], threshold, n_boot)
    chosen = (
        f"{review['decided_on']} at training: {review['rule']}"
        if "decided_on" in review
        else "none: the bundle has no review threshold (trained before one was chosen on validation); retrain"
    )
    ranked |= {"method": uncertainty.METHOD, "passes": passes, "threshold_from": chosen}
    result: dict[str, Any] = {
        "split": split,
        "n": len(ids),
        "data": ds.name,
        "bundle": str(bundle_path),
        "leakage": leakage,
        "labels": names,
        "engine": model.engine,
        "seconds": round(time.monotonic() - started, 1),
        "metrics": metrics,
        "per_class": per_class,
        "case_situations": segm.count_situations(arrays, names[1:]),
        "uncertainty": ranked,
        "per_case": per_case,
        "definitions": {
            "dice": "mean over all cases of the mean over foreground classes (MONAI DiceMetric); a class absent from "
            "reference and prediction scores 1 (true negative), present in only one of them 0",
            "hd95": f"95th percentile Hausdorff distance in {unit} (MONAI HausdorffDistanceMetric); a class present in "
            "only one of reference and prediction (a miss or a false positive) scores the image diagonal as a "
            "penalty, one absent from both 0",
            "nsd": f"normalised surface Dice at tolerance {tol:g} {'mm' if ds.spatial_dims == 3 else 'pixel'}"
            " (MONAI SurfaceDiceMetric); 0 for a miss or a false positive, 1 for a true negative",
            "case_situations": "per class, how many cases had the class in both reference and prediction, in "
            "neither (true_negative), only in the prediction (false_positive) or only in the reference (missed); "
            "every case enters every mean",
            "uncertainty": "per case, 1 - mean Dice between each test-time mirrored pass and their consensus; "
            "spearman_uncertainty_vs_dice < 0 means the uncertain cases are the worse ones; a case is flagged for "
            "review when its uncertainty is above the threshold chosen on the validation cases at training",
            "ci95": f"percentile bootstrap over cases, {n_boot} resamples",
        },
        "postprocessing": {"keep_largest_component": model.keep, "drop_unsure": model.unsure},
    }
    if binary:
        for key, value in pixels.summary(n_boot).items():
            result["metrics"][f"pixel_{key}"] = value
        result["definitions"]["pixel"] = (
            "pixels pooled over all images, inside the region-of-interest mask when the data have one (DRIVE's FOV);"
            " p(foreground) >= 0.5 for F1, sensitivity, specificity, accuracy"
        )
        if observer.counts:
            om = observer.summary(n_boot)
            om.pop("auc")  # a binary rater has no ROC curve worth the name
            oseg, _ = segm.summarise(observer_cases, names[1:], n_boot)
            result["second_observer"] = {
                "n": len(observer.counts),
                "metrics": {f"pixel_{k}": v for k, v in om.items()} | {k: oseg[k] for k in ("dice", "hd95", "nsd")},
                "note": "the second manual annotation scored against the first, exactly as the model is",
            }
    attributes = case_attributes(ds.root, ids)
    if attributes is not None:  # the data carry group columns (attributes.csv): Dice by group, Holm-corrected gaps
        result["subgroups"] = audit_cases({"dice": np.asarray([segm.case_dice(a) for a in arrays])}, attributes)
    figures = card.case_figures(per_case, views, names)
    sections = card.sections(bundle, result, figures)
    if attributes is not None:
        sections.append(subgroup_section(result["subgroups"]))
    write_evaluation(
        out,
        result,
        figures,
        f"Model card: {bundle.meta['data']['source']} ({ds.spatial_dims}D segmentation)",
        card.intro(bundle, ds.name, split, len(ids), model.engine),
        sections,
        card_record(bundle.meta, {k: v for k, v in result.items() if k != "per_case"}),
    )
    return result


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)
