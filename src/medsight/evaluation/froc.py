"""Detection metrics: FROC with the LUNA16 CPM, AP@0.5 as COCO computes it, image-level AUC, per-image errors.

Everything is computed from per-image matches made once (:func:`match_image`), so a bootstrap over images only
re-aggregates them: resampled images count as distinct images, as in the LUNA16 evaluation.

Conventions (boxes as ``[x1, y1, x2, y2]``, 2D; the box criterion and IoU work in 3D too):

* **FROC hit** (LUNA16): a detection hits a circular lesion when the detection's centre lies strictly within the
  lesion's radius of the lesion's centre (``criterion="radius"``; LUNA16's ``dist < radius``). A lesion kept as a
  box is the circle inscribed in it, which recovers mini-MIAS's centre and radius exactly (its boxes are centre ±
  radius). For lesions that are boxes by nature, ``criterion="centre"`` counts a hit when the detection's centre
  lies inside the box (edges included). A lesion is found at a threshold when any detection hitting it scores at
  or above it; several detections on one lesion are one true positive and no false positive (LUNA16); a detection
  hitting no lesion is a false positive; a detection within the radius of two overlapping lesions finds both (as in
  LUNA16's evaluation script, which only prints a warning). Scores must be finite and non-negative, and a lesion
  needs a radius above 0 (a zero-size lesion could never be hit): either is an error, not a silent miss. A hit
  scoring exactly 0 counts as a miss (0 is the score of a missed lesion in MONAI's curve).
* **FROC curve and sensitivity at r FP per image**: MONAI's ``compute_froc_curve_data`` (a missed lesion scores
  0, CAMELYON's convention) and ``compute_froc_score`` (linear interpolation of sensitivity against FP per image,
  from (0, 0) above every score, flat beyond the last point). **CPM** is the mean at r = 1/8, 1/4, 1/2, 1, 2, 4, 8.
* **AP@0.5** (COCO): MONAI's ``matching_batch`` (per class, detections in score order each take the unmatched
  ground-truth box of highest IoU ≥ 0.5; duplicates are false positives; the top 100 detections per image) and
  ``COCOMetric`` (precision envelope read at 101 recall points). The mean over classes (mAP) leaves out a class
  with no ground truth (COCOMetric would average its -1 in).

The hit test itself is hand-written (a distance, or a point in a box): MONAI's point-based
``compute_fp_tp_probs_nd`` needs a rasterised label mask, which rounds centres to pixels and cannot hold
overlapping lesions.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from monai.apps.detection.metrics.coco import COCOMetric
from monai.apps.detection.metrics.matching import matching_batch
from monai.data.box_utils import box_iou
from monai.metrics import compute_froc_curve_data, compute_froc_score
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score

from medsight.errors import MedsightError

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
AP_IOU = 0.5
MAX_DETECTIONS = 100  # COCO's limit; the detector keeps at most 50 per image
CRITERIA = ("radius", "centre")


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


def lesion_circles(gt: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(centres (n, 2), radii (n,)) of the circles inscribed in lesion boxes: exact for centre ± radius boxes."""
    b = _boxes(gt)
    d = b.shape[1] // 2
    return (b[:, :d] + b[:, d:]) / 2, np.min(b[:, d:] - b[:, :d], axis=1) / 2


def within_radius(det: ArrayLike, gt: ArrayLike) -> np.ndarray:
    """``[i, j]`` is True when detection i's centre lies strictly within lesion j's radius of its centre."""
    dd, gg = _boxes(det), _boxes(gt)
    if len(dd) == 0 or len(gg) == 0:
        return np.zeros((len(dd), len(gg)), bool)
    k = dd.shape[1] // 2
    centre = (dd[:, :k] + dd[:, k:]) / 2
    lesion, radius = lesion_circles(gg)
    dist = np.linalg.norm(centre[:, None, :] - lesion[None, :, :], axis=2)
    return np.asarray(dist < radius[None, :])


@dataclass
class ImageMatch:
    """What one image contributes: per lesion the best hitting score, the FROC false positives, the COCO match."""

    lesion_best: np.ndarray  # (n_gt,) best score of a hitting detection; 0 when none (MONAI's "missed")
    fp_scores: np.ndarray  # scores of detections hitting no lesion (FROC)
    coco: dict[int, dict[str, np.ndarray]]  # MONAI matching_batch result of this image, per class, at IoU 0.5
    gt_labels: np.ndarray  # (n_gt,)
    max_score: float  # image-level "any lesion" score (0 when no detection)


def match_image(
    det_boxes: ArrayLike,
    det_scores: ArrayLike,
    gt_boxes: ArrayLike,
    det_labels: ArrayLike | None = None,
    gt_labels: ArrayLike | None = None,
    criterion: str = "radius",
) -> ImageMatch:
    """Match one image's detections to its ground truth: FROC (class-agnostic, ``criterion``) and COCO (per class)."""
    det, gt = _boxes(det_boxes), _boxes(gt_boxes)
    scores = np.asarray(det_scores, np.float64).reshape(-1)
    if len(scores) != len(det):
        raise MedsightError(f"{len(det)} detection boxes but {len(scores)} scores")
    if not np.all(np.isfinite(scores)) or np.any(scores < 0):
        raise MedsightError(
            "detection scores must be finite and non-negative (a missed lesion scores 0, MONAI's FROC convention; "
            f"got {', '.join(f'{v:g}' for v in scores[~np.isfinite(scores) | (scores < 0)][:3])})"
        )
    dl = np.zeros(len(scores), int) if det_labels is None else np.asarray(det_labels, int).reshape(-1)
    gl = np.zeros(len(gt), int) if gt_labels is None else np.asarray(gt_labels, int).reshape(-1)
    if criterion == "radius":
        _, radius = lesion_circles(gt)
        if np.any(~(radius > 0)):
            raise MedsightError(
                f"lesion {int(np.flatnonzero(~(radius > 0))[0])} of this image has no radius (a box of zero width or "
                "height): no detection can lie strictly within it, so it would be counted as missed"
            )
        hit = within_radius(det, gt)
    elif criterion == "centre":
        hit = centres_inside(det, gt)
    else:
        raise ValueError(f"unknown FROC hit criterion {criterion!r} (one of {', '.join(CRITERIA)})")
    best = np.zeros(len(gt))
    for j in range(len(gt)):
        if hit[:, j].any():
            best[j] = scores[hit[:, j]].max()
    fp = scores[~hit.any(axis=1)] if len(scores) else np.zeros(0)
    (coco,) = matching_batch(
        iou_fn=iou_matrix,
        iou_thresholds=[AP_IOU],
        pred_boxes=[det],
        pred_classes=[dl],
        pred_scores=[scores],
        gt_boxes=[gt],
        gt_classes=[gl],
        max_detections=MAX_DETECTIONS,
    )
    return ImageMatch(best, fp, coco, gl, float(scores.max()) if len(scores) else 0.0)


def froc_curve(matches: Sequence[ImageMatch]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds ascending, FP per image, sensitivity): MONAI's ``compute_froc_curve_data``, whose last point
    (threshold +inf) is (0, 0).

    MONAI starts the curve at the second-lowest distinct score (its lowest is taken to be the score 0 of missed
    lesions); a 0 is added to the false-positive scores so that, when every lesion is found, the operating point
    of the lowest-scoring detection is kept. It changes no count at a threshold above 0.
    """
    n_images = len(matches)
    tp = np.concatenate([m.lesion_best for m in matches]) if matches else np.zeros(0)
    fp = np.concatenate([*(m.fp_scores for m in matches), np.zeros(1)])
    if len(tp) == 0 or n_images == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    fppi, sens = compute_froc_curve_data(fp, tp, len(tp), n_images)
    thresholds = np.append(np.unique(np.concatenate([fp, tp]))[1:], np.inf)
    return thresholds, np.asarray(fppi, np.float64), np.asarray(sens, np.float64)


def sensitivity_at(fppi: np.ndarray, sens: np.ndarray, rate: float) -> float:
    """Sensitivity at ``rate`` FP per image, interpolated along the curve (MONAI's ``compute_froc_score``)."""
    return float(compute_froc_score(fppi, sens, (rate,))) if len(fppi) else float("nan")


def froc_metrics(matches: Sequence[ImageMatch], rates: Sequence[float] = FP_RATES) -> dict[str, float]:
    """Sensitivity at each FP rate (keys ``sens@0.125fp`` ...) and ``cpm``, their mean (MONAI's froc score)."""
    if sum(len(m.lesion_best) for m in matches) == 0:
        return {**{f"sens@{r:g}fp": float("nan") for r in rates}, "cpm": float("nan")}
    _, fppi, sens = froc_curve(matches)
    out = {f"sens@{r:g}fp": sensitivity_at(fppi, sens, r) for r in rates}
    out["cpm"] = float(compute_froc_score(fppi, sens, tuple(rates)))
    return out


def ap_per_class(matches: Sequence[ImageMatch], n_classes: int) -> list[float]:
    """AP@0.5 per class from MONAI's ``COCOMetric``; NaN for a class without ground truth in ``matches``."""
    n_gt = np.bincount(np.concatenate([m.gt_labels for m in matches]).astype(int), minlength=n_classes)
    present = [c for c in range(n_classes) if n_gt[c] > 0]
    aps = [float("nan")] * n_classes
    if not present:
        return aps
    metric = COCOMetric(
        [str(c) for c in present],
        iou_list=(AP_IOU,),
        iou_range=(AP_IOU, AP_IOU, 0.05),
        max_detection=(MAX_DETECTIONS,),
        verbose=False,
    )
    # COCOMetric indexes classes by position: renumber the present classes 0..k-1
    results = [{k: m.coco[c] for k, c in enumerate(present) if c in m.coco} for m in matches]
    values, _ = metric(results)
    for c in present:
        aps[c] = float(values[f"{c}_AP_IoU_{AP_IOU:.2f}_MaxDet_{MAX_DETECTIONS}"])
    return aps


def detection_metrics(matches: Sequence[ImageMatch], class_names: Sequence[str], froc: bool = True) -> dict[str, float]:
    """FROC sensitivities + CPM (when ``froc``), AP@0.5 per class and their mean (mAP), image-level AUC."""
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


def image_errors(m: ImageMatch, threshold: float, froc: bool) -> int:
    """Misses plus false positives of one image at a score threshold: by the FROC hit (``froc``, lesions) or by the
    COCO match at IoU 0.5 (objects). The COCO match is greedy in score order, so the match of the detections at or
    above the threshold does not depend on those below it."""
    if froc:
        return int(np.sum(m.lesion_best < threshold) + np.sum(m.fp_scores >= threshold))
    errors = 0
    for r in m.coco.values():
        kept = r["dtScores"] >= threshold
        tp = int(r["dtMatches"][0][kept].sum()) if kept.any() else 0
        errors += int(kept.sum()) - tp + int(np.sum(r["gtIgnore"] == 0)) - tp
    return errors


def froc_plot(matches: Sequence[ImageMatch], title: str = "FROC (test)") -> bytes:
    """The FROC curve (as interpolated) on a log FP axis with the seven CPM points marked, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, fppi, sens = froc_curve(matches)
    fig, ax = plt.subplots(figsize=(4.4, 4))
    if len(fppi):
        grid = np.geomspace(FP_RATES[0] / 2, FP_RATES[-1] * 2, 200)
        ax.plot(grid, [sensitivity_at(fppi, sens, x) for x in grid], label="FROC")
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
