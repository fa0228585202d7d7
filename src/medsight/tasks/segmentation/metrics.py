"""Segmentation metrics per case and class (MONAI's DiceMetric, HausdorffDistanceMetric, SurfaceDiceMetric) and
pixel-level metrics inside a region of interest (DRIVE's protocol), with bootstrap CIs over cases.

Every case counts. Metrics Reloaded (Maier-Hein et al., Nature Methods 2024) lists empty references as a pitfall:
Dice, HD95 and NSD are undefined (0/0) when a class is absent, and dropping such cases hides false positives and
misses. We give each situation a defined score and count it (``count_situations``), per class and case:

* ``both_present``: MONAI's Dice, HD95 (95th percentile, in mm with the image spacing) and NSD as they are;
* ``true_negative`` (reference and prediction empty): Dice 1, HD95 0, NSD 1. Metrics Reloaded allows either this or
  excluding the case; we score it because a correct "nothing here" is a correct answer a model must get credit for,
  and excluding it would make the average depend on which cases were silently dropped (its reference
  implementation, ``BinaryPairwiseMeasures.dsc``, also sets 1). The price: on data with many empty cases the mean
  rises, so the counts are always reported beside it;
* ``false_positive`` (reference empty, prediction not): Dice 0, NSD 0, HD95 the penalty below;
* ``missed`` (reference has the class, prediction empty): Dice 0, NSD 0, HD95 the penalty.

Where we differ from Metrics Reloaded: it fixes no value for a distance metric when one mask is empty (its reference
implementation scores two empty masks 0 and has no rule for one); we always apply the penalty, the diagonal of the
image in mm (from its shape and spacing, the largest distance two points of the image can have, as BraTS scores a
missed region with its volume's diagonal), so a miss raises the mean HD95 instead of vanishing from it. And we report
Dice, HD95 and NSD for every structure rather than choosing metrics from the problem's fingerprint. Averages are plain
means over all cases: no NaN is left to skip.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medsight.evaluation.metrics import N_BOOTSTRAP, bootstrap

HIST_BINS = 2000
#: The situations of one class in one case, in the order reports list them.
SITUATIONS = ("both_present", "true_negative", "false_positive", "missed")
METRICS = ("dice", "hd95", "nsd")


def _onehot(mask: np.ndarray, n_classes: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(mask, dtype=np.int64))
    return torch.nn.functional.one_hot(t, n_classes).movedim(-1, 0)[None].float()


def _np(t: Any) -> np.ndarray:
    """A metric's output (a tensor, or a sequence of them) as a numpy array."""
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().numpy()
    return np.asarray([_np(x) for x in t])


def image_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The HD95 penalty: the diagonal of the image's extent (shape x spacing), in the spacing's units."""
    return float(math.sqrt(sum((float(n) * float(s)) ** 2 for n, s in zip(shape, spacing, strict=True))))


def dice_per_case(preds: Sequence[np.ndarray], labels: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """``(cases, classes-1)`` Dice of every foreground class: 1 where a class is absent from both, 0 where only one
    has it (MONAI's ``ignore_empty=False``), so no case is left out of a mean."""
    from monai.metrics import DiceMetric

    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    rows = [_np(metric(_onehot(p, n_classes), _onehot(y, n_classes)))[0] for p, y in zip(preds, labels, strict=True)]
    return np.asarray(rows, dtype=float).reshape(len(rows), n_classes - 1)


def situations(pred: np.ndarray, label: np.ndarray, n_classes: int) -> np.ndarray:
    """Per foreground class, which of :data:`SITUATIONS` the case is in."""
    kind = {
        (True, True): "both_present",
        (False, False): "true_negative",
        (False, True): "false_positive",
        (True, False): "missed",
    }
    out = [kind[bool(np.any(label == k)), bool(np.any(pred == k))] for k in range(1, n_classes)]
    return np.asarray(out)


def case_metrics(
    pred: np.ndarray, label: np.ndarray, n_classes: int, spacing: Sequence[float], nsd_tolerance: float
) -> dict[str, np.ndarray]:
    """Dice, 95% Hausdorff distance and normalised surface Dice (tolerance in the spacing's units) per foreground
    class for one case, with each class's situation; empty classes scored as the module docstring says."""
    p, y = _onehot(pred, n_classes), _onehot(label, n_classes)
    sp = [float(s) for s in spacing]
    where = situations(pred, label, n_classes)
    dice = dice_per_case([pred], [label], n_classes)[0]
    hd = np.full(n_classes - 1, np.nan)
    nsd = np.full(n_classes - 1, np.nan)
    if np.any(where == "both_present"):  # MONAI cannot score the empty classes (we do, below): skip the work
        with warnings.catch_warnings():  # MONAI warns of the empty classes' nan/inf distances; we replace them
            warnings.filterwarnings("ignore", message=".*may result in nan/inf distance")
            # MONAI 1.6's surface metrics call its own deprecated ``always_return_as_numpy``; each catch_warnings
            # resets Python's once-per-place record, so without this the warning was printed once per case
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
            hd, nsd = _distances(p, y, sp, nsd_tolerance, n_classes)
    penalty = image_diagonal(np.asarray(pred).shape, sp)
    hd = np.where(where == "true_negative", 0.0, np.where(where == "both_present", hd, penalty))
    nsd = np.where(where == "true_negative", 1.0, np.where(where == "both_present", nsd, 0.0))
    return {"dice": np.asarray(dice, float), "hd95": hd, "nsd": nsd, "situation": where}


def _distances(
    p: torch.Tensor, y: torch.Tensor, spacing: list[float], tolerance: float, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """MONAI's HD95 and NSD per foreground class of one-hot ``p`` against ``y`` (NaN where a class is empty)."""
    from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric

    hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(p, y, spacing=spacing)
    nsd = SurfaceDiceMetric([tolerance] * (n_classes - 1), include_background=False, reduction="none")(
        p, y, spacing=spacing
    )
    return np.asarray(_np(hd)[0], dtype=float), np.asarray(_np(nsd)[0], dtype=float)


def count_situations(
    per_case: Sequence[dict[str, np.ndarray]], class_names: Sequence[str]
) -> dict[str, dict[str, int]]:
    """How many cases fell into each of :data:`SITUATIONS`, per class."""
    out: dict[str, dict[str, int]] = {}
    for c, name in enumerate(class_names):
        seen = Counter(str(case["situation"][c]) for case in per_case)
        out[name] = {s: int(seen.get(s, 0)) for s in SITUATIONS}
    return out


def summarise(
    per_case: list[dict[str, np.ndarray]], class_names: Sequence[str], n_boot: int = N_BOOTSTRAP
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Overall metrics (mean over cases; "dice" is the mean over foreground classes) and per-class metrics,
    each with a 95% bootstrap CI over cases. Every case enters every mean; an undefined value is an error."""
    arrays = {k: np.asarray([c[k] for c in per_case], dtype=float) for k in METRICS}
    for k, a in arrays.items():
        if np.isnan(a).any():  # case_metrics defines every situation: a NaN here is a bug, not a case to drop
            raise ValueError(f"{k} is undefined for {int(np.isnan(a).any(axis=1).sum())} case(s)")
    n = len(per_case)

    def overall(ix: np.ndarray) -> dict[str, float]:
        out: dict[str, float] = {}
        for k, a in arrays.items():
            out[k] = float(a[ix].mean())
        for k, a in arrays.items():
            for c, name in enumerate(class_names):
                out[f"{k}_{name}"] = float(a[ix, c].mean())
        return out

    metrics = bootstrap(overall, n, None, n_boot)
    per_class = {name: {k: metrics[f"{k}_{name}"] for k in METRICS} for name in class_names}
    return metrics, per_class


def case_dice(case: dict[str, np.ndarray]) -> float:
    """One case's Dice: the mean over its foreground classes."""
    return float(np.mean(case["dice"]))


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
        """Pooled metrics over the images ``ix``; NaN where a metric is undefined (see :meth:`undefined`)."""
        tp, fp, tn, fn = (float(v) for v in np.sum([self.counts[i] for i in ix], axis=0))
        sens = tp / (tp + fn) if tp + fn else float("nan")
        spec = tn / (tn + fp) if tn + fp else float("nan")
        ppv = tp / (tp + fp) if tp + fp else float("nan")
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        total = tp + tn + fp + fn
        if exact_auc and tp + fn and tn + fp:
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
            "accuracy": (tp + tn) / total if total else float("nan"),
            "ppv": ppv,
        }

    def undefined(self, ix: np.ndarray) -> dict[str, str]:
        """Why each metric undefined over the images ``ix`` is undefined (a class absent inside the ROI)."""
        tp, fp, tn, fn = (float(v) for v in np.sum([self.counts[i] for i in ix], axis=0))
        no_ref = "no reference foreground pixels inside the ROI in any image"
        no_neg = "no reference background pixels inside the ROI in any image"
        why: dict[str, str] = {}
        if tp + fn == 0:
            why["sensitivity"] = no_ref
            why["auc"] = no_ref + " (AUC needs both classes)"
        if tn + fp == 0:
            why["specificity"] = no_neg
            why["auc"] = no_neg + " (AUC needs both classes)"
        if tp + fp == 0:
            why["ppv"] = f"no predicted foreground pixels (none reached p >= {self.threshold:g})"
        if tp + fp + fn == 0:
            why["f1"] = no_ref + ", and no predicted foreground pixels"
        if tp + tn + fp + fn == 0:
            why["accuracy"] = "no pixels inside the ROI"
        return why

    def summary(self, n_boot: int = N_BOOTSTRAP) -> dict[str, Any]:
        """Pooled over images (DRIVE's convention), CIs from resampling images; the point AUC is exact. A metric
        undefined on these images is reported as ``value: None`` with the reason under ``undefined``; one defined
        here but undefined in some resamples (e.g. those without any vessel) gives its CI over the resamples where
        it is defined and says how many were not (``undefined_resamples``)."""
        n = len(self.counts)
        misses: Counter[str] = Counter()

        def score(ix: np.ndarray) -> dict[str, float]:
            m = self.metrics(ix)
            misses.update(k for k, v in m.items() if math.isnan(v))
            return m

        out = bootstrap(score, n, None, n_boot)
        point = self.metrics(np.arange(n), exact_auc=True)
        out["auc"]["value"] = None if math.isnan(point["auc"]) else point["auc"]
        for key, why in self.undefined(np.arange(n)).items():
            out[key] = {"value": None, "ci95": [None, None], "undefined": why}
        for key, entry in out.items():
            if "undefined" not in entry and misses[key]:
                entry["undefined_resamples"] = int(misses[key])
        return out


def auc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC from binned scores (ties within a bin count half), the Mann-Whitney statistic."""
    p_total, n_total = float(pos.sum()), float(neg.sum())
    if p_total == 0 or n_total == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return float(np.sum(pos * (neg_below + 0.5 * neg)) / (p_total * n_total))
