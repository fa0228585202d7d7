"""Per-image detection uncertainty: how much the findings change when the model sees the image a second way.

**Measure** (test-time augmentation disagreement). The model runs on the image and on a second view: the
horizontal mirror when it was trained with flips (lesions), else the image at the lowest contrast of its training
augmentation (x 0.85; lateral objects such as lungs must not be mirrored). The second view's boxes are mapped back
onto the first, boxes of the same class are paired one-to-one by IoU (Hungarian assignment, pairs need IoU ≥ 0.3;
a box left unpaired is paired with a score of 0), and the image's uncertainty is the largest score change of any
pair: ``max |s_first − s_second|`` in [0, 1]. For two views that is twice the largest per-finding score standard
deviation, so it is the "score variance of matched boxes", and a box that moves counts as a score change.
Why not 1 − IoU of the top boxes: on an image without findings the top box is a low-scoring guess whose place is
arbitrary, so a model confidently finding nothing would look uncertain, and every box but one would be ignored.
Here a low-scoring box can move freely and add at most its own score.

**Correctness** per image: misses plus false positives at the operating point (``froc.image_errors``).

**Review threshold**: chosen on validation at the end of training as the 80% quantile of the validation images'
uncertainties, so about one image in five like them is flagged (the rule segmentation uses too). A fixed quantile
rather than a cut tuned on validation errors: a validation split of about 30 images would let a handful of images
decide it, while the quantile fixes the review workload; the evaluation reports what it buys (error rates of
flagged and kept images). An image is flagged when its uncertainty is above the threshold. Evaluate and predict
read the threshold from ``bundle.json["uncertainty"]`` and never choose it on the data they score.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import spearmanr

from medsight.evaluation.froc import iou_matrix
from medsight.evaluation.metrics import N_BOOTSTRAP, bootstrap
from medsight.tasks.detection.network import Detections

PAIR_IOU = 0.3
LOW_CONTRAST = 0.85  # the lower end of the training augmentation's contrast factor
#: The validation quantile of the uncertainty above which an image is flagged (about 1 image in 5 flagged).
REVIEW_QUANTILE = 0.8

Detect = Callable[[np.ndarray, Sequence[tuple[float, float]]], list[Detections]]


def method(flip: bool) -> str:
    """The measure in words, as bundle.json, metrics.json and the card state it."""
    view = "horizontal flip" if flip else f"contrast x{LOW_CONTRAST:g}"
    return (
        f"test-time augmentation ({view}): largest score change of a finding between the two views, boxes of one "
        f"class paired by IoU >= {PAIR_IOU:g} (unpaired = score 0 in the other view)"
    )


def paired(
    first: Detections, second: Detections
) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per class ``c`` present in either view: the indices (within that class's boxes) of the pairs, rows in
    ``first`` and columns in ``second`` (one-to-one by IoU, Hungarian assignment, IoU >= :data:`PAIR_IOU`), and
    the masks of the boxes of each view left unpaired."""
    for c in np.union1d(first.labels, second.labels):
        a, b = first.labels == c, second.labels == c
        iou = iou_matrix(first.boxes[a], second.boxes[b])
        alone_a, alone_b = np.ones(int(a.sum()), bool), np.ones(int(b.sum()), bool)
        rows = cols = np.zeros(0, int)
        if iou.size:
            rows, cols = linear_sum_assignment(iou, maximize=True)
            ok = iou[rows, cols] >= PAIR_IOU
            rows, cols = rows[ok], cols[ok]
            alone_a[rows], alone_b[cols] = False, False
        yield int(c), rows, cols, alone_a, alone_b


def disagreement(first: Detections, second: Detections) -> float:
    """``max |s_first − s_second|`` over boxes paired one-to-one by IoU within each class (unpaired: score 0)."""
    worst = 0.0
    for c, rows, cols, alone_a, alone_b in paired(first, second):
        sa, sb = first.scores[first.labels == c], second.scores[second.labels == c]
        if len(rows):
            worst = max(worst, float(np.max(np.abs(sa[rows] - sb[cols]))))
        worst = max(worst, float(sa[alone_a].max(initial=0.0)), float(sb[alone_b].max(initial=0.0)))
    return worst


def second_view(images: np.ndarray, flip: bool) -> np.ndarray:
    """The prepared images (N, 1, S, S) mirrored left-right, or at lower contrast."""
    out = images[..., ::-1] if flip else images * LOW_CONTRAST
    return np.ascontiguousarray(out, np.float32)


def unflip(d: Detections, width: int, scale: tuple[float, float]) -> Detections:
    """Boxes found on the mirrored input mapped back onto the image read: in input pixels x ↦ width − x, and the
    image read is the input divided by its per-axis scale."""
    span = width / scale[0]
    boxes = d.boxes.copy()
    boxes[:, [0, 2]] = span - d.boxes[:, [2, 0]]
    return Detections(boxes, d.scores, d.labels)


def second_pass(
    detect: Detect, images: np.ndarray, scales: Sequence[tuple[float, float]], flip: bool
) -> list[Detections]:
    """The detections of the second view (:func:`second_view`), mirrored ones mapped back onto the image read."""
    second = detect(second_view(images, flip), scales)
    if flip:
        second = [unflip(d, images.shape[-1], s) for d, s in zip(second, scales, strict=True)]
    return second


def spread(first: Sequence[Detections], second: Sequence[Detections]) -> np.ndarray:
    """Each image's uncertainty: :func:`disagreement` between its detections on the image (``first``) and on the
    second view mapped back (``second``, from :func:`second_pass`)."""
    return np.asarray([disagreement(a, b) for a, b in zip(first, second, strict=True)], np.float64)


def flag(value: float, threshold: float | None) -> bool | None:
    """Flag for review when the uncertainty is above the threshold; ``None`` when the bundle has none."""
    return None if threshold is None else bool(value > threshold)


def choose_review_threshold(uncertainty: np.ndarray, errors: np.ndarray, flip: bool) -> dict[str, Any]:
    """The review threshold from the validation images (their :data:`REVIEW_QUANTILE` quantile), with what it does
    on them; stored in ``bundle.json["uncertainty"]`` by training."""
    u = np.asarray(uncertainty, np.float64)
    threshold = float(np.quantile(u, REVIEW_QUANTILE)) if u.size else None
    summary = ranking(u, errors, threshold, n_boot=0)
    return {
        "method": method(flip),
        "threshold": threshold,
        "quantile": REVIEW_QUANTILE,
        "rule": f"flag an image for review when its uncertainty is above the {REVIEW_QUANTILE:.0%} quantile of the "
        "validation images' uncertainties (about 1 image in 5 like them is flagged)",
        "decided_on": f"{u.size} validation image(s)",
        "validation": {
            "n_flagged": summary["n_flagged"],
            "spearman": summary["spearman_uncertainty_vs_errors"]["value"],
            "error_rate_flagged": summary["error_rate_flagged"]["value"],
            "error_rate_unflagged": summary["error_rate_unflagged"]["value"],
        },
    }


def spearman(uncertainty: np.ndarray, errors: np.ndarray) -> float:
    """Spearman's rho between uncertainty and errors (NaN when either is constant)."""
    if len(uncertainty) < 3 or np.ptp(uncertainty) == 0 or np.ptp(errors) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(uncertainty, errors).statistic)


def ranking(
    uncertainty: np.ndarray, errors: np.ndarray, threshold: float | None, n_boot: int = N_BOOTSTRAP
) -> dict[str, Any]:
    """Does uncertainty rank the bad images first? Spearman's rho between per-image uncertainty and per-image errors
    (positive: the more uncertain, the more errors), and the share of images with an error among flagged and
    unflagged images, each with a percentile bootstrap 95% CI over images. An undefined statistic is ``None`` with
    the reason."""
    u, e = np.asarray(uncertainty, np.float64), np.asarray(errors, np.float64)
    flagged = u > threshold if threshold is not None else np.zeros(len(u), bool)

    def stats(ix: np.ndarray) -> dict[str, float]:
        out = {"spearman": spearman(u[ix], e[ix])}
        if threshold is not None:
            out["flagged"] = _rate(e[ix][flagged[ix]] > 0)
            out["unflagged"] = _rate(e[ix][~flagged[ix]] > 0)
        return out

    if n_boot > 0:
        boot: dict[str, dict[str, Any]] = bootstrap(stats, len(u), None, n_boot)
    else:
        boot = {k: {"value": _finite(v), "ci95": [None, None]} for k, v in stats(np.arange(len(u))).items()}
    why = {
        "spearman": "fewer than 3 images, or every image has the same uncertainty or the same number of errors",
        "flagged": "no image was above the threshold",
        "unflagged": "every image was above the threshold",
    }
    for key, entry in boot.items():
        if entry.get("value") is None:
            boot[key] = {"value": None, "ci95": [None, None], "undefined": why[key]}
    no_threshold = {"value": None, "ci95": [None, None], "undefined": "the bundle has no review threshold"}
    return {
        "n": int(u.size),
        "n_with_errors": int(np.sum(e > 0)),
        "spearman_uncertainty_vs_errors": boot["spearman"],
        "threshold": threshold,
        "n_flagged": int(flagged.sum()) if threshold is not None else None,
        "error_rate_flagged": boot.get("flagged", no_threshold),
        "error_rate_unflagged": boot.get("unflagged", no_threshold),
    }


def _rate(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


def _finite(v: float) -> float | None:
    return None if np.isnan(v) else float(v)
