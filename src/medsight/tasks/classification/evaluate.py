"""Evaluate a classification bundle: metrics with 95% bootstrap CIs, calibration, operating point, subgroups and
Grad-CAM examples → ``metrics.json``, ``card.html`` and ``card.json``.

Inference runs through the task's warm model (ONNX Runtime), the same path ``medsight predict`` and the service use.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from medsight.data.fingerprint import case_hashes, check_leakage
from medsight.data.splits import recorded_split_seed
from medsight.evaluation import selective
from medsight.evaluation.calibration import brier_score, expected_calibration_error
from medsight.evaluation.card import card_record, write_evaluation
from medsight.evaluation.metrics import N_BOOTSTRAP, binary_metrics, bootstrap, multiclass_metrics, multilabel_metrics
from medsight.evaluation.subgroups import audit
from medsight.explain.gradcam import gradcam, overlay, sanity_check
from medsight.tasks.classification import card
from medsight.tasks.classification.data import load_like, published_release
from medsight.tasks.classification.network import gradcam_layer, probabilities
from medsight.tasks.classification.predict import ClassificationModel
from medsight.training.bundle import load_bundle


def evaluate(bundle_path: Path, spec: str, split: str, out: Path, n_boot: int = N_BOOTSTRAP) -> dict[str, Any]:
    """Score ``bundle_path`` on ``split`` of ``spec`` and write metrics.json, card.html and card.json to ``out``."""
    bundle = load_bundle(bundle_path)
    model = ClassificationModel(bundle)
    task_type, names = model.task_type, model.label_names
    data = load_like(bundle, spec, seed=recorded_split_seed(bundle.meta))
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
    if task_type == "binary":
        score, thr = probs[:, 1], float(operating["threshold"])
        decision = (score >= thr).astype(int)
        result["metrics"] = bootstrap(
            lambda ix: binary_metrics(labels[ix], score[ix], thr), len(labels), strata, n_boot
        )
        result["operating_point"] = {
            **operating,
            "at_0.5": bootstrap(lambda ix: binary_metrics(labels[ix], score[ix], 0.5), len(labels), strata, n_boot),
        }
        result["calibration"] = calibration_effect(labels, probs_raw[:, 1], score, model.temperature)
        attributes = part.attributes
        result["subgroups"] = {}
        if attributes is not None and len(attributes.columns):
            result["subgroups"] = audit(labels, score, decision, attributes)
    elif task_type == "multiclass":
        decision = probs.argmax(1)
        result["metrics"] = bootstrap(lambda ix: multiclass_metrics(labels[ix], probs[ix]), len(labels), strata, n_boot)
        result["per_class"] = {
            name: bootstrap(partial(_one_vs_rest, labels, probs, decision, c), len(labels), strata, n_boot)
            for c, name in enumerate(names)
        }
        result["operating_point"] = operating
        result["calibration"] = calibration_effect(labels, probs_raw, probs, model.temperature, multiclass=True)
        result["subgroups"] = {}
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
        result["calibration"] = calibration_effect(labels.ravel(), probs_raw.ravel(), probs.ravel(), model.temperature)
        result["subgroups"] = {}

    figures = card.performance_figures(task_type, names, labels, probs, probs_raw, decision, result)
    if model.selective is not None and task_type != "multilabel":
        # the bundle's conformal threshold and deferral rule (fitted on validation) applied as stored
        result["selective_prediction"], risk_figure = selective.report(
            model.selective, probs, labels, decision, partial(bootstrap, n=len(labels), strata=strata, n_boot=n_boot)
        )
        figures.append(risk_figure)
    result["explanations"], panels = explain_sample(model.network, part.images, labels, decision, task_type, names)
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


def calibration_effect(
    y: np.ndarray, before: np.ndarray, after: np.ndarray, temperature: float, multiclass: bool = False
) -> dict[str, Any]:
    """ECE and Brier score before and after temperature scaling."""

    def measures(p: np.ndarray) -> dict[str, float]:
        if multiclass:
            onehot = np.eye(p.shape[1])[y]
            return {
                "ece": expected_calibration_error(p.argmax(1) == y, p.max(1)),
                "brier": float(np.mean(np.sum((p - onehot) ** 2, axis=1))),
            }
        return {"ece": expected_calibration_error(y, p), "brier": brier_score(y, p)}

    return {
        "method": "temperature scaling",
        "fitted_on": "val",
        "temperature": temperature,
        "before": measures(before),
        "after": measures(after),
    }


def explain_sample(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    decision: np.ndarray,
    task_type: str,
    names: list[str],
    per_cell: int = 2,
    n_sanity: int = 16,
) -> tuple[dict[str, Any], list[tuple[str, np.ndarray]]]:
    """Grad-CAM overlays for TP/FP/TN/FN examples (binary) or correct/incorrect ones, plus the sanity check."""
    if task_type == "multilabel":
        truth, dec = labels[:, 0].astype(int), decision[:, 0]
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
        return 1 if task_type == "binary" else 0 if task_type == "multilabel" else int(dec[i])

    idx = [i for _, i in chosen]
    maps = gradcam(model, gradcam_layer(model), images[idx], [target_of(i) for i in idx])
    panels = []
    for (cell, i), heat in zip(chosen, maps, strict=True):
        rgb = overlay(images[i], heat)
        scale = max(1, 112 // rgb.shape[0])
        panels.append((f"{cell}: true {names[truth[i]]}", np.kron(rgb, np.ones((scale, scale, 1), np.uint8))))
    rng = np.random.default_rng(0)
    sample = rng.choice(len(images), size=min(n_sanity, len(images)), replace=False)
    sanity = sanity_check(model, "layer4", images[sample], [target_of(int(i)) for i in sample])
    examples = [{"kind": cell, "index": i, "target_class": names[target_of(i)]} for cell, i in chosen]
    return {"method": "Grad-CAM (captum LayerGradCam on layer4)", "examples": examples, "sanity_check": sanity}, panels
