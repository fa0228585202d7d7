"""Classification metrics, each with a 95% bootstrap confidence interval.

Binary metrics act on p(positive) at a threshold; multi-class and multi-label follow MedMNIST's
definitions (macro one-vs-rest AUC; accuracy by arg-max, or the mean per-label accuracy at 0.5).

Degenerate input is said, never averaged away: a probability that is NaN, infinite or outside [0, 1] is an error; the
macro AUC is undefined (NaN) when a class or label has no positive or no negative case, as scikit-learn's
``roc_auc_score(multi_class="ovr")`` and MedMNIST's ``getAUC`` define it (a mean over the classes that happen to be
present would be another figure); :func:`bootstrap` says how many resamples left a metric undefined and withholds a
CI that resampling cannot give.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from medsight.defaults import N_BOOTSTRAP as N_BOOTSTRAP  # re-exported: its old home
from medsight.evaluation.calibration import brier_score, check_probabilities, expected_calibration_error

#: A CI is given only when at least this share of the resamples define the metric: the percentiles of the rest
#: would describe resamples unlike the evaluated split (e.g. only those that happen to hold a rare class).
MIN_DEFINED_SHARE = 0.5
log = logging.getLogger(__name__)


def binary_metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    """Threshold-free (AUC, Brier, ECE) and thresholded metrics for one binary problem."""
    y = np.asarray(y).astype(int)
    score = check_probabilities(score, "scores")
    pred = (score >= threshold).astype(int)
    tp = float(np.sum((pred == 1) & (y == 1)))
    tn = float(np.sum((pred == 0) & (y == 0)))
    fp = float(np.sum((pred == 1) & (y == 0)))
    fn = float(np.sum((pred == 0) & (y == 1)))
    sens = _div(tp, tp + fn)
    ppv = _div(tp, tp + fp)
    return {
        "auc": _auc(y, score),
        "accuracy": _div(tp + tn, len(y)),
        "sensitivity": sens,
        "specificity": _div(tn, tn + fp),
        "ppv": ppv,
        "npv": _div(tn, tn + fn),
        "f1": _div(2 * ppv * sens, ppv + sens) if not (np.isnan(ppv) or np.isnan(sens)) else float("nan"),
        "brier": brier_score(y, score),
        "ece": expected_calibration_error(y, score),
    }


def multiclass_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Macro one-vs-rest AUC and arg-max accuracy (MedMNIST's definitions), plus multi-class Brier."""
    y = np.asarray(y).astype(int)
    probs = check_probabilities(probs)
    k = probs.shape[1]
    onehot = np.eye(k)[y]
    aucs = [_auc(onehot[:, c], probs[:, c]) for c in range(k)]
    return {
        "auc": _macro(aucs),
        "accuracy": float(np.mean(probs.argmax(1) == y)),
        "brier": float(np.mean(np.sum((probs - onehot) ** 2, axis=1))),
        "ece": expected_calibration_error(probs.argmax(1) == y, probs.max(1)),
    }


def quadratic_kappa(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Quadratic weighted kappa (scikit-learn's): agreement on an ordered scale, where a miss by two grades costs
    four times a miss by one; NaN when undefined (truth and decisions each a single, identical grade)."""
    y, pred = np.asarray(y).astype(int), np.asarray(pred).astype(int)
    if len(y) == 0 or (len(np.unique(y)) < 2 and len(np.unique(pred)) < 2):
        return float("nan")
    return float(cohen_kappa_score(y, pred, weights="quadratic", labels=list(range(n_classes))))


def ordinal_metrics(y: np.ndarray, probs: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Ordinal grades: quadratic weighted kappa and mean absolute grade error of the decisions ``pred``, beside the
    multi-class metrics (macro AUC, Brier, ECE from the probabilities); accuracy is that of ``pred``, which may be
    decoded otherwise than by arg-max."""
    y, pred = np.asarray(y).astype(int), np.asarray(pred).astype(int)
    return multiclass_metrics(y, probs) | {
        "accuracy": float(np.mean(pred == y)),
        "qwk": quadratic_kappa(y, pred, probs.shape[1]),
        "mae": float(np.mean(np.abs(pred - y))),
    }


def multilabel_metrics(y: np.ndarray, probs: np.ndarray, thresholds: np.ndarray | None = None) -> dict[str, float]:
    """Macro AUC over labels and MedMNIST's multi-label accuracy (mean per-label accuracy at 0.5)."""
    t = 0.5 if thresholds is None else thresholds
    probs = check_probabilities(probs)
    aucs = [_auc(y[:, c], probs[:, c]) for c in range(y.shape[1])]
    return {
        "auc": _macro(aucs),
        "accuracy": float(np.mean((probs >= t) == (y >= 0.5))),
        "brier": float(np.mean((probs - y) ** 2)),
        "ece": expected_calibration_error(y.ravel(), probs.ravel()),
    }


def bootstrap(
    fn: Callable[[np.ndarray], dict[str, float]],
    n: int,
    strata: np.ndarray | None = None,
    n_boot: int = N_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, dict[str, object]]:
    """Point estimate plus percentile 95% CI for every metric ``fn(indices)`` returns.

    Resampling is stratified by ``strata`` (the label) so every replicate holds both classes. A metric undefined
    (NaN) in some resamples gets its CI from the others and says how many were not (``undefined_resamples``); when
    fewer than :data:`MIN_DEFINED_SHARE` of them define it the CI is ``[None, None]`` and ``ci_undefined`` says
    why. When a stratum holds a single case every resample repeats it, so its share of the uncertainty is never seen
    (the sensitivity of one positive read as a CI of zero width): no CI is given then (``[None, None]``), with a
    warning naming the stratum.
    """
    rng = np.random.default_rng(seed)
    point = fn(np.arange(n))
    samples: dict[str, list[float]] = {k: [] for k in point}
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)] if strata is not None else [np.arange(n)]
    groups = [g for g in groups if len(g)]
    singletons = [s for s in np.unique(strata) if np.sum(strata == s) == 1] if strata is not None else []
    for _ in range(n_boot if groups else 0):
        idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        for k, v in fn(idx).items():
            samples[k].append(np.nan if v is None else v)
    out: dict[str, dict[str, object]] = {}
    for k, v in point.items():
        arr = np.asarray(samples[k], dtype=float)
        defined = arr[~np.isnan(arr)]
        entry: dict[str, object] = {"value": _clean(v), "ci95": [None, None]}
        if len(defined) < len(arr):
            entry["undefined_resamples"] = int(len(arr) - len(defined))
        if singletons:
            pass  # said once below: resampling cannot vary a stratum of one case
        elif defined.size and defined.size >= MIN_DEFINED_SHARE * len(arr):
            entry["ci95"] = [float(np.percentile(defined, 2.5)), float(np.percentile(defined, 97.5))]
        elif defined.size:
            entry["ci_undefined"] = f"defined in only {defined.size} of {len(arr)} resamples"
        out[k] = entry
    if singletons and n_boot:
        names = ", ".join(str(s) for s in singletons[:5]) + (" ..." if len(singletons) > 5 else "")
        log.warning(
            "no bootstrap CI: stratum %s holds a single case, which every resample repeats (the CI would not show "
            "its share of the uncertainty)", names,
        )  # fmt: skip
    return out


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, score))


def _macro(aucs: list[float]) -> float:
    """The mean over every class or label, NaN when any one is undefined (scikit-learn's and MedMNIST's macro AUC)."""
    return float(np.mean(aucs)) if aucs and not np.any(np.isnan(aucs)) else float("nan")


def _div(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def _clean(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)
