"""Evaluate a classification bundle: metrics with 95% bootstrap CIs, calibration, operating point, conformal
coverage and deferral (per label for multi-label models), subgroups and Grad-CAM examples → ``metrics.json``,
``card.html`` and ``card.json``.

Inference runs through the task's warm model (ONNX Runtime), the same path ``medsight predict`` and the service use.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from medsight.data.fingerprint import case_hashes, check_leakage
from medsight.data.splits import recorded_split_seed
from medsight.errors import MedsightError
from medsight.evaluation import selective
from medsight.evaluation.calibration import calibration_report, calibration_target
from medsight.evaluation.card import card_record, write_evaluation
from medsight.evaluation.metrics import (
    N_BOOTSTRAP,
    binary_metrics,
    bootstrap,
    multiclass_metrics,
    multilabel_metrics,
    ordinal_metrics,
)
from medsight.evaluation.subgroups import audit
from medsight.explain.gradcam import overlay
from medsight.explain.sanity import cascading_randomisation
from medsight.tasks.classification import card
from medsight.tasks.classification.data import load_like, published_release
from medsight.tasks.classification.network import (
    ViewAverage,
    members,
    probabilities,
    sanity_layers,
    signed_explainer,
)
from medsight.tasks.classification.network import explain as gradcam_maps
from medsight.tasks.classification.predict import ClassificationModel, decided_labels, positive_index
from medsight.training.bundle import load_bundle

log = logging.getLogger("medsight")


def evaluate(
    bundle_path: Path, spec: str, split: str, out: Path, n_boot: int = N_BOOTSTRAP, positive: str | None = None
) -> dict[str, Any]:
    """Score ``bundle_path`` on ``split`` of ``spec`` and write metrics.json, card.html and card.json to ``out``.

    Binary metrics are for the bundle's positive class, or ``positive`` when given (``--positive``): the decisions
    stay the bundle's, read for that class."""
    bundle = load_bundle(bundle_path)
    model = ClassificationModel(bundle)
    task_type, names = model.task_type, model.label_names
    positive = _positive(bundle.meta, task_type, names, model.operating, positive, bundle_path)
    data = load_like(bundle, spec, seed=recorded_split_seed(bundle.meta))
    declared = getattr(data, "positive", None)
    if declared is not None and positive is not None and declared != positive:  # one of the two is a mistake
        log.warning(
            "the data declare %r as the positive class, the model %r: the binary metrics are for %r (give "
            "--positive %s to score the other)", declared, positive, positive, declared,
        )  # fmt: skip
    part = data.split(split)
    leakage = check_leakage(
        bundle.meta["data"], case_hashes(part.images), split, spec, published=published_release(data)
    )
    labels = part.labels
    logits = model.logits(part.images)
    probs_raw = probabilities(logits, task_type)
    probs = probabilities(logits, task_type, model.temperature)
    operating = model.operating
    strata = labels if task_type != "multilabel" else None
    result: dict[str, Any] = {
        "split": split,
        "n": len(part),
        "data": data.name,
        "task_type": task_type,
        "bundle": str(bundle_path),
        "labels": names,
        "leakage": leakage,
    }
    k = names.index(positive) if positive is not None else None
    result["calibration"] = calibration_effect(task_type, labels, probs_raw, probs, model.temperature, k, n_boot)
    attributes = part.attributes if part.attributes is not None and len(part.attributes.columns) else None
    result["subgroups"] = {}
    if task_type == "binary":
        assert k is not None
        decision = decided_labels(task_type, probs, operating)  # label indices, by the bundle's operating point
        result["positive_class"] = positive
        truth, score, hit = (labels == k).astype(int), probs[:, k], (decision == k).astype(int)
        result["metrics"] = bootstrap(partial(_at_decision, truth, score, hit), len(labels), strata, n_boot)
        result["operating_point"] = {
            **operating,
            "at_0.5": bootstrap(lambda ix: binary_metrics(truth[ix], score[ix], 0.5), len(labels), strata, n_boot),
        }
        if attributes is not None:
            result["subgroups"] = audit(truth, score, hit, attributes)
    elif task_type == "multiclass":
        decision = decided_labels(task_type, probs, operating)  # arg-max, or the ordinal decoding chosen on val
        if "decoding" in operating:  # ordinal grades: quadratic weighted kappa beside AUC and accuracy
            result["ordinal"] = {**bundle.meta.get("ordinal", {}), "decoding": operating["decoding"]}
            result["metrics"] = bootstrap(
                lambda ix: ordinal_metrics(labels[ix], probs[ix], decision[ix]), len(labels), strata, n_boot
            )
        else:
            result["metrics"] = bootstrap(
                lambda ix: multiclass_metrics(labels[ix], probs[ix]), len(labels), strata, n_boot
            )
        result["per_class"] = {
            name: bootstrap(partial(_one_vs_rest, labels, probs, decision, c), len(labels), strata, n_boot)
            for c, name in enumerate(names)
        }
        result["operating_point"] = operating
        if attributes is not None:
            result["subgroups"] = audit(labels, probs, decision, attributes, task_type="multiclass")
    else:
        thresholds = np.asarray(operating["thresholds"])
        decision = (probs >= thresholds).astype(int)
        result["metrics"] = bootstrap(
            lambda ix: multilabel_metrics(labels[ix], probs[ix], thresholds), len(labels), None, n_boot
        )
        result["per_class"] = {
            name: bootstrap(partial(_label_metrics, labels, probs, thresholds, c), len(labels), None, n_boot)
            for c, name in enumerate(names)
        }
        result["operating_point"] = operating

    figures = card.performance_figures(task_type, names, labels, probs, probs_raw, decision, result)
    if model.selective is not None and task_type != "multilabel":
        # the bundle's conformal threshold and deferral rule (fitted on validation) applied as stored
        result["selective_prediction"], risk_figure = selective.report(
            model.selective, probs, labels, decision, partial(bootstrap, n=len(labels), strata=strata, n_boot=n_boot)
        )
        figures.append(risk_figure)
    elif model.multilabel_selective is not None:
        # the per-label conformal rule (fitted on validation) applied as stored, with the operating-point decisions
        result["selective_prediction"], risk_figure = selective.multilabel_report(
            model.multilabel_selective,
            probs,
            labels,
            decision,
            names,
            partial(bootstrap, n=len(labels), strata=None, n_boot=n_boot),
        )
        figures.append(risk_figure)
    result["explanations"], panels = explain_sample(
        model.network, part.images, labels, decision, task_type, names, names.index(positive) if positive else None
    )
    figures += card.explanation_figures(panels)
    write_evaluation(
        out,
        result,
        figures,
        f"Model card: {bundle.meta['data']['source']} ({task_type} classification)",
        card.intro(bundle, data.name, split),
        card.sections(bundle, result, figures),
        card_record(bundle.meta, result),
    )
    return result


def _label_metrics(
    y: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, c: int, ix: np.ndarray
) -> dict[str, float]:
    return binary_metrics(y[ix, c], probs[ix, c], float(thresholds[c]))


def _one_vs_rest(y: np.ndarray, probs: np.ndarray, pred: np.ndarray, c: int, ix: np.ndarray) -> dict[str, float]:
    y, probs, pred = y[ix], probs[ix], pred[ix]
    m = binary_metrics((y == c).astype(int), probs[:, c], 0.5)
    hit = binary_metrics((y == c).astype(int), (pred == c).astype(float), 0.5)
    for k in ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1"):
        m[k] = hit[k]
    return m


THRESHOLDED = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")


def _at_decision(truth: np.ndarray, score: np.ndarray, hit: np.ndarray, ix: np.ndarray) -> dict[str, float]:
    """Binary metrics of the positive class: AUC, Brier and ECE from p(positive), the rest from the decisions."""
    m = binary_metrics(truth[ix], score[ix], 0.5)
    decided = binary_metrics(truth[ix], hit[ix].astype(float), 0.5)
    for key in THRESHOLDED:
        m[key] = decided[key]
    return m


def _positive(
    meta: dict[str, Any],
    task_type: str,
    names: list[str],
    operating: dict[str, Any],
    override: str | None,
    where: Path,
) -> str | None:
    """The class the binary metrics are for: ``--positive``, else the bundle's (label 1 in bundles before it)."""
    if task_type != "binary":
        if override is not None:
            raise MedsightError(f"--positive applies to binary models; this one is {task_type}", where)
        return None
    if override is not None:
        if override not in names:
            raise MedsightError(f"--positive {override} is not one of the model's labels ({', '.join(names)})", where)
        return override
    return str(meta.get("positive_class", names[positive_index(operating)]))


def calibration_effect(
    task_type: str,
    labels: np.ndarray,
    before: np.ndarray,
    after: np.ndarray,
    temperature: float,
    positive: int | None,
    n_boot: int,
) -> dict[str, Any]:
    """ECE and Brier score before and after temperature scaling, with CIs, saying which ECE on which bins:
    positive-class (binary), top-label (multi-class) or pooled over labels (multi-label)."""
    y, p_after, kind = calibration_target(task_type, labels, after, positive)
    _, p_before, _ = calibration_target(task_type, labels, before, positive)
    strata = labels if task_type != "multilabel" else None
    return calibration_report(y, p_before, p_after, kind, n_boot, strata, temperature)


def explain_sample(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    decision: np.ndarray,
    task_type: str,
    names: list[str],
    positive: int | None = None,
    per_cell: int = 2,
    n_sanity: int = 16,
) -> tuple[dict[str, Any], list[tuple[str, np.ndarray]]]:
    """Grad-CAM overlays for TP/FP/TN/FN examples (binary: of the positive class; decisions are label indices) or
    correct/incorrect ones, plus the cascading-randomisation sanity check."""
    if task_type == "multilabel":
        truth, dec = labels[:, 0].astype(int), decision[:, 0]
    elif task_type == "binary":
        assert positive is not None
        truth, dec = (labels == positive).astype(int), (decision == positive).astype(int)
    else:
        truth, dec = labels.astype(int), decision.astype(int)
    cells: dict[str, np.ndarray]
    if task_type in ("binary", "multilabel"):
        cells = {
            "true positive": np.flatnonzero((truth == 1) & (dec == 1)),
            "false positive": np.flatnonzero((truth == 0) & (dec == 1)),
            "true negative": np.flatnonzero((truth == 0) & (dec == 0)),
            "false negative": np.flatnonzero((truth == 1) & (dec == 0)),
        }
    else:
        cells = {"correct": np.flatnonzero(truth == dec), "incorrect": np.flatnonzero(truth != dec)}
    chosen = [(cell, int(i)) for cell, ix in cells.items() for i in ix[:per_cell]]
    if not chosen:
        return {"examples": [], "sanity_check": None}, []

    def target_of(i: int) -> int:
        if task_type == "binary":
            return int(positive)  # type: ignore[arg-type]
        return 0 if task_type == "multilabel" else int(dec[i])

    def true_name(i: int) -> str:
        return names[int(labels[i])] if task_type != "multilabel" else f"{names[0]} {'yes' if truth[i] else 'no'}"

    idx = [i for _, i in chosen]
    maps = gradcam_maps(model, images[idx], [target_of(i) for i in idx])
    panels = []
    for (cell, i), heat in zip(chosen, maps, strict=True):
        rgb = overlay(images[i], heat)
        scale = max(1, 112 // rgb.shape[0])
        panels.append((f"{cell}: true {true_name(i)}", np.kron(rgb, np.ones((scale, scale, 1), np.uint8))))
    rng = np.random.default_rng(0)
    sample = rng.choice(len(images), size=min(n_sanity, len(images)), replace=False)
    sanity = cascading_randomisation(
        model, signed_explainer, images[sample], [target_of(int(i)) for i in sample], sanity_layers(model)
    )
    examples = [{"kind": cell, "index": i, "target_class": names[target_of(i)]} for cell, i in chosen]
    method = (
        "Grad-CAM (captum LayerGradCam on layer4"
        + (", mean over the ensemble's members" if len(members(model)) > 1 else "")
        + (", of the un-augmented view" if isinstance(model, ViewAverage) else "")
        + ")"
    )
    return {"method": method, "examples": examples, "sanity_check": sanity}, panels
