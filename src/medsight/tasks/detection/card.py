"""The detection model card: performance with CIs, the FROC curve, example overlays, the operating point, the
per-image uncertainty and review flag, the subgroup audit (lesions) and how the model and data were made."""

from __future__ import annotations

import html
from typing import Any

import torch

from medsight.evaluation.card import Figure, Section, fmt, subgroup_section
from medsight.evaluation.froc import ImageMatch, froc_plot
from medsight.evaluation.plots import overlay_grid
from medsight.io.images import read_image
from medsight.tasks.detection.data import DetectionItem
from medsight.tasks.detection.network import Detections
from medsight.tasks.detection.overlay import draw_boxes
from medsight.tasks.detection.plan import DetectionPlan
from medsight.training.bundle import Bundle


def example_items(items: list[DetectionItem], n: int = 8) -> list[DetectionItem]:
    """Up to ``n`` images to show: mostly ones with boxes, and two without when there are any."""
    with_boxes = [it for it in items if len(it.boxes)]
    without = [it for it in items if not len(it.boxes)]
    return (with_boxes[: n - 2] + without[:2])[:n] if without else with_boxes[:n]


def figures(
    items: list[DetectionItem],
    dets: list[Detections],
    matches: list[ImageMatch],
    threshold: float,
    names: list[str],
    lesions: bool,
) -> list[Figure]:
    out = []
    if lesions:
        out.append(Figure("FROC", froc_plot(matches), "Lesion sensitivity against false positives per image."))
    out.append(
        Figure(
            "Detections",
            _overlays(items, dets, threshold, names),
            f"Ground truth in green, detections scoring >= {threshold:.3f} in red (score beside each).",
        )
    )
    return out


def _overlays(items: list[DetectionItem], dets: list[Detections], thr: float, names: list[str]) -> bytes:
    panels = []
    for it in example_items(items):
        d = dets[items.index(it)]
        raw = read_image(it.image)
        keep = d.scores >= thr
        scale = 256 / max(raw.shape[1:])
        small = torch.nn.functional.interpolate(torch.as_tensor(raw)[None], scale_factor=scale, mode="area")[0]
        rgb = draw_boxes(small.numpy(), it.boxes, d.boxes[keep], scale)
        top = ", ".join(
            f"{names[int(c)][:6]} {s:.2f}" for c, s in zip(d.labels[keep][:3], d.scores[keep][:3], strict=True)
        )
        panels.append((f"{it.key[:12]}: {top or 'none'}", rgb))
    return overlay_grid(panels)


def intro(bundle: Bundle, data_name: str, split: str) -> str:
    tr = bundle.meta["training"]
    return html.escape(
        f"Evaluated on the {split} split of {data_name}. Trained {tr['epochs_run']} epochs (best {tr['best_epoch']}, "
        f"seed {tr['seed']}, {tr['seconds']} s on {tr['device']}). Every metric shows a 95% bootstrap confidence "
        "interval over images."
    )


def sections(bundle: Bundle, r: dict[str, Any], figs: list[Figure]) -> list[Section]:
    m = r["metrics"]
    rows: list[list[Any]] = [["metric", "value (95% CI)"]]
    rows += [[k, fmt(v)] for k, v in m.items()]
    defs = r["definitions"]
    out = [
        Section(
            "Performance",
            html.escape(
                f"n = {r['n']} images, {r['n_boxes']} boxes ({r['split']} split). FROC hit: {defs['froc_hit']}. "
                f"Sensitivity at a rate: {defs['sensitivity_at_fp']}. CPM: {defs['cpm']}. AP: {defs['ap50']}. "
                f"Image-level AUC: {defs['image_auc']}."
            ),
            rows,
            [f for f in figs if f.title == "FROC"],
        ),
        Section("Detections", "", None, [f for f in figs if f.title == "Detections"]),
    ]
    op = r["operating_point"]
    out.append(
        Section(
            "Operating point",
            html.escape(
                f"Boxes are reported as findings when their score is >= {op['threshold']:.4f} ({op['method']}"
                + (
                    f"; validation sensitivity {op['val_sensitivity']:.3f} at {op['val_fp_per_image']:.2f} FP/image"
                    if "val_sensitivity" in op
                    else ""
                )
                + ")."
            ),
        )
    )
    out.append(uncertainty_section(r["uncertainty"], r["definitions"]["image_errors"]))
    if r["task_type"] == "lesions":
        out.append(subgroup_section(r.get("subgroups") or {}))
    d, tr = bundle.meta["data"], bundle.meta["training"]
    onnx = bundle.meta.get("onnx") or {}
    plan = bundle.plan(DetectionPlan)
    out.append(
        Section(
            "Model and data",
            "",
            [
                ["item", "value"],
                ["network", f"{bundle.meta['network']['name']} ({bundle.meta['network']['parameters']} parameters)"],
                ["detector", bundle.meta["network"]["detector"]],
                ["anchor shapes (rows, cols)", str(plan.anchor_shapes)],
                ["input", f"{bundle.input['n_channels']} x {bundle.input['spatial_size']}"],
                ["training data", f"{d['source']}, split: {d['split_method']}, n = {d['n']}"],
                ["excluded images", ", ".join(f"{e['key']} ({e['reason']})" for e in d["excluded"]) or "none"],
                ["coordinate conventions", "; ".join(d["conventions"])],
                ["optimiser", tr["optimizer"]],
                ["stopped by", tr["stopped_by"]],
                ["training warnings", "; ".join(tr.get("warnings", [])) or "none"],
                ["inference", str(r.get("inference_engine", ""))],
                ["test-time flip", _flip_text(bundle.meta.get("test_time_flip"))],
                ["ONNX (head maps) vs PyTorch max |diff|", str(onnx.get("max_abs_diff_vs_torch", onnx.get("error")))],
                ["versions", ", ".join(f"{k} {v}" for k, v in bundle.meta["versions"].items())],
            ],
        )
    )
    return out


def _flip_text(choice: dict[str, Any] | None) -> str:
    """The test-time flip decision in words (bundles from before it existed ran one pass)."""
    if not choice:
        return "not used (bundle from before the choice existed)"
    scores = "; ".join(
        f"{' + '.join(c['views'])}: {', '.join(f'val {k} {v}' for k, v in c.items() if k != 'views')}"
        for c in choice["candidates"]
    )
    verdict = "findings of the image and its mirror merged" if choice["kept"] else "the image alone"
    return f"{verdict} ({choice['decided_on']}: {choice['rule']}" + (f"; {scores})" if scores else ")")


def uncertainty_section(u: dict[str, Any], errors_definition: str) -> Section:
    """Per-image uncertainty: whether it ranks the images with errors first, and what the review flag buys."""
    thr = u.get("threshold")
    rule = (
        f"Images with uncertainty above {thr:.4f} are flagged for review ({u.get('review_rule')}); "
        f"{u['n_flagged']} of {u['n']} flagged here."
        if thr is not None
        else "The bundle holds no review threshold (trained before it existed), so no image is flagged."
    )
    rows: list[list[Any]] = [
        ["statistic", "value (95% CI)"],
        ["Spearman rho (uncertainty vs errors per image)", _value(u["spearman_uncertainty_vs_errors"])],
        ["share of flagged images with an error", _value(u["error_rate_flagged"])],
        ["share of unflagged images with an error", _value(u["error_rate_unflagged"])],
        ["images with an error", f"{u['n_with_errors']} of {u['n']}"],
    ]
    return Section(
        "Uncertainty and review",
        html.escape(
            f"Uncertainty per image: {u['method']}. Errors per image: {errors_definition}. A positive rho means the "
            f"uncertainty ranks images with errors first. {rule}"
        ),
        rows,
    )


def _value(entry: dict[str, Any]) -> str:
    return fmt(entry) if entry.get("value") is not None else f"undefined ({entry.get('undefined', '')})"
