"""Operating points chosen on validation data: Youden's J, or the threshold reaching a requested sensitivity."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve


def choose_threshold(
    y: np.ndarray, score: np.ndarray, target_sensitivity: float | None = None
) -> dict[str, float | str]:
    """Return ``{"method", "threshold", "val_sensitivity", "val_specificity"}``.

    Youden maximises sensitivity + specificity - 1; with ``target_sensitivity`` the highest threshold
    whose validation sensitivity reaches the target is taken (the most specific such point).
    """
    y = np.asarray(y).astype(int)
    if len(np.unique(y)) < 2:
        return {"method": "default", "threshold": 0.5, "val_sensitivity": float("nan"), "val_specificity": float("nan")}
    fpr, tpr, thr = roc_curve(y, score)
    thr = np.clip(thr, 0.0, 1.0)
    if target_sensitivity is None:
        i = int(np.argmax(tpr - fpr))
        method = "youden"
    else:
        reach = np.flatnonzero(tpr >= target_sensitivity)
        i = int(reach[0])
        method = f"sensitivity>={target_sensitivity:g}"
    return {
        "method": method,
        "threshold": float(thr[i]),
        "val_sensitivity": float(tpr[i]),
        "val_specificity": float(1 - fpr[i]),
    }
