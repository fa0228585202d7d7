"""Split conformal prediction: prediction sets with a guaranteed coverage, for single-label classifiers and, per
label, for multi-label ones (:class:`MultilabelConformal`).

Why: a probability is only as good as its calibration; a conformal prediction set holds the true label with
probability at least ``1 - alpha`` for a new case exchangeable with the calibration cases, whatever the model
(Vovk et al. 2005; Angelopoulos & Bates 2021, "A gentle introduction to conformal prediction"). A set with more
than one label (or none) is the model saying "I cannot tell": a case to hand to the radiologist.

No maintained conformal library (MAPIE, crepes, TorchCP) is installed, so this is the standard split-conformal
rule written out (a few lines, tested in ``tests/evaluation/test_conformal.py``):

* non-conformity score ``s = score(p, y)`` on the *validation* cases (never the test cases);
* threshold ``q`` = the ``ceil((n + 1)(1 - alpha))``-th smallest of the ``n`` scores (the finite-sample correction;
  when that rank exceeds ``n`` the set is every label, ``q = 1``);
* prediction set of a new case: every label ``k`` whose score ``score(p, k) <= q``.

Scores (``score=``):

* ``"lac"`` (default; least ambiguous set-valued classifier, Sadinle et al. 2019): ``s = 1 - p_y``, so the set is
  ``{k : p_k >= 1 - q}``. It gives the smallest sets on average and can give an *empty* set (no label is
  probable enough), which we treat as a deferral too. Chosen because for the binary decisions medsight serves
  the set reads directly as "which labels are still plausible", and small sets mean fewer needless deferrals.
* ``"aps"`` (adaptive prediction sets, Romano et al. 2020, non-randomised): ``s`` = the total probability of the
  labels at least as probable as ``y``; sets grow where the model is unsure and are never empty.

Grouped cases: when several images come from one patient they are not exchangeable one by one. With ``groups``
the score of a patient is the largest score over their images, so the guarantee becomes "every image of a new
patient is covered" with probability ``>= 1 - alpha`` (which implies per-image coverage ``>= 1 - alpha``); it is
conservative (larger sets) and honest about small validation sets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from medsight.defaults import DEFAULT_ALPHA as DEFAULT_ALPHA  # re-exported: its old home
from medsight.errors import MedsightError
from medsight.evaluation.calibration import check_probabilities

Score = Literal["lac", "aps"]
SCORES: tuple[Score, ...] = ("lac", "aps")


def check_alpha(alpha: float, where: str = "alpha") -> float:
    """``alpha`` as a float in (0, 1), or a :class:`MedsightError` naming ``where``."""
    a = float(alpha)
    if not 0 < a < 1:
        raise MedsightError(f"{where} must lie strictly between 0 and 1 (got {alpha})")
    return a


def scores_of(probs: np.ndarray, score: Score) -> np.ndarray:
    """``(n, k)`` non-conformity score of every label of every case (low = conforming)."""
    p = np.asarray(probs, float)
    if score == "lac":
        return np.asarray(1.0 - p)
    if score == "aps":
        # the total probability of the labels at least as probable as label k (ties count in: never empty)
        return np.asarray((p[:, None, :] * (p[:, None, :] >= p[:, :, None])).sum(-1))
    raise MedsightError(f"unknown conformal score {score!r} (known: {', '.join(SCORES)})")


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest score (1.0, the whole label set, when that rank exceeds n)."""
    s = np.sort(np.asarray(scores, float).ravel())
    n = len(s)
    if n == 0:
        raise MedsightError("conformal calibration needs at least one validation case")
    rank = math.ceil((n + 1) * (1 - alpha))
    return 1.0 if rank > n else float(s[rank - 1])


@dataclass
class SplitConformal:
    """Split conformal prediction sets (scikit-learn style: ``fit`` returns self; learned state ends in ``_``)."""

    alpha: float = DEFAULT_ALPHA
    score: Score = "lac"

    def __post_init__(self) -> None:
        self.alpha = check_alpha(self.alpha)
        if self.score not in SCORES:
            raise MedsightError(f"unknown conformal score {self.score!r} (known: {', '.join(SCORES)})")

    def fit(self, probs: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None) -> SplitConformal:
        """Calibrate on validation probabilities ``(n, k)`` and true labels ``(n,)`` (optionally patient groups)."""
        p, y = np.asarray(probs, float), np.asarray(labels).astype(int)
        if p.ndim != 2 or len(p) != len(y):
            raise MedsightError("conformal calibration needs (n, k) probabilities and n labels")
        p = check_probabilities(p, "conformal calibration probabilities")
        if len(y) and (y.min() < 0 or y.max() >= p.shape[1]):
            raise MedsightError(f"conformal calibration labels must be class indices 0..{p.shape[1] - 1}")
        true_scores = scores_of(p, self.score)[np.arange(len(y)), y]
        if groups is not None:
            g = np.asarray(groups)
            true_scores = np.asarray([true_scores[g == u].max() for u in np.unique(g)])
        self.n_calibration_ = len(true_scores)
        self.grouped_ = groups is not None
        self.quantile_ = conformal_quantile(true_scores, self.alpha)
        self.whole_set_ = math.ceil((self.n_calibration_ + 1) * (1 - self.alpha)) > self.n_calibration_
        return self

    def predict_sets(self, probs: np.ndarray) -> np.ndarray:
        """``(n, k)`` boolean membership of every label in every case's prediction set (every label when the
        calibration set is too small for ``alpha``: an APS score of float32 probabilities can exceed 1 by rounding)."""
        p = check_probabilities(probs, "probabilities")
        if getattr(self, "whole_set_", False) and self.quantile_ >= 1.0:
            return np.ones(p.shape, bool)
        return np.asarray(scores_of(p, self.score) <= self.quantile_ + 1e-12)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": "split conformal",
            "score": self.score,
            "alpha": self.alpha,
            "coverage_target": 1 - self.alpha,
            "quantile": self.quantile_,
            "n_calibration": self.n_calibration_,
            "calibration_unit": "patient (largest score over their images)" if self.grouped_ else "image",
            "whole_label_set": self.whole_set_,
            "fitted_on": "val",
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str | None = None) -> SplitConformal:
        try:
            model = cls(float(d["alpha"]), d["score"])
            model.quantile_ = float(d["quantile"])
            model.n_calibration_ = int(d["n_calibration"])
            model.grouped_ = str(d.get("calibration_unit", "image")).startswith("patient")
            model.whole_set_ = bool(d.get("whole_label_set", False))
        except (KeyError, TypeError, ValueError) as exc:
            raise MedsightError(f"bundle.json 'selective_prediction.conformal' is incomplete ({exc!r})", where) from exc
        return model


def coverage(sets: np.ndarray, labels: np.ndarray) -> float:
    """Share of cases whose prediction set holds the true label."""
    y = np.asarray(labels).astype(int)
    return float(np.mean(np.asarray(sets)[np.arange(len(y)), y])) if len(y) else float("nan")


def set_sizes(sets: np.ndarray) -> np.ndarray:
    """Number of labels in each case's prediction set."""
    return np.asarray(sets).sum(axis=1).astype(int)


def _binary(p: np.ndarray) -> np.ndarray:
    """``(n,)`` probabilities of "in" as ``(n, 2)`` probabilities of ("out", "in")."""
    return np.stack([1.0 - p, p], axis=1)


@dataclass
class MultilabelConformal:
    """Per-label split conformal prediction for multi-label classifiers (each label present or absent on its own).

    Why: a multi-label model answers one yes/no question per label, so each label gets its own split-conformal
    threshold (LAC on ("out", "in"), fitted on the validation cases at level ``alpha``), and its set is the subset of
    {"out", "in"} still plausible. A label is *certain* when its set holds exactly one answer; the prediction is the
    labels whose set is exactly {"in"}; a case whose labels are not all certain goes to the radiologist.

    Guarantee: for every label separately, the set holds the true answer for at least ``1 - alpha`` of new cases
    exchangeable with the validation cases. It is per label, not joint: all ``L`` labels of a case are covered
    together with probability at least ``1 - L * alpha`` (union bound); for a joint guarantee fit with
    ``alpha / L``. With ``groups`` a patient is one calibration unit, as in :class:`SplitConformal`.
    """

    alpha: float = DEFAULT_ALPHA

    def __post_init__(self) -> None:
        self.alpha = check_alpha(self.alpha)

    def fit(self, probs: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None) -> MultilabelConformal:
        """Calibrate on validation probabilities ``(n, L)`` (each label's own p(present)) and 0/1 labels ``(n, L)``."""
        p, y = np.asarray(probs, float), np.asarray(labels)
        if p.ndim != 2 or p.shape != y.shape:
            raise MedsightError(
                f"multi-label conformal calibration needs (n, L) probabilities and (n, L) labels "
                f"(got {p.shape} and {y.shape})"
            )
        p = check_probabilities(p, "conformal calibration probabilities")
        if not np.isin(y, (0, 1)).all():
            raise MedsightError("multi-label conformal calibration needs labels of 0 (absent) or 1 (present)")
        self.per_label_ = [
            SplitConformal(self.alpha, "lac").fit(_binary(p[:, k]), y[:, k], groups) for k in range(p.shape[1])
        ]
        return self

    def predict_sets(self, probs: np.ndarray) -> np.ndarray:
        """``(n, L, 2)`` booleans: whether "out" (index 0) and "in" (index 1) are plausible for each label."""
        p = np.asarray(probs, float)
        if p.ndim != 2 or p.shape[1] != len(self.per_label_):
            raise MedsightError(f"expected (n, {len(self.per_label_)}) probabilities (got {p.shape})")
        return np.stack([c.predict_sets(_binary(p[:, k])) for k, c in enumerate(self.per_label_)], axis=1)

    def to_json(self) -> dict[str, Any]:
        first = self.per_label_[0].to_json()
        return {
            "method": "split conformal per label (LAC on absent/present)",
            "alpha": self.alpha,
            "coverage_target": 1 - self.alpha,
            "coverage_is": "per label",
            "quantiles": [c.quantile_ for c in self.per_label_],
            "n_calibration": first["n_calibration"],
            "calibration_unit": first["calibration_unit"],
            "whole_label_set": first["whole_label_set"],
            "fitted_on": "val",
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str | None = None) -> MultilabelConformal:
        try:
            model = cls(float(d["alpha"]))
            unit, whole = str(d.get("calibration_unit", "image")), bool(d.get("whole_label_set", False))
            model.per_label_ = [
                SplitConformal.from_json(
                    {
                        "alpha": d["alpha"],
                        "score": "lac",
                        "quantile": q,
                        "n_calibration": d["n_calibration"],
                        "calibration_unit": unit,
                        "whole_label_set": whole,
                    },
                    where,
                )
                for q in d["quantiles"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise MedsightError(f"bundle.json multi-label conformal rule is incomplete ({exc!r})", where) from exc
        return model


def certain(sets: np.ndarray) -> np.ndarray:
    """``(n, L)``: labels whose multi-label set (:meth:`MultilabelConformal.predict_sets`) holds exactly one answer."""
    return np.asarray(np.asarray(sets, bool).sum(axis=-1) == 1)


def present(sets: np.ndarray) -> np.ndarray:
    """``(n, L)``: labels predicted present for certain (their set is exactly {"in"})."""
    s = np.asarray(sets, bool)
    return np.asarray(s[..., 1] & ~s[..., 0])


def label_coverage(sets: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(L,)``: per label, the share of cases whose set holds the true answer (absent or present)."""
    s, y = np.asarray(sets, bool), np.asarray(labels).astype(int)
    if len(y) == 0:
        return np.full(s.shape[1] if s.ndim == 3 else 0, np.nan)
    return np.asarray(np.take_along_axis(s, y[..., None], axis=-1)[..., 0].mean(axis=0))
