"""The segmentation model card: the performance table, how many cases were empty or missed, pixel metrics with the
second observer, the per-case uncertainty and review flags, the plan and the post-processing decision, the model and
data, and overlays of the best, median and worst cases."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from medsight.evaluation.card import Figure, Section, fmt
from medsight.evaluation.plots import overlay_grid
from medsight.tasks.segmentation.metrics import SITUATIONS
from medsight.tasks.segmentation.overlay import overlay
from medsight.training.bundle import Bundle


def case_figures(
    per_case: list[dict[str, Any]], views: list[tuple[np.ndarray, np.ndarray, np.ndarray]], names: list[str]
) -> list[Figure]:
    scores = []
    for c in per_case:
        values = [c[n]["dice"] for n in names[1:] if c[n]["dice"] is not None]
        scores.append(float(np.mean(values)) if values else float("nan"))
    order = list(np.argsort(np.nan_to_num(np.asarray(scores), nan=-1.0)))
    if not order:
        return []
    picks = {"worst": order[0], "median": order[len(order) // 2], "best": order[-1]}
    panels = []
    for kind, i in picks.items():
        img, lab, pred = views[i]
        panels.append((f"{kind}: {per_case[i]['id']} (Dice {scores[i]:.3f})", overlay(img, pred, lab)))
    return [
        Figure(
            "Best median and worst cases",
            overlay_grid(panels, columns=3),
            "Prediction filled in colour, reference outlined in white (3D: the slice with the most foreground).",
        )
    ]


def intro(bundle: Bundle, data_name: str, split: str, n: int, engine: str) -> str:
    tr = bundle.meta["training"]
    return html.escape(
        f"Evaluated on the {split} split of {data_name} ({n} cases, {engine}). Trained {tr['epochs_run']} epochs of "
        f"{tr['iterations_per_epoch']} iterations (seed {tr['seed']}, {tr['seconds']} s on {tr['device']}, stopped by "
        f"{tr['stopped_by']}). Every metric shows a 95% bootstrap confidence interval over cases."
    )


def sections(bundle: Bundle, r: dict[str, Any], figures: list[Figure]) -> list[Section]:
    m = r["metrics"]
    rows: list[list[Any]] = [["class", "Dice", "HD95", "NSD"]]
    rows += [[name, fmt(v["dice"]), fmt(v["hd95"], 2), fmt(v["nsd"])] for name, v in r["per_class"].items()]
    rows.append(["mean", fmt(m["dice"]), fmt(m["hd95"], 2), fmt(m["nsd"])])
    out = [Section("Performance", html.escape(r["definitions"]["ci95"]) + ".", rows, figures)]
    if "case_situations" in r:
        out.append(situations_section(r))
    if "pixel_auc" in m:
        keys = ["auc", "f1", "sensitivity", "specificity", "accuracy"]
        prow: list[list[Any]] = [["", *keys]]
        prow.append(["model", *[fmt(m[f"pixel_{k}"], 4) for k in keys]])
        if "second_observer" in r:
            so = r["second_observer"]["metrics"]
            prow.append(["2nd observer", *[fmt(so.get(f"pixel_{k}"), 4) for k in keys]])
        out.append(Section("Pixel metrics inside the region of interest", html.escape(r["definitions"]["pixel"]), prow))
    if "uncertainty" in r:
        out.append(uncertainty_section(r))
    post = bundle.meta["postprocessing"]
    chosen = [bundle.label_names[k] for k in post["keep_largest_component"]] or ["none"]
    gates = [
        f"{bundle.label_names[int(k)]} when its peak probability is below {g['min_peak']:g} or it covers less than "
        f"{100 * g['min_area_fraction']:g}% of the image"
        for k, g in (post.get("drop_unsure") or {}).items()
    ]
    unsure = (
        f" Drop an unsure prediction of {'; of '.join(gates)} ({post['unsure_rule']})."
        if gates
        else " No unsure-prediction gate (none gained on validation)."
        if "unsure_rule" in post
        else ""
    )
    out.append(
        Section(
            "Plan and post-processing",
            html.escape(
                "; ".join(bundle.meta["plan_in_words"])
                + f". Post-processing: keep the largest component for {', '.join(chosen)} ({post['rule']}, "
                f"decided on {post['decided_on']})." + unsure
            ),
        )
    )
    d, tr = bundle.meta["data"], bundle.meta["training"]
    onnx = bundle.meta.get("onnx") or {}
    warnings = "; ".join(tr.get("warnings", [])) or "none"
    out.append(
        Section(
            "Model and data",
            "",
            [
                ["item", "value"],
                ["network", f"{bundle.meta['network']['name']} ({bundle.meta['network']['parameters']} parameters)"],
                ["training data", f"{d['source']} ({d['modality']}), {d['split_method']}, n = {d['n']}"],
                ["optimiser", tr["optimizer"]],
                ["stopped by", f"{tr['stopped_by']} after {tr['epochs_run']} epochs, {tr['seconds']} s"],
                ["training warnings", warnings],
                ["versions", ", ".join(f"{k} {v}" for k, v in bundle.meta["versions"].items())],
                [
                    "ONNX",
                    f"max |diff| vs PyTorch {onnx['max_abs_diff_vs_torch']:.2e}"
                    if "max_abs_diff_vs_torch" in onnx
                    else str(onnx.get("error", "not exported")),
                ],
            ],
        )
    )
    return out


def situations_section(r: dict[str, Any]) -> Section:
    """How many cases per class fell into each situation, so a mean that includes empty cases can be read."""
    heads = {
        "both_present": "in both",
        "true_negative": "in neither (Dice 1)",
        "false_positive": "only predicted (Dice 0)",
        "missed": "missed (Dice 0, HD95 penalty)",
    }
    rows: list[list[Any]] = [["class", *(heads[k] for k in SITUATIONS)]]
    rows += [[name, *(counts[k] for k in SITUATIONS)] for name, counts in r["case_situations"].items()]
    text = "Every case is in every mean. " + r["definitions"]["dice"] + ". HD95: " + r["definitions"]["hd95"] + "."
    return Section("Cases with an empty reference or prediction", html.escape(text), rows)


def uncertainty_section(r: dict[str, Any]) -> Section:
    """Whether the per-case uncertainty ranks the bad cases first, and what the review flag does on this split."""
    u = r["uncertainty"]
    rho = u["spearman_uncertainty_vs_dice"]
    threshold = "none" if u["threshold"] is None else f"{u['threshold']:.4f}"
    flagged = "—" if u["n_flagged"] is None else f"{u['n_flagged']} of {u['n']}"
    rows: list[list[Any]] = [
        ["item", "value"],
        ["Spearman rho, uncertainty vs Dice (negative: uncertain cases are worse)", fmt(rho)],
        ["review threshold (chosen on validation, not on this split)", threshold],
        ["cases flagged for review", flagged],
        ["mean Dice of flagged cases", fmt(u["dice_flagged"])],
        ["mean Dice of unflagged cases", fmt(u["dice_unflagged"])],
    ]
    text = (
        f"Uncertainty per case: 1 - mean Dice between each of {u['passes']} test-time mirrored passes and their "
        f"consensus. Threshold: {u['threshold_from']}. " + r["definitions"]["ci95"] + "."
    )
    per_case = r.get("per_case") or []
    figures = [review_figure(per_case, r["labels"], u["threshold"])] if per_case else []
    return Section("Uncertainty and review flags", html.escape(text), rows, figures)


def review_figure(per_case: list[dict[str, Any]], names: list[str], threshold: float | None) -> Figure:
    """Per-case Dice against uncertainty, flagged cases in red, the validation threshold as a line."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray([c["uncertainty"] for c in per_case], dtype=float)
    y = np.asarray([np.mean([c[n]["dice"] for n in names[1:]]) for c in per_case], dtype=float)
    flagged = np.asarray([bool(c.get("flag_for_review")) for c in per_case])
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    ax.scatter(x[~flagged], y[~flagged], s=14, c="#1f77b4", label="not flagged")
    ax.scatter(x[flagged], y[flagged], s=18, c="#d62728", label="flagged for review")
    if threshold is not None:
        ax.axvline(threshold, color="#555", linestyle="--", linewidth=1, label="threshold (validation)")
    ax.set_xlabel("uncertainty (test-time mirroring disagreement)")
    ax.set_ylabel("Dice (mean over classes)")
    ax.legend(fontsize=7, loc="lower left")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Figure(
        "Dice against uncertainty",
        buf.getvalue(),
        "Each point a case. A useful uncertainty puts the low-Dice cases on the right, above the threshold.",
    )
