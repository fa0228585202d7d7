"""Figures for the model card (ROC, PR, reliability, confusion matrix, overlays) as PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import auc, confusion_matrix, precision_recall_curve, roc_curve

from medsight.evaluation.calibration import reliability


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


Curves = dict[str, tuple[np.ndarray, np.ndarray]]


def _legend(ax: plt.Axes, loc: str) -> None:
    """A legend when something was drawn with a label (a one-class split draws no curve)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc=loc)  # type: ignore[call-overload]


def roc_plot(curves: Curves, point: tuple[float, float] | None = None) -> bytes:
    """ROC curves, one per name → (truth 0/1, score), with the operating point marked."""
    fig, ax = plt.subplots(figsize=(4.2, 4))
    drawn = 0
    for name, (yy, s) in curves.items():
        if len(np.unique(yy)) < 2:
            continue
        fpr, tpr, _ = roc_curve(yy, s)
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
        drawn += 1
    if not drawn:  # a split of one class (another site's confirmed lesions): there is no curve to draw
        ax.text(0.5, 0.5, "one class only on this split:\nno ROC curve", ha="center", va="center", fontsize=9)
    if point is not None and None not in point:  # sensitivity or specificity is undefined on a one-class split
        ax.plot([1 - point[1]], [point[0]], "ko", label="operating point")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (test)")
    _legend(ax, "lower right")
    return _png(fig)


def pr_plot(curves: Curves) -> bytes:
    """Precision-recall curves, one per name → (truth 0/1, score)."""
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for name, (yy, s) in curves.items():
        if len(np.unique(yy)) < 2:
            continue
        prec, rec, _ = precision_recall_curve(yy, s)
        ax.plot(rec, prec, label=f"{name} (prevalence {np.mean(yy):.2f})")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall (test)", ylim=(0, 1.02))
    _legend(ax, "lower left")
    return _png(fig)


def reliability_plot(y: np.ndarray, curves: dict[str, np.ndarray]) -> bytes:
    """Reliability diagram: observed frequency vs predicted probability, before and after calibration, on the ECE's
    bins (an empty split draws only the diagonal)."""
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect")
    for name, p in curves.items():
        mean_pred, frac = reliability(y, p)
        ax.plot(mean_pred, frac, "o-", label=name)
    ax.set(xlabel="predicted probability", ylabel="observed frequency", title="Reliability (test)")
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def confusion_plot(y: np.ndarray, pred: np.ndarray, labels: Sequence[str]) -> bytes:
    """Counts of true (rows) against decided (columns) labels; all zeros when there is no case."""
    k = len(labels)
    cm = confusion_matrix(y, pred, labels=list(range(k))) if len(y) else np.zeros((k, k), int)
    fig, ax = plt.subplots(figsize=(1.4 + 0.7 * len(labels), 1.2 + 0.7 * len(labels)))
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black"
            )
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion (operating point)")
    return _png(fig)


def overlay_grid(panels: list[tuple[str, np.ndarray]], columns: int = 4) -> bytes:
    """A grid of RGB overlays, each with its caption."""
    rows = max(1, -(-len(panels) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.3 * columns, 2.5 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (caption, rgb) in zip(axes.ravel(), panels, strict=False):
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(caption, fontsize=7)
    return _png(fig)


def png_image(rgb: np.ndarray) -> bytes:
    """Encode an RGB uint8 array as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()
