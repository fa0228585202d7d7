"""Ordinal grades (diabetic retinopathy 0-4, BI-RADS, Kellgren-Lawrence): classes whose order means something.

An ordinal task is a multi-class task (K softmax outputs, so per-class probabilities, macro AUC, temperature
scaling, conformal sets and the ONNX model stay as they are) with two choices more, both made on validation:

* the loss: plain cross-entropy, or soft ordinal labels (SORD, Díaz & Marathe, CVPR 2019): cross-entropy against
  a target that puts ``exp(-(k - y)^2)`` mass on grade ``k`` around the true grade ``y``, so a near miss costs less
  than a far one. SORD keeps a K-way softmax, which CORAL/CORN's K-1 cumulative outputs would not.
* the decoding of probabilities into a grade: arg-max, the median grade (the first grade whose cumulative
  probability reaches 0.5: the Bayes decision for absolute error) or the rounded expected grade (closest to what
  quadratic weighted kappa rewards). Median and expected grade respect the order: moving probability towards
  higher grades never lowers the decision.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medsight.errors import MedsightError
from medsight.evaluation.metrics import quadratic_kappa
from medsight.tasks.classification.recipes import TIE

OrdinalLoss = Literal["cross-entropy", "soft-ordinal"]
LOSSES: tuple[OrdinalLoss, ...] = ("cross-entropy", "soft-ordinal")
#: Decodings tried on validation, simplest first (a tie keeps the earlier one).
DECODINGS = ("argmax", "median", "expected")


def soft_targets(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """SORD targets ``(N, K)``: softmax over grades of ``-(k - y)^2``."""
    grades = torch.arange(n_classes, device=labels.device, dtype=torch.float32)
    return torch.softmax(-((grades[None, :] - labels.float()[:, None]) ** 2), dim=1)


class SoftOrdinalLoss(nn.Module):
    """Cross-entropy against SORD soft labels (torch's cross-entropy takes probability targets), with optional
    class weights as :class:`torch.nn.CrossEntropyLoss` takes them (buffers, so they follow the model's device)."""

    weight: torch.Tensor | None

    def __init__(self, n_classes: int, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, soft_targets(labels, self.n_classes), weight=self.weight)


def decode(probs: np.ndarray, method: str) -> np.ndarray:
    """Grades ``(N,)`` from probabilities ``(N, K)`` by ``method`` (one of :data:`DECODINGS`)."""
    p = np.asarray(probs, dtype=np.float64)
    if method == "argmax":
        return p.argmax(1).astype(int)
    if method == "median":
        cumulative = np.cumsum(p / p.sum(1, keepdims=True), axis=1)
        return np.minimum((cumulative < 0.5 - 1e-9).sum(1), p.shape[1] - 1).astype(int)
    if method == "expected":
        expected = p @ np.arange(p.shape[1]) / p.sum(1)
        return np.clip(np.rint(expected), 0, p.shape[1] - 1).astype(int)
    raise MedsightError(f"unknown ordinal decoding {method!r} (known: {', '.join(DECODINGS)})")


def choose_decoding(labels: np.ndarray, probs: np.ndarray) -> tuple[str, dict[str, float]]:
    """The decoding with the highest validation QWK (ties within :data:`TIE` keep the simpler, earlier one), and
    every decoding's validation QWK."""
    scores = {m: quadratic_kappa(labels, decode(probs, m), probs.shape[1]) for m in DECODINGS}
    finite = {m: s for m, s in scores.items() if not np.isnan(s)}
    if not finite:
        return "argmax", scores
    best = max(finite.values())
    return next(m for m in DECODINGS if m in finite and finite[m] >= best - TIE), scores


def operating_point(decoding: str, scores: dict[str, float]) -> dict[str, Any]:
    """The bundle's decision rule for an ordinal model: the decoding chosen on validation."""
    return {
        "method": "argmax" if decoding == "argmax" else f"ordinal-{decoding}",
        "decoding": decoding,
        "chosen_on": "val",
        "val_qwk": {m: (None if np.isnan(s) else round(float(s), 4)) for m, s in scores.items()},
    }
