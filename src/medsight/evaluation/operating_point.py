"""Operating points chosen on validation data: Youden's J, or the threshold reaching a requested sensitivity."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

from medsight.errors import MedsightError
from medsight.evaluation.calibration import check_probabilities


def choose_threshold(
    y: np.ndarray, score: np.ndarray, target_sensitivity: float | None = None
) -> dict[str, float | str]:
    """Return ``{"method", "threshold", "val_sensitivity", "val_specificity"}``.

    Youden maximises sensitivity + specificity - 1; with ``target_sensitivity`` (in (0, 1]) the highest threshold
    whose validation sensitivity reaches the target is taken (the most specific such point). ``score`` must be
    probabilities (NaN, infinite or outside [0, 1] is an error). A validation split without a positive or without
    a negative case has no ROC curve: the threshold is then 0.5, ``method`` is ``"default"`` and the validation
    sensitivity and specificity are NaN. The point "above every score" (nothing called positive) is the threshold
    1.0, or just above the highest score when a score reaches 1.0 (so that it still calls nothing positive).
    """
    if target_sensitivity is not None and not 0 < target_sensitivity <= 1:
        raise MedsightError(f"the target sensitivity must lie in (0, 1] (got {target_sensitivity})")
    y = np.asarray(y).astype(int)
    score = check_probabilities(score, "validation scores")
    if len(np.unique(y)) < 2:
        return {"method": "default", "threshold": 0.5, "val_sensitivity": float("nan"), "val_specificity": float("nan")}
    fpr, tpr, thr = roc_curve(y, score)
    above_all = max(1.0, float(np.nextafter(score.max(), np.inf)))
    thr = np.where(np.isinf(thr), above_all, thr)
    if target_sensitivity is None:
        i = int(np.argmax(tpr - fpr))
        method = "youden"
    else:
        reach = np.flatnonzero(tpr >= target_sensitivity - 1e-12)
        i = int(reach[0])
        method = f"sensitivity>={target_sensitivity:g}"
    return {
        "method": method,
        "threshold": float(thr[i]),
        "val_sensitivity": float(tpr[i]),
        "val_specificity": float(1 - fpr[i]),
    }
