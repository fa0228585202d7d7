"""The classification model card: figures (ROC, PR, reliability, confusion, Grad-CAM) and sections."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from medsight.evaluation import selective
from medsight.evaluation.card import Figure, Section, fmt, subgroup_section
from medsight.evaluation.plots import confusion_plot, overlay_grid, pr_plot, reliability_plot, roc_plot
from medsight.explain.sanity import sanity_section
from medsight.tasks.classification.plan import ClassificationPlan
from medsight.training.bundle import Bundle


def performance_figures(
    task_type: str,
    names: list[str],
    labels: np.ndarray,
    probs: np.ndarray,
    probs_raw: np.ndarray,
    decision: np.ndarray,
    result: dict[str, Any],
) -> list[Figure]:
    """ROC, precision-recall, reliability and confusion figures for the evaluated split."""
    if task_type == "binary":
        positive = str(result["positive_class"])
        k = names.index(positive)
        score, truth = probs[:, k], (labels == k).astype(int)
        m = result["metrics"]
        temperature = float(result["calibration"]["temperature"])
        threshold = float(result["operating_point"]["threshold"])
        bins = result["calibration"]["bins"]
        return [
            Figure(
                "ROC",
                roc_plot({positive: (truth, score)}, (m["sensitivity"]["value"], m["specificity"]["value"])),
            ),
            Figure("Precision-recall", pr_plot({positive: (truth, score)})),
            Figure(
                "Reliability",
                reliability_plot(truth, {"uncalibrated": probs_raw[:, k], f"temperature {temperature:.2f}": score}),
                f"Observed frequency of {positive} against p({positive}), {bins['n_bins']} {bins['strategy']} bins.",
            ),
            Figure("Confusion matrix", confusion_plot(labels, decision, names), f"threshold {threshold:.3f}"),
        ]
    if task_type == "multiclass":
        onehot = np.eye(len(names))[labels]
        ordinal = result.get("ordinal")
        return [
            Figure("ROC (one-vs-rest)", roc_plot({n: (onehot[:, c], probs[:, c]) for c, n in enumerate(names)})),
            Figure(
                "Confusion matrix",
                confusion_plot(labels, decision, names),
                f"Grades lowest first; {ordinal['decoding']} decoding (chosen on validation): cells far from the "
                "diagonal are the misses quadratic weighted kappa weighs most."
                if ordinal
                else "",
            ),
        ]
    return []


def explanation_figures(panels: list[tuple[str, np.ndarray]]) -> list[Figure]:
    if not panels:
        return []
    return [
        Figure(
            "Grad-CAM examples",
            overlay_grid(panels),
            "Where the model looked, for a sample of correct and incorrect decisions on the test images.",
        )
    ]


def intro(bundle: Bundle, data_name: str, split: str) -> str:
    tr = bundle.meta["training"]
    return html.escape(
        f"Evaluated on the {split} split of {data_name}. Trained {tr['epochs_run']} epochs (best {tr['best_epoch']},"
        f" seed {tr['seed']}, {tr['seconds']} s on {tr['device']}). Every metric shows a 95% bootstrap confidence "
        "interval."
    )


def sections(bundle: Bundle, r: dict[str, Any], figures: list[Figure]) -> list[Section]:
    """Performance, per class, operating point, calibration, subgroups, explanations, model and data."""
    m = r["metrics"]
    order = ("qwk", "auc", "accuracy", "mae", "sensitivity", "specificity", "ppv", "npv", "f1", "brier", "ece")
    keys = [k for k in order if k in m]
    table: list[list[Any]] = [["metric", "at the operating point" if r["task_type"] == "binary" else "value"]]
    if r["task_type"] == "binary":
        table[0].append("at threshold 0.5")
        for k in keys:
            table.append([k, fmt(m[k]), fmt(r["operating_point"]["at_0.5"][k])])
    else:
        table += [[k, fmt(m[k])] for k in keys]
    positive = r.get("positive_class")
    meaning = (
        html.escape(
            f" Positive class: {positive} (sensitivity is the recall of {positive} cases, specificity that of the "
            "others; AUC, PPV and the operating point are for this class)."
        )
        if positive
        else ""
    )
    out = [
        Section(
            "Performance",
            f"n = {r['n']} images ({r['split']} split).{meaning}",
            table,
            [
                f
                for f in figures
                if "Grad-CAM" not in f.title and "Reliability" not in f.title and f.title != "Risk-coverage"
            ],
        )
    ]
    if "per_class" in r:
        pk = ["auc", "sensitivity", "specificity", "ppv", "f1"]
        rows: list[list[Any]] = [["class", *pk]]
        rows += [[name, *[fmt(v.get(k)) for k in pk]] for name, v in r["per_class"].items()]
        out.append(Section("Per class", "", rows))
    op = r["operating_point"]
    if "threshold" in op:
        out.append(
            Section(
                "Operating point",
                html.escape(
                    f"Method {op['method']}, chosen on the validation split: threshold {op['threshold']:.4f} "
                    f"on p({op.get('applies_to')})"
                    f" (validation sensitivity {op['val_sensitivity']:.3f}, specificity {op['val_specificity']:.3f})."
                ),
            )
        )
    out.append(recipe_section(bundle, r))
    cal = r["calibration"]
    out.append(
        Section(
            "Calibration",
            html.escape(
                f"Temperature scaling fitted on validation: T = {cal['temperature']:.3f}. ECE: {cal['ece_kind']} "
                f"({cal['ece_definition']}), {cal['bins']['n_bins']} {cal['bins']['strategy']} bins; 95% bootstrap "
                "CIs."
            ),
            [
                ["", "ECE", "Brier"],
                ["before", fmt(cal["before"]["ece"]), fmt(cal["before"]["brier"])],
                ["after", fmt(cal["after"]["ece"]), fmt(cal["after"]["brier"])],
            ],
            [f for f in figures if "Reliability" in f.title],
        )
    )
    out.append(selective.card_section(r.get("selective_prediction"), figures, "images"))
    out.append(subgroup_section(r.get("subgroups") or {}))
    out.append(_explanations(r.get("explanations") or {}, figures))
    out.append(_model_and_data(bundle))
    return out


def recipe_section(bundle: Bundle, r: dict[str, Any]) -> Section:
    """How the training recipe (loss, class balance) and, for ordinal grades, the decoding were chosen on
    validation, with every candidate's validation scores (selection scores: optimistic for all alike)."""
    sel = bundle.meta["training"].get("recipe_selection")
    if not sel:
        return Section("Training recipe", "Not recorded (a bundle from before recipes were chosen on validation).")
    text = (
        f"Kept: {sel['chosen']}, by {sel['rule']} ({sel['why_compared']}). Validation scores rank the candidates; "
        "they are not performance estimates."
    )
    ordinal = r.get("ordinal")
    if ordinal:
        grades = " < ".join(ordinal.get("grades", r["labels"]))
        text += (
            f" Ordinal grades {grades}: quadratic weighted kappa (QWK) is the headline metric, mae the mean "
            f"absolute grade error; decoding '{ordinal['decoding']}' chosen on validation by QWK."
        )
    weights = bundle.meta["training"].get("weights") or {}
    if weights.get("average"):
        which = "their " + weights["average"] if weights["kept"] == "average" else "the trained weights"
        text += (
            f" Weights: {which}, whichever scored higher on validation at the best epoch "
            f"(trained {fmt(weights.get('val_score_trained'))}, average {fmt(weights.get('val_score_averaged'))})."
        )
    for member in bundle.meta["training"].get("ensemble_members") or []:
        text += (
            f" Member {member['recipe']}: best epoch {member['best_epoch']} of {member['epochs_run']}, "
            f"{member['weights']['kept']} weights."
        )
    views = bundle.meta["training"].get("test_time_views") or {}
    tta = [c for c in views.get("candidates", []) if len(c["views"]) > 1]
    if tta and len(views["views"]) > 1:
        text += (
            f" Test-time augmentation kept ({views['decided_on']}): the mean logits over "
            f"{', '.join(views['views'])}, {len(views['views'])} forward passes per image."
        )
    elif tta:
        text += f" Test-time augmentation compared and not kept ({views['decided_on']}): {len(tta)} set(s) of views."
    keys = [k for k in ("qwk", "accuracy", "auc", "mae") if any(k in c for c in sel["candidates"])]
    rows: list[list[Any]] = [["recipe", *[f"val {k}" for k in keys]]]
    rows += [[c["recipe"], *[fmt(c.get(k)) for k in keys]] for c in sel["candidates"]]
    rows += [[f"kept recipe, {len(c['views'])} test-time views", *[fmt(c.get(k)) for k in keys]] for c in tta]
    return Section("Training recipe (chosen on validation)", html.escape(text), rows)


def _explanations(ex: dict[str, Any], figures: list[Figure]) -> Section:
    sanity = ex.get("sanity_check") or {}
    if not sanity:
        return Section("Explanations", "No explanation examples.", None, [f for f in figures if "Grad-CAM" in f.title])
    return sanity_section(ex.get("method", ""), sanity, [f for f in figures if "Grad-CAM" in f.title])


def _model_and_data(bundle: Bundle) -> Section:
    meta = bundle.meta
    plan = bundle.plan(ClassificationPlan)
    d, tr = meta["data"], meta["training"]
    return Section(
        "Model and data",
        "",
        [
            ["item", "value"],
            ["network", f"{meta['network']['name']} ({meta['network'].get('parameters', '?')} parameters)"],
            ["input", f"{bundle.input['n_channels']} x {bundle.input['spatial_size']}"],
            ["training data", f"{d['source']} ({d['modality']}), split: {d['split_method']}, n = {d['n']}"],
            ["optimiser", tr["optimizer"]],
            [
                "plan",
                f"{plan.describe_epochs()} planned ({plan.timing}), batch {plan.batch_size}, "
                f"{'class-balanced' if plan.balanced_loss else 'plain'} {plan.loss} loss; expected "
                f"{plan.expected_seconds / 60:.1f} min, took {float(tr['seconds']) / 60:.1f} min",
            ],
            ["stopped by", tr["stopped_by"]],
            ["versions", ", ".join(f"{k} {v}" for k, v in meta["versions"].items())],
            ["ONNX vs PyTorch max |diff|", f"{meta['onnx']['max_abs_diff_vs_torch']:.2e}"],
        ],
    )
