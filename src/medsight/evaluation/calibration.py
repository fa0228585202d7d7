"""Calibration: which ECE (positive-class or top-label), on which bins, with a bootstrap CI; Brier; reliability
curves; and temperature scaling fitted on validation.

Equal-width bins leave most of the 15 bins of a small test split nearly empty, so the ECE of a few hundred cases is
dominated by noise in sparse bins (Nixon et al. 2019, "Measuring calibration in deep learning"). The default is
therefore equal-mass (adaptive) bins, as many as keep about 25 cases per bin (2 to 15). Cases of equal probability
always share a bin (a tie is never cut between two bins, which would make the ECE depend on the order of the cases),
so a bin can hold more than its share, and fewer bins are used when many cases tie.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from medsight.errors import MedsightError, NonFiniteOutput

Strategy = Literal["equal-mass", "equal-width"]
EceKind = Literal["positive-class", "top-label", "per-label pooled"]
#: Cases per equal-mass bin the default bin count aims at, and the bounds on the count.
CASES_PER_BIN, MIN_BINS, MAX_BINS = 25, 2, 15

KIND_MEANING = {
    "positive-class": "p(positive class) against whether the case is positive",
    "top-label": "the probability of the predicted class against whether the prediction is right",
    "per-label pooled": "every label's probability against its truth, pooled over labels",
}


#: How far a probability may stray outside [0, 1] by rounding (float32 softmax) before it is refused.
TOLERANCE = 1e-6


def check_probabilities(p: np.ndarray, what: str = "probabilities") -> np.ndarray:
    """``p`` as floats, or a :class:`MedsightError` when any is NaN, infinite or outside [0, 1]: a calibration
    figure, a Brier score or a threshold computed from such values would be silently wrong."""
    arr = np.asarray(p, dtype=float)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise NonFiniteOutput(f"{what} hold {int(bad.sum())} NaN or infinite value(s): the model's output is broken")
    out = (arr < -TOLERANCE) | (arr > 1 + TOLERANCE)
    if out.any():
        raise MedsightError(
            f"{what} hold {int(out.sum())} value(s) outside [0, 1] (from {arr.min():.4g} to {arr.max():.4g}): "
            "these metrics need probabilities"
        )
    return arr


def brier_score(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((check_probabilities(p) - np.asarray(y, float)) ** 2))


def default_bins(n: int) -> int:
    """Bins for ``n`` cases: about :data:`CASES_PER_BIN` per bin, never fewer than 2 nor more than 15."""
    return int(np.clip(n // CASES_PER_BIN, MIN_BINS, MAX_BINS))


def expected_calibration_error(
    y: np.ndarray, p: np.ndarray, n_bins: int | None = None, strategy: Strategy = "equal-mass"
) -> float:
    """The case-weighted mean |mean confidence - observed frequency| over bins.

    ``equal-mass`` (default) sorts the cases by ``p`` and cuts them into bins of (almost) equal size; ``equal-width``
    cuts [0, 1] into equal intervals. ``n_bins`` defaults to :func:`default_bins`.
    """
    y = np.asarray(y, float).ravel()
    p = check_probabilities(p).ravel()
    if len(y) == 0:
        return float("nan")
    groups = _bins(p, default_bins(len(y)) if n_bins is None else int(n_bins), strategy)
    total = sum(len(g) * abs(p[g].mean() - y[g].mean()) for g in groups)
    return float(total / len(y))


def _bins(p: np.ndarray, bins: int, strategy: Strategy = "equal-mass") -> list[np.ndarray]:
    """The non-empty bins (case indices, by increasing probability) of the ECE and the reliability diagram.

    ``equal-mass``: the cases sorted by ``p`` cut into ``bins`` runs of (almost) equal size, each tie kept whole in
    the bin where it starts; ``equal-width``: [0, 1] cut into ``bins`` equal intervals."""
    if strategy == "equal-mass":
        order = np.argsort(p, kind="stable")
        if len(order) == 0:
            return []
        cut = np.zeros(len(order), int)
        for b, run in enumerate(np.array_split(np.arange(len(order)), min(bins, len(order)))):
            cut[run] = b
        sorted_p = p[order]
        first = np.searchsorted(sorted_p, sorted_p, side="left")  # where each case's tie starts
        which = cut[first]
        return [order[which == b] for b in np.unique(which)]
    if strategy == "equal-width":
        which = np.clip((p * bins).astype(int), 0, bins - 1)
        return [g for g in (np.flatnonzero(which == b) for b in range(bins)) if len(g)]
    raise MedsightError(f"unknown ECE bin strategy {strategy!r} (use equal-mass or equal-width)")


def calibration_target(
    task_type: str, labels: np.ndarray, probs: np.ndarray, positive_index: int | None
) -> tuple[np.ndarray, np.ndarray, EceKind]:
    """What the ECE compares for a task: ``(truth 0/1, confidence, kind)``.

    Binary: the positive class's probability (so the ECE is about the disease the model looks for); multi-class:
    the top label (the probability of the predicted class against whether it is right); multi-label: every label,
    pooled (kept as ``(N, K)`` so that a bootstrap resamples cases, not labels).
    """
    if task_type == "binary":
        if positive_index is None:
            raise MedsightError("a binary calibration needs the positive class")
        return (np.asarray(labels) == positive_index).astype(int), probs[:, positive_index], "positive-class"
    if task_type == "multiclass":
        return (probs.argmax(1) == np.asarray(labels)).astype(int), probs.max(1), "top-label"
    return np.asarray(labels), np.asarray(probs), "per-label pooled"


def calibration_report(
    y: np.ndarray,
    before: np.ndarray,
    after: np.ndarray,
    kind: EceKind,
    n_boot: int,
    strata: np.ndarray | None,
    temperature: float,
    seed: int = 0,
) -> dict[str, Any]:
    """ECE and Brier score before and after temperature scaling, each with a 95% bootstrap CI, saying which ECE
    (``kind``) on which bins. ``y``/``before``/``after`` are the 0/1 truths and confidences of
    :func:`calibration_target`; ``strata`` stratifies the resampling (the label)."""
    from medsight.evaluation.metrics import bootstrap

    n = len(y)
    bins = default_bins(np.asarray(y).size)

    def measures(ix: np.ndarray) -> dict[str, float]:
        yy = y[ix]
        return {
            "before_ece": expected_calibration_error(yy, before[ix], bins),
            "before_brier": brier_score(yy, before[ix]),
            "after_ece": expected_calibration_error(yy, after[ix], bins),
            "after_brier": brier_score(yy, after[ix]),
        }

    boot = bootstrap(measures, n, strata, n_boot, seed)
    return {
        "method": "temperature scaling",
        "fitted_on": "val",
        "temperature": temperature,
        "ece_kind": kind,
        "ece_definition": KIND_MEANING[kind],
        "bins": {"strategy": "equal-mass", "n_bins": bins},
        "before": {"ece": boot["before_ece"], "brier": boot["before_brier"]},
        "after": {"ece": boot["after_ece"], "brier": boot["after_brier"]},
    }


def reliability(y: np.ndarray, p: np.ndarray, n_bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean predicted probability, observed frequency) per equal-mass bin: the bins of the ECE exactly (ties kept
    whole), so the diagram shows what the ECE measures. scikit-learn's ``calibration_curve(strategy="quantile")``
    bins by interpolated percentiles, which differ from the ECE's at bin edges. Empty input: empty arrays."""
    y, p = np.asarray(y, float).ravel(), check_probabilities(p).ravel()
    groups = _bins(p, default_bins(len(y)) if n_bins is None else int(n_bins))
    return np.asarray([p[g].mean() for g in groups]), np.asarray([y[g].mean() for g in groups])


class TemperatureScaler:
    """One temperature T dividing the logits, fitted by minimising validation NLL (Guo et al. 2017).

    scikit-learn style: the constructor stores settings; ``fit`` returns self; learned state ends in ``_``.
    """

    def __init__(self, multilabel: bool = False, max_iter: int = 200) -> None:
        self.multilabel = multilabel
        self.max_iter = max_iter

    def fit(self, logits: np.ndarray, y: np.ndarray) -> TemperatureScaler:
        import torch  # here, so that the metrics of this module (used by prediction) do not load torch

        z = torch.as_tensor(logits, dtype=torch.float64)
        target = torch.as_tensor(y)
        log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def nll() -> torch.Tensor:
            opt.zero_grad()
            scaled = z / torch.exp(log_t)
            if self.multilabel:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(scaled, target.double())
            else:
                loss = torch.nn.functional.cross_entropy(scaled, target.long())
            loss.backward()
            return loss

        opt.step(nll)
        self.temperature_ = float(torch.exp(log_t.detach()).clamp(0.05, 20.0))
        return self
