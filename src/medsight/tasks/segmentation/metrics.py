"""Segmentation metrics per case and class (MONAI's DiceMetric, HausdorffDistanceMetric, SurfaceDiceMetric) and
pixel-level metrics inside a region of interest (DRIVE's protocol), with bootstrap CIs over cases."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medsight.evaluation.metrics import N_BOOTSTRAP, bootstrap

HIST_BINS = 2000


def _onehot(mask: np.ndarray, n_classes: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(mask, dtype=np.int64))
    return torch.nn.functional.one_hot(t, n_classes).movedim(-1, 0)[None].float()


def _np(t: Any) -> np.ndarray:
    """A metric's output (a tensor, or a sequence of them) as a numpy array."""
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().numpy()
    return np.asarray([_np(x) for x in t])


def dice_per_case(preds: Sequence[np.ndarray], labels: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """``(cases, classes-1)`` Dice of every foreground class; NaN where a class is absent from both."""
    from monai.metrics import DiceMetric

    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    rows = [_np(metric(_onehot(p, n_classes), _onehot(y, n_classes)))[0] for p, y in zip(preds, labels, strict=True)]
    return np.asarray(rows, dtype=float).reshape(len(rows), n_classes - 1)


def case_metrics(
    pred: np.ndarray, label: np.ndarray, n_classes: int, spacing: Sequence[float], nsd_tolerance: float
) -> dict[str, np.ndarray]:
    """Dice, 95% Hausdorff distance and normalised surface Dice (tolerance in the spacing's units) per
    foreground class for one case. HD95 is NaN when the prediction or the reference of a class is empty."""
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDiceMetric

    p, y = _onehot(pred, n_classes), _onehot(label, n_classes)
    sp = [float(s) for s in spacing]
    dice = _np(DiceMetric(include_background=False, reduction="none", ignore_empty=True)(p, y))[0]
    hd95 = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(p, y, spacing=sp)
    nsd = SurfaceDiceMetric([nsd_tolerance] * (n_classes - 1), include_background=False, reduction="none")(
        p, y, spacing=sp
    )
    hd = np.asarray(_np(hd95)[0], dtype=float)
    hd[~np.isfinite(hd)] = np.nan
    return {"dice": np.asarray(dice, float), "hd95": hd, "nsd": np.asarray(_np(nsd)[0], float)}


def summarise(
    per_case: list[dict[str, np.ndarray]], class_names: Sequence[str], n_boot: int = N_BOOTSTRAP
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Overall metrics (mean over cases; "dice" is the mean over foreground classes) and per-class metrics,
    each with a 95% bootstrap CI over cases."""
    arrays = {k: np.asarray([c[k] for c in per_case], dtype=float) for k in ("dice", "hd95", "nsd")}
    n = len(per_case)

    def overall(ix: np.ndarray) -> dict[str, float]:
        out: dict[str, float] = {}
        for k, a in arrays.items():
            out[k] = _nanmean(_nanmean_rows(a[ix]))
        for k, a in arrays.items():
            for c, name in enumerate(class_names):
                out[f"{k}_{name}"] = _nanmean(a[ix, c])
        return out

    metrics = bootstrap(overall, n, None, n_boot)
    per_class = {name: {k: metrics[f"{k}_{name}"] for k in ("dice", "hd95", "nsd")} for name in class_names}
    return metrics, per_class


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        valid = ~np.isnan(a)
        s = np.where(valid, a, 0).sum(axis=1)
        c = valid.sum(axis=1)
        return np.where(c > 0, s / np.maximum(c, 1), np.nan)


def _nanmean(a: np.ndarray) -> float:
    a = np.asarray(a, dtype=float)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else float("nan")


# ----------------------------------------------------------------------------------------------- pixel metrics


class PixelCounts:
    """Per-image histograms of the foreground probability for reference positives and negatives inside the ROI,
    plus confusion counts at the threshold: enough to pool AUC, F1, sensitivity, specificity and accuracy over any
    resample of the images without keeping every pixel."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self.pos: list[np.ndarray] = []
        self.neg: list[np.ndarray] = []
        self.counts: list[np.ndarray] = []  # tp, fp, tn, fn
        self.scores: list[np.ndarray] = []
        self.truths: list[np.ndarray] = []

    def add(self, score: np.ndarray, truth: np.ndarray, roi: np.ndarray | None) -> None:
        inside = np.ones(truth.shape, bool) if roi is None else roi.astype(bool)
        s = np.asarray(score, dtype=np.float64)[inside]
        t = np.asarray(truth)[inside] > 0
        bins = np.minimum((s * HIST_BINS).astype(np.int64), HIST_BINS - 1)
        self.pos.append(np.bincount(bins[t], minlength=HIST_BINS))
        self.neg.append(np.bincount(bins[~t], minlength=HIST_BINS))
        pred = s >= self.threshold
        self.counts.append(
            np.asarray([np.sum(pred & t), np.sum(pred & ~t), np.sum(~pred & ~t), np.sum(~pred & t)], dtype=np.int64)
        )
        self.scores.append(s.astype(np.float32))
        self.truths.append(t)

    def metrics(self, ix: np.ndarray, exact_auc: bool = False) -> dict[str, float]:
        tp, fp, tn, fn = (float(v) for v in np.sum([self.counts[i] for i in ix], axis=0))
        sens = tp / (tp + fn) if tp + fn else float("nan")
        spec = tn / (tn + fp) if tn + fp else float("nan")
        ppv = tp / (tp + fp) if tp + fp else float("nan")
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        if exact_auc:
            from sklearn.metrics import roc_auc_score

            auc = float(
                roc_auc_score(
                    np.concatenate([self.truths[i] for i in ix]), np.concatenate([self.scores[i] for i in ix])
                )
            )
        else:
            auc = auc_from_histograms(
                np.sum([self.pos[i] for i in ix], axis=0), np.sum([self.neg[i] for i in ix], axis=0)
            )
        return {
            "auc": auc,
            "f1": f1,
            "sensitivity": sens,
            "specificity": spec,
            "accuracy": (tp + tn) / (tp + tn + fp + fn),
            "ppv": ppv,
        }

    def summary(self, n_boot: int = N_BOOTSTRAP) -> dict[str, Any]:
        """Pooled over images (DRIVE's convention), CIs from resampling images; the point AUC is exact."""
        n = len(self.counts)
        out = bootstrap(lambda ix: self.metrics(ix), n, None, n_boot)
        out["auc"]["value"] = self.metrics(np.arange(n), exact_auc=True)["auc"]
        return out


def auc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC from binned scores (ties within a bin count half), the Mann-Whitney statistic."""
    p_total, n_total = float(pos.sum()), float(neg.sum())
    if p_total == 0 or n_total == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return float(np.sum(pos * (neg_below + 0.5 * neg)) / (p_total * n_total))
