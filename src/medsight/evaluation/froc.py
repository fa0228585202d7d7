"""Detection metrics: FROC with the LUNA16 CPM, average precision at an IoU threshold, image-level AUC.

Everything is computed from per-image matches made once (:func:`match_images`), so a bootstrap over images
only re-aggregates them: resampled images count as distinct images, as in the LUNA16 evaluation.

Conventions (2D and 3D alike, boxes as ``[x1, y1, (z1,) x2, y2, (z2)]``):

* **FROC hit** (LUNA16 style): a detection hits a lesion when its centre lies inside the lesion's box
  (``criterion="centre"``) or their IoU reaches ``iou`` (``criterion="iou"``). A lesion counts as found at a
  threshold when any detection hitting it scores at or above it; several detections on one lesion are one
  true positive and no false positive. A detection hitting no lesion is a false positive.
* **Sensitivity at r FP per image**: the highest sensitivity among thresholds whose FP per image is ≤ r
  (a step function, no interpolation). **CPM** is its mean over r in 1/8, 1/4, 1/2, 1, 2, 4, 8.
* **AP at IoU t** (PASCAL VOC 2010+ all-point): detections of a class over all images sorted by score, each
  greedily matched (in score order) to the unmatched ground-truth box of highest IoU ≥ t in its image;
  duplicates are false positives; AP is the area under the precision envelope of the PR curve.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from monai.data.box_utils import box_iou
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _boxes(b: ArrayLike) -> np.ndarray:
    arr = np.asarray(b, dtype=np.float64)
    return arr.reshape(-1, arr.shape[-1] if arr.size else 4)


def iou_matrix(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """IoU between every box of ``a`` and every box of ``b`` (MONAI's box_iou; 2D or 3D)."""
    aa, bb = _boxes(a), _boxes(b)
    if len(aa) == 0 or len(bb) == 0:
        return np.zeros((len(aa), len(bb)))
    return np.asarray(box_iou(aa, bb), dtype=np.float64)


def centres_inside(det: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``[i, j]`` is True when detection i's centre lies inside ground-truth box j (edges included)."""
    det, gt = _boxes(det), _boxes(gt)
    if len(det) == 0 or len(gt) == 0:
        return np.zeros((len(det), len(gt)), bool)
    d = det.shape[1] // 2
    c = (det[:, :d] + det[:, d:]) / 2
    lo, hi = gt[None, :, :d], gt[None, :, d:]
    return np.all((c[:, None, :] >= lo) & (c[:, None, :] <= hi), axis=2)


@dataclass
class ImageMatch:
    """What one image contributes: per lesion the best hitting score, per detection FP/TP flags for FROC and AP."""

    lesion_best: np.ndarray  # (n_gt,) best score of a hitting detection, -inf when none
    fp_scores: np.ndarray  # scores of detections hitting no lesion (FROC)
    ap_scores: np.ndarray  # (n_det,) scores, for AP
    ap_tp: np.ndarray  # (n_det,) 1 when matched at the IoU threshold (greedy), else 0
    ap_labels: np.ndarray  # (n_det,) predicted class
    gt_labels: np.ndarray  # (n_gt,)
    max_score: float  # image-level "any lesion" score (0 when no detection)


def match_image(
    det_boxes: ArrayLike,
    det_scores: ArrayLike,
    gt_boxes: ArrayLike,
    det_labels: ArrayLike | None = None,
    gt_labels: ArrayLike | None = None,
    criterion: str = "centre",
    froc_iou: float = 0.1,
    ap_iou: float = 0.5,
) -> ImageMatch:
    """Match one image's detections to its ground truth, for FROC (class-agnostic) and AP (per class)."""
    det, gt = _boxes(det_boxes), _boxes(gt_boxes)
    scores = np.asarray(det_scores, np.float64).reshape(-1)
    dl = np.zeros(len(scores), int) if det_labels is None else np.asarray(det_labels, int).reshape(-1)
    gl = np.zeros(len(gt), int) if gt_labels is None else np.asarray(gt_labels, int).reshape(-1)
    if criterion == "centre":
        hit = centres_inside(det, gt)
    elif criterion == "iou":
        hit = iou_matrix(det, gt) >= froc_iou
    else:
        raise ValueError(f"unknown FROC hit criterion {criterion!r} (centre or iou)")
    best = np.full(len(gt), -np.inf)
    for j in range(len(gt)):
        if hit[:, j].any():
            best[j] = scores[hit[:, j]].max()
    fp = scores[~hit.any(axis=1)] if len(scores) else np.zeros(0)

    iou = iou_matrix(det, gt)
    tp = np.zeros(len(scores), int)
    taken = np.zeros(len(gt), bool)
    for i in np.argsort(-scores, kind="stable"):
        cand = np.flatnonzero((gl == dl[i]) & ~taken & (iou[i] >= ap_iou)) if len(gt) else np.zeros(0, int)
        if len(cand):
            j = cand[np.argmax(iou[i, cand])]
            taken[j] = True
            tp[i] = 1
    return ImageMatch(best, fp, scores, tp, dl, gl, float(scores.max()) if len(scores) else 0.0)


def froc_curve(matches: Sequence[ImageMatch]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds descending, FP per image, sensitivity) at every distinct score."""
    n_images = len(matches)
    best = np.concatenate([m.lesion_best for m in matches]) if matches else np.zeros(0)
    fps = np.concatenate([m.fp_scores for m in matches]) if matches else np.zeros(0)
    n_lesions = len(best)
    thr = np.unique(np.concatenate([best[np.isfinite(best)], fps]))[::-1]
    if n_lesions == 0 or n_images == 0:
        return thr, np.zeros(len(thr)), np.full(len(thr), np.nan)
    best_sorted, fp_sorted = np.sort(best), np.sort(fps)
    found = len(best_sorted) - np.searchsorted(best_sorted, thr, side="left")
    false = len(fp_sorted) - np.searchsorted(fp_sorted, thr, side="left")
    return thr, false / n_images, found / n_lesions


def sensitivity_at(fppi: np.ndarray, sens: np.ndarray, rate: float) -> float:
    """Highest sensitivity whose FP per image is ≤ ``rate`` (0 when no threshold qualifies)."""
    ok = fppi <= rate + 1e-12
    if len(sens) and np.all(np.isnan(sens)):
        return float("nan")
    return float(sens[ok].max()) if ok.any() else 0.0


def froc_metrics(matches: Sequence[ImageMatch], rates: Sequence[float] = FP_RATES) -> dict[str, float]:
    """Sensitivity at each FP rate (keys ``sens@0.125fp`` ...) and their mean ``cpm``."""
    if sum(len(m.lesion_best) for m in matches) == 0:
        return {**{f"sens@{r:g}fp": float("nan") for r in rates}, "cpm": float("nan")}
    _, fppi, sens = froc_curve(matches)
    out = {f"sens@{r:g}fp": sensitivity_at(fppi, sens, r) for r in rates}
    vals = list(out.values())
    out["cpm"] = float(np.mean(vals)) if not np.any(np.isnan(vals)) else float("nan")
    return out


def average_precision(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> float:
    """All-point interpolated AP (area under the monotone precision envelope)."""
    if n_gt == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    tps = np.asarray(tp, float)[order]
    ctp, cfp = np.cumsum(tps), np.cumsum(1 - tps)
    recall = ctp / n_gt
    precision = ctp / np.maximum(ctp + cfp, 1e-12)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[1.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def ap_per_class(matches: Sequence[ImageMatch], n_classes: int) -> list[float]:
    """AP at the IoU threshold the matches were made with, one per class."""
    scores = np.concatenate([m.ap_scores for m in matches]) if matches else np.zeros(0)
    tp = np.concatenate([m.ap_tp for m in matches]) if matches else np.zeros(0)
    labels = np.concatenate([m.ap_labels for m in matches]) if matches else np.zeros(0)
    gts = np.concatenate([m.gt_labels for m in matches]) if matches else np.zeros(0)
    return [average_precision(scores[labels == c], tp[labels == c], int(np.sum(gts == c))) for c in range(n_classes)]


def detection_metrics(matches: Sequence[ImageMatch], class_names: Sequence[str], froc: bool = True) -> dict[str, float]:
    """FROC sensitivities + CPM (when ``froc``), AP@IoU per class and their mean (mAP), image-level AUC."""
    out: dict[str, float] = froc_metrics(matches) if froc else {}
    aps = ap_per_class(matches, len(class_names))
    for name, ap in zip(class_names, aps, strict=True):
        out[f"ap50_{name.lower().replace(' ', '_')}"] = ap
    out["map50"] = float(np.nanmean(aps)) if not np.all(np.isnan(aps)) else float("nan")
    has = np.asarray([len(m.gt_labels) > 0 for m in matches], int)
    out["image_auc"] = (
        float(roc_auc_score(has, [m.max_score for m in matches])) if len(np.unique(has)) == 2 else float("nan")
    )
    return out


def froc_plot(matches: Sequence[ImageMatch], title: str = "FROC (test)") -> bytes:
    """The FROC curve on a log FP axis with the seven CPM points marked, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, fppi, sens = froc_curve(matches)
    fig, ax = plt.subplots(figsize=(4.4, 4))
    if len(fppi):
        ax.step(np.maximum(fppi, 1e-3), sens, where="post", label="FROC")
        pts = [sensitivity_at(fppi, sens, r) for r in FP_RATES]
        ax.plot(FP_RATES, pts, "ko", label=f"CPM {np.mean(pts):.3f}")
    ax.set_xscale("log")
    ax.set(xlabel="false positives per image", ylabel="lesion sensitivity", title=title, ylim=(0, 1.02))
    ax.set_xlim(0.06, 16)
    ax.legend(fontsize=7, loc="lower right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
