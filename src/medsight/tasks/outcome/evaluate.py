"""Evaluation: all four models' AUCs with patient-level bootstrap CIs, the deployed model at its operating point,
paired AUC differences, the subgroup audit, Grad-CAM and clinical-field importance, the conformal sets and deferral
(rule stored in the bundle, never refitted here) → metrics.json + card.

Patients have several images: the split is counted in images and patients (events per patient, ``counts``), metrics
are per image with CIs that resample patients, and the deployed model's AUC is also given per patient.

Inference goes through :class:`OutcomeModel` (ONNX Runtime), the path ``medsight predict`` and the service use.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsight.data.fingerprint import case_hashes, check_leakage
from medsight.data.splits import recorded_split_seed
from medsight.errors import MedsightError
from medsight.evaluation import selective
from medsight.evaluation.card import Figure, card_record, write_evaluation
from medsight.evaluation.metrics import N_BOOTSTRAP, binary_metrics, bootstrap
from medsight.evaluation.plots import overlay_grid, roc_plot
from medsight.evaluation.subgroups import audit
from medsight.explain.gradcam import gradcam_explainer, overlay
from medsight.explain.sanity import cascading_randomisation
from medsight.tasks.outcome import card
from medsight.tasks.outcome import data as outcome_data
from medsight.tasks.outcome.models import LABELS, FittedModels, two_class
from medsight.tasks.outcome.predict import OutcomeModel
from medsight.training.bundle import load_bundle

log = logging.getLogger("medsight")

#: What the metrics are computed over (patients have several images).
METRICS_UNIT = (
    "per image: every image of a patient is scored and counted, AUCs and the operating-point metrics rank images; "
    "95% CIs resample patients, not images; selected_auc_per_patient ranks patients by their mean risk over their "
    "images against whether they had the outcome"
)


def concordance_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C: among comparable pairs (the earlier time had the event), the share where the earlier one has
    the higher risk; ties in risk count one half. NaN when no pair is comparable."""
    t, e, r = np.asarray(time, float), np.asarray(event, int), np.asarray(risk, float)
    ok = ~np.isnan(t)
    t, e, r = t[ok], e[ok], r[ok]
    num, den = 0.0, 0.0
    for i in np.flatnonzero(e == 1):
        later = t > t[i]
        den += later.sum()
        num += np.sum(r[i] > r[later]) + 0.5 * np.sum(r[i] == r[later])
    return float(num / den) if den else float("nan")


def evaluate(bundle_path: Path, spec: str, split: str, out: Path, n_boot: int = N_BOOTSTRAP) -> dict[str, Any]:
    """Score the bundle on ``split`` of ``spec`` and write metrics.json, card.html and card.json into ``out``."""
    bundle = load_bundle(bundle_path)
    model = OutcomeModel(bundle)
    data = outcome_data.load(spec)
    parts = data.split(recorded_split_seed(bundle.meta))
    if split not in parts:
        raise MedsightError(f"unknown split {split!r} (train, val or test)")
    idx = parts[split]
    images = outcome_data.read_images([data.images[i] for i in idx], model.size)
    leakage = check_leakage(bundle.meta["data"], case_hashes(images), split, spec)
    table = data.table.iloc[idx].reset_index(drop=True)
    unusable = Counter(f for _, bad in model.fitted.encoder.describe(table) for f in bad)
    if unusable:  # the loader refused text in numeric fields, so these are categories training never saw
        log.warning(
            "%s split: values the model cannot use (categories not seen in training, encoded as none of them): %s",
            split,
            ", ".join(f"{f} in {n} image(s)" for f, n in sorted(unusable.items())),
        )
    y = data.y[idx]
    logits, emb = model.image_outputs(images)
    probs = model.fitted.probabilities(logits, emb, model.fitted.encoder.transform(table))
    sel, best_fusion = model.selection.selected, model.selection.best_fusion
    thr = model.operating_point.threshold
    time_arr = data.time[idx] if data.time is not None else None

    pids = np.asarray([data.patient_ids[i] for i in idx])
    patients = np.unique(pids)
    rows_of = {p: np.flatnonzero(pids == p) for p in patients}
    patient_pos = np.asarray([int(y[rows_of[p]].max()) for p in patients])
    # per patient: the mean of the deployed model's risk over their images, against "had the outcome"
    patient_risk = np.asarray([float(probs[sel][rows_of[p]].mean()) for p in patients])

    def images_of(pix: np.ndarray) -> np.ndarray:
        return np.concatenate([rows_of[patients[i]] for i in pix])

    def fn(pix: np.ndarray) -> dict[str, float]:
        ix = images_of(pix)
        yy = y[ix]
        res = {f"auc_{m}": binary_metrics(yy, p[ix], 0.5)["auc"] for m, p in probs.items()}
        res[f"delta_auc_{best_fusion}_minus_image"] = res[f"auc_{best_fusion}"] - res["auc_image"]
        res[f"delta_auc_{best_fusion}_minus_clinical"] = res[f"auc_{best_fusion}"] - res["auc_clinical"]
        sel_m = binary_metrics(yy, probs[sel][ix], thr)
        res.update({f"selected_{k}": v for k, v in sel_m.items() if k != "auc"})
        if time_arr is not None:
            res["c_index_selected"] = concordance_index(time_arr[ix], yy, probs[sel][ix])
        res["selected_auc_per_patient"] = binary_metrics(patient_pos[pix], patient_risk[pix], thr)["auc"]
        return res

    strata = patient_pos if len(np.unique(patient_pos)) == 2 else None
    metrics = bootstrap(fn, len(patients), strata, n_boot)
    decision = (probs[sel] >= thr).astype(int)
    selective_report, risk_figure = None, None
    if model.selective is not None:
        # the bundle's conformal threshold and deferral rule (fitted on validation patients), applied as stored
        selective_report, risk_figure = selective.report(
            model.selective,
            two_class(probs[sel]),
            y,
            decision,
            lambda case_fn: bootstrap(lambda pix: case_fn(images_of(pix)), len(patients), strata, n_boot),
        )
    attrs = outcome_data.banded(data.attributes.iloc[idx].reset_index(drop=True))
    subgroups = audit(y, probs[sel], decision, attrs) if len(attrs.columns) and len(np.unique(y)) == 2 else {}
    importance = permutation_importance(model.fitted, logits, emb, table, y, sel, model.fields)
    explanations, cam_png = gradcam_examples(model, images, y, probs[sel], thr)
    result: dict[str, Any] = {
        "split": split,
        "n": len(idx),
        "n_patients": len(patients),
        "positives": int(y.sum()),
        "counts": outcome_data.event_counts(y, pids),
        "metrics_unit": METRICS_UNIT,
        "data": data.name,
        "target": bundle.meta["target"],
        "bundle": str(bundle_path),
        "leakage": leakage,
        "metrics": metrics,
        "selection": model.selection.to_json(),
        "operating_point": model.operating_point.to_json(),
        "subgroups": subgroups,
        "importance": importance,
        "explanations": explanations,
        "excluded": data.excluded,
        "ci95": f"percentile bootstrap over patients ({n_boot} resamples, stratified by any positive outcome)",
    }
    if selective_report is not None:
        result["selective_prediction"] = selective_report
    figures = [
        Figure("ROC", roc_plot({LABELS[m]: (y, p) for m, p in probs.items()}), "All four models on this split."),
        Figure("Clinical field importance", card.importance_plot(importance), "Permutation importance (AUC drop)."),
    ]
    if cam_png:
        figures.append(Figure("Grad-CAM examples", cam_png, "Image branch: where the CNN looked."))
    if risk_figure is not None:
        figures.append(risk_figure)
    write_evaluation(
        out,
        result,
        figures,
        f"Model card: {data.name} outcome ({bundle.meta['target']['name']})",
        card.intro(bundle, data.name, split),
        card.sections(bundle, result, figures),
        card_record(bundle.meta, result),
    )
    return result


def permutation_importance(
    fitted: FittedModels,
    logits: np.ndarray,
    emb: np.ndarray,
    table: pd.DataFrame,
    y: np.ndarray,
    selected: str,
    fields: list[str],
    repeats: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """AUC drop when one declared clinical field (or the whole image) is shuffled across rows, for the clinical-only
    and the selected model; mean and std over ``repeats`` shuffles."""
    enc = fitted.encoder
    rng = np.random.default_rng(seed)
    base_x = enc.transform(table)
    base = {m: binary_metrics(y, p, 0.5)["auc"] for m, p in fitted.probabilities(logits, emb, base_x).items()}
    models = ["clinical"] + ([selected] if selected != "clinical" else [])
    out: dict[str, Any] = {"method": f"permutation, {repeats} repeats, AUC drop", "models": models, "fields": {}}
    if len(np.unique(y)) < 2:
        return out
    for name in [*fields, "(image)"]:
        drops: dict[str, list[float]] = {m: [] for m in models}
        for _ in range(repeats):
            perm = rng.permutation(len(y))
            if name == "(image)":
                p = fitted.probabilities(logits[perm], emb[perm], base_x)
            else:
                shuffled = table.copy()
                if name in shuffled:
                    shuffled[name] = shuffled[name].to_numpy()[perm]
                p = fitted.probabilities(logits, emb, enc.transform(shuffled))
            for m in models:
                drops[m].append(base[m] - binary_metrics(y, p[m], 0.5)["auc"])
        out["fields"][name] = {m: {"mean": float(np.mean(d)), "std": float(np.std(d))} for m, d in drops.items()}
    return out


def gradcam_examples(
    model: OutcomeModel, images: np.ndarray, y: np.ndarray, score: np.ndarray, thr: float, per_cell: int = 2
) -> tuple[dict[str, Any], bytes | None]:
    """Grad-CAM of up to ``per_cell`` images per confusion cell, and the weight-randomisation sanity check."""
    dec = (score >= thr).astype(int)
    cells = {
        "true positive": np.flatnonzero((y == 1) & (dec == 1)),
        "false positive": np.flatnonzero((y == 0) & (dec == 1)),
        "true negative": np.flatnonzero((y == 0) & (dec == 0)),
        "false negative": np.flatnonzero((y == 1) & (dec == 0)),
    }
    chosen = [(c, int(i)) for c, ix in cells.items() for i in ix[:per_cell]]
    if not chosen:
        return {"examples": []}, None
    idx = [i for _, i in chosen]
    maps = model.heatmaps(images[idx])
    panels = [(f"{c} (p={score[i]:.2f})", overlay(images[i], h)) for (c, i), h in zip(chosen, maps, strict=True)]
    sample = np.random.default_rng(0).choice(len(images), size=min(8, len(images)), replace=False)
    sanity = cascading_randomisation(model.network, gradcam_explainer("layer4"), images[sample], [1] * len(sample))
    return {
        "method": "Grad-CAM (captum LayerGradCam on layer4), target = outcome",
        "examples": [{"kind": c, "index": i} for c, i in chosen],
        "sanity_check": sanity,
    }, overlay_grid(panels)
