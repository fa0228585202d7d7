"""Calibration: ECE, Brier, reliability curves, and temperature scaling fitted on validation."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.calibration import calibration_curve


def brier_score(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((np.asarray(p, float) - np.asarray(y, float)) ** 2))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 15) -> float:
    """ECE with equal-width bins: the weighted mean gap between confidence and observed frequency."""
    y = np.asarray(y, float)
    p = np.asarray(p, float)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            total += mask.mean() * abs(p[mask].mean() - y[mask].mean())
    return float(total)


def reliability(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Observed frequency vs mean predicted probability per bin (scikit-learn's calibration_curve)."""
    frac, mean_pred = calibration_curve(np.asarray(y, int), np.asarray(p, float), n_bins=n_bins, strategy="uniform")
    return mean_pred, frac


class TemperatureScaler:
    """One temperature T dividing the logits, fitted by minimising validation NLL (Guo et al. 2017).

    scikit-learn style: the constructor stores settings; ``fit`` returns self; learned state ends in ``_``.
    """

    def __init__(self, multilabel: bool = False, max_iter: int = 200) -> None:
        self.multilabel = multilabel
        self.max_iter = max_iter

    def fit(self, logits: np.ndarray, y: np.ndarray) -> TemperatureScaler:
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
