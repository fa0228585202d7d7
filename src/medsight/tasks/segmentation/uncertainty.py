"""Per-case segmentation uncertainty from test-time mirroring, the review threshold chosen on validation, and how
well the uncertainty ranks bad cases first.

The measure (``tta_disagreement``): run the network on the image and on mirrored copies (the passes nnU-Net already
averages at test time: every combination of spatial axes; or, when a plan turns test-time flips off for speed, the
identity plus one flip per axis, run only when uncertainty is asked for), take each pass's class map and the class map
of their mean softmax (the consensus), and score ``1 - mean Dice(pass, consensus)`` over passes and foreground classes
(MONAI's DiceMetric; a class every pass leaves empty agrees, Dice 1). 0 means every pass agrees; larger means the
segmentation depends on the orientation of the input, a sign that the image is unlike the training data.

Why this rather than the softmax entropy inside the predicted foreground: networks trained with a Dice loss give
near-0/1 probabilities, so the entropy is concentrated on the boundary and mostly measures the boundary-to-volume ratio
(small structures look uncertain); the disagreement is in Dice units, bounded in [0, 1], independent of calibration,
and defined for an empty prediction (Roy et al., NeuroImage 2019, used the same agreement among Monte-Carlo samples as
a structure-wise quality estimate). It costs no extra network pass where test-time flips are on (the default).

The threshold: at the end of training, the validation cases' uncertainties are computed and the threshold is their
:data:`REVIEW_QUANTILE` quantile, so about 20% of cases like the validation ones are flagged for review. A fixed
quantile rather than "where validation Dice drops below a level" because a validation fold holds few bad cases (often
none), so a Dice-level rule would be decided by one or two cases; the quantile fixes the review workload, and the
evaluation shows what it buys (Dice of flagged against unflagged cases). The threshold is stored in
``bundle.json["uncertainty"]``; evaluate and predict read it and never choose it on the data they score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medsight.evaluation.metrics import N_BOOTSTRAP, bootstrap
from medsight.tasks.segmentation.data import resize
from medsight.tasks.segmentation.metrics import dice_per_case

METHOD = "tta_disagreement"
#: The validation quantile of the uncertainty above which a case is flagged (about 1 case in 5 flagged).
REVIEW_QUANTILE = 0.8


@dataclass
class Mirrors:
    """Collects the mirrored test-time passes of one case: each pass's class map and the consensus (the class map
    of their mean softmax), on the case's grid once :meth:`finish` has run."""

    masks: list[np.ndarray] = field(default_factory=list)
    consensus: np.ndarray | None = None
    total: np.ndarray | None = field(default=None, repr=False)

    def add(self, probs: np.ndarray) -> None:
        """One pass's softmax ``(K, *spatial)``."""
        self.masks.append(probs.argmax(0).astype(np.uint8))
        self.total = probs.astype(np.float32, copy=True) if self.total is None else self.total + probs

    def finish(self, shape: Sequence[int], roi: np.ndarray | None = None) -> None:
        """The consensus from the summed softmax; every class map resampled (nearest) to ``shape`` and cleared
        outside ``roi``."""
        if self.total is not None:
            self.consensus = self.total.argmax(0).astype(np.uint8)
            self.total = None
        maps = [*self.masks, self.consensus] if self.consensus is not None else list(self.masks)
        placed = []
        for m in maps:
            if list(m.shape) != list(shape):
                m = resize(m[None].astype(np.float32), shape, label=True)[0].astype(np.uint8)
            if roi is not None:
                m = np.where(roi, m, 0).astype(np.uint8)
            placed.append(m)
        if self.consensus is not None:
            self.masks, self.consensus = placed[:-1], placed[-1]
        else:
            self.masks = placed

    @classmethod
    def stack(cls, slices: Sequence[Mirrors], axis: int = -1) -> Mirrors:
        """The mirrors of a volume segmented slice by slice (a 2D model on a 3D input)."""
        n = len(slices[0].masks)
        masks = [np.stack([s.masks[k] for s in slices], axis=axis) for k in range(n)]
        consensus = np.stack([s.consensus for s in slices if s.consensus is not None], axis=axis)
        return cls(masks=masks, consensus=consensus)


def disagreement(mirrors: Mirrors, n_classes: int) -> float:
    """``1 - mean Dice(pass, consensus)`` over the passes and foreground classes."""
    if not mirrors.masks or mirrors.consensus is None:
        raise ValueError("no mirrored passes were collected")
    dice = dice_per_case(mirrors.masks, [mirrors.consensus] * len(mirrors.masks), n_classes)
    return float(min(1.0, max(0.0, 1.0 - dice.mean())))


def flag(value: float | None, threshold: float | None) -> bool | None:
    """Flag for review when the uncertainty is above the threshold; ``None`` when either is unknown."""
    if value is None or threshold is None:
        return None
    return bool(value > threshold)


def choose_threshold(values: Sequence[float], dice: Sequence[float], passes: int | None = None) -> dict[str, Any]:
    """The review threshold from the validation cases' uncertainties (their :data:`REVIEW_QUANTILE` quantile), with
    what it does on those cases; stored in the bundle by training."""
    u = np.asarray(values, dtype=float)
    d = np.asarray(dice, dtype=float)
    threshold = float(np.quantile(u, REVIEW_QUANTILE)) if u.size else None
    out: dict[str, Any] = {
        "method": METHOD,
        "passes": passes,
        "threshold": threshold,
        "quantile": REVIEW_QUANTILE,
        "rule": f"flag a case for review when its uncertainty is above the {REVIEW_QUANTILE:.0%} quantile of the "
        "validation cases' uncertainties (about 1 case in 5 like them is flagged)",
        "decided_on": f"{u.size} validation case(s)",
        "validation": {"uncertainty": [float(v) for v in u], "dice": [float(v) for v in d]},
    }
    if u.size:
        summary = ranking(u, d, threshold, n_boot=0)
        out["validation"] |= {
            "spearman": summary["spearman_uncertainty_vs_dice"]["value"],
            "dice_flagged": summary["dice_flagged"]["value"],
            "dice_unflagged": summary["dice_unflagged"]["value"],
        }
    return out


def _spearman(u: np.ndarray, d: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if u.size < 3 or np.ptp(u) == 0 or np.ptp(d) == 0:
        return float("nan")
    return float(spearmanr(u, d).statistic)


def ranking(
    uncertainty: Sequence[float] | np.ndarray,
    dice: Sequence[float] | np.ndarray,
    threshold: float | None,
    n_boot: int = N_BOOTSTRAP,
) -> dict[str, Any]:
    """How well the uncertainty ranks bad cases first: Spearman's rho between per-case uncertainty and per-case Dice
    (negative: the more uncertain, the worse), and the mean Dice of flagged and unflagged cases, each with a 95%
    percentile bootstrap CI over cases. A statistic undefined on these cases is ``None`` with the reason."""
    u = np.asarray(uncertainty, dtype=float)
    d = np.asarray(dice, dtype=float)

    def stats(ix: np.ndarray) -> dict[str, float]:
        out = {"spearman": _spearman(u[ix], d[ix])}
        if threshold is not None:
            flagged = u[ix] > threshold
            out["flagged"] = float(d[ix][flagged].mean()) if flagged.any() else float("nan")
            out["unflagged"] = float(d[ix][~flagged].mean()) if (~flagged).any() else float("nan")
        return out

    boot: dict[str, dict[str, Any]]
    if n_boot > 0:
        boot = bootstrap(stats, len(u), None, n_boot)
    else:  # the point estimates only (training's summary of the validation cases)
        boot = {k: {"value": v, "ci95": [None, None]} for k, v in stats(np.arange(len(u))).items()}
    why = {
        "spearman": "fewer than 3 cases, or every case has the same uncertainty or the same Dice",
        "flagged": "no case was above the threshold",
        "unflagged": "every case was above the threshold",
    }
    for key, entry in boot.items():
        v = entry.get("value")
        if v is None or (isinstance(v, float) and math.isnan(v)):
            boot[key] = {"value": None, "ci95": [None, None], "undefined": why[key]}
    no_threshold: dict[str, Any] = {"value": None, "ci95": [None, None]}
    no_threshold["undefined"] = "the bundle has no review threshold"
    return {
        "n": int(u.size),
        "spearman_uncertainty_vs_dice": boot["spearman"],
        "threshold": threshold,
        "n_flagged": int((u > threshold).sum()) if threshold is not None else None,
        "dice_flagged": boot.get("flagged", no_threshold),
        "dice_unflagged": boot.get("unflagged", no_threshold),
    }
