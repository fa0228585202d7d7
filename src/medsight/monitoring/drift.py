"""The drift monitor: per model, the recent inputs and outputs compared with the training fingerprint.

The service keeps one monitor per loaded model and calls ``update(inputs, outputs)`` after each study and
``check()`` when it wants a verdict (e.g. daily, or every ``window`` studies). The comparison is the shift report's
(``medsight.evaluation.shift.compare``): per-case features by a Kolmogorov-Smirnov test at ``alpha`` Bonferroni-
corrected over the features, pooled intensities by the population stability index above 0.25, modality by match.
Outputs are compared the same way: the share of each class a segmentation predicts against the share the training
labels have (a model that starts finding far more or far less than it was trained to is a warning whatever caused
it).

Why these defaults: ``window`` = 50 recent studies (about a day of a busy scanner; the KS test's p-value accounts for
a small window, so the false-flag rate stays at ``alpha`` whatever its size), ``min_cases`` = 3 (fewer gives no
verdict), ``alpha`` = 0.01 and PSI 0.25 as in the shift report. Only numbers are kept, never pixels or identifiers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsight.data.fingerprint_stats import N_QUANTILES, Sample, case_features, output_features
from medsight.errors import MedsightError
from medsight.evaluation.shift import ALPHA, PSI_THRESHOLD, FeatureShift, compare

WINDOW = 50
MIN_CASES = 3
PREDICTED = "predicted "


@dataclass
class DriftReport:
    """A verdict: ``flagged`` when any feature crosses its threshold; each feature with its statistic and threshold."""

    model: str
    n_cases: int
    window: int
    ready: bool
    flagged: bool
    features: list[FeatureShift] = field(default_factory=list)
    note: str = ""

    @property
    def flagged_features(self) -> list[str]:
        return [f.feature for f in self.features if f.flagged]

    def summary(self) -> str:
        if not self.ready:
            return f"{self.model}: {self.note}"
        if not self.flagged:
            return f"{self.model}: no drift over the last {self.n_cases} studies"
        parts = [
            f"{f.feature} ({f.statistic} {f.value:.3g}, threshold {f.threshold:.3g})"
            for f in self.features
            if f.flagged
        ]
        return f"{self.model}: DRIFT over the last {self.n_cases} studies: " + "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "n_cases": self.n_cases,
            "window": self.window,
            "ready": self.ready,
            "flagged": self.flagged,
            "flagged_features": self.flagged_features,
            "features": [f.to_json() for f in self.features],
            "note": self.note,
        }


def _as_sample(item: Any) -> Sample:
    if isinstance(item, Sample):
        return item
    if isinstance(item, np.ndarray):
        return Sample(item, (1.0,) * (item.ndim - 1))
    if hasattr(item, "image") and hasattr(item, "spacing"):  # e.g. segmentation's InputImage
        return Sample(np.asarray(item.image), tuple(item.spacing))
    raise MedsightError(f"drift monitor: cannot read an input of type {type(item).__name__}")


def _as_mask(item: Any) -> np.ndarray:
    mask = getattr(item, "mask", item)
    if not isinstance(mask, np.ndarray):
        raise MedsightError(f"drift monitor: cannot read an output of type {type(item).__name__}")
    return mask


class DriftMonitor:
    """Recent inputs (and outputs) of one model against its training fingerprint (see the module docstring)."""

    def __init__(
        self,
        reference: dict[str, Any],
        model: str = "model",
        window: int = WINDOW,
        min_cases: int = MIN_CASES,
        alpha: float = ALPHA,
        psi_threshold: float = PSI_THRESHOLD,
        seed: int = 0,
    ) -> None:
        if min_cases < 1 or window < min_cases:
            # a window smaller than min_cases never holds enough studies: the monitor would say "not ready" forever
            raise MedsightError(
                f"drift monitor: window {window} must hold at least min_cases {min_cases} (and min_cases be >= 1)"
            )
        self.reference = reference
        self.model = model
        self.window = window
        self.min_cases = min_cases
        self.alpha = alpha
        self.psi_threshold = psi_threshold
        self.label_names: list[str] = list(reference.get("label_names", []))
        self._features: deque[dict[str, float]] = deque(maxlen=window)
        self._raw: deque[np.ndarray] = deque(maxlen=window)
        self._standardised: deque[np.ndarray] = deque(maxlen=window)
        self._modalities: deque[str] = deque(maxlen=window)
        self._channels: deque[int] = deque(maxlen=window)
        self._dims: deque[int] = deque(maxlen=window)
        self._rng = np.random.default_rng(seed)

    @classmethod
    def for_bundle(cls, bundle: str | Path, **kwargs: Any) -> DriftMonitor:
        """A monitor against a bundle's training fingerprint (recomputed once when the bundle predates it)."""
        from medsight.monitoring.reference import training_fingerprint
        from medsight.training.bundle import load_bundle

        b = load_bundle(bundle)
        return cls(training_fingerprint(b), model=str(b.meta["data"]["source"]), **kwargs)

    def update(self, inputs: Sequence[Any], outputs: Sequence[Any] | None = None, modality: str = "unknown") -> None:
        """Record a batch: ``inputs`` as arrays ``(C, *spatial)``, :class:`Sample` or objects with ``image`` and
        ``spacing``; ``outputs`` (optional, one per input) as masks or objects with ``mask``."""
        if outputs is not None and len(outputs) != len(inputs):
            raise MedsightError(f"drift monitor: {len(inputs)} inputs but {len(outputs)} outputs")
        # every input is read before any is recorded: a batch with one unreadable study leaves the window as it was
        records = [self._record(item, None if outputs is None else outputs[k]) for k, item in enumerate(inputs)]
        for features, drawn, standardised, channels, dims in records:
            self._features.append(features)
            self._raw.append(drawn)
            self._standardised.append(standardised)
            self._modalities.append(modality)
            self._channels.append(channels)
            self._dims.append(dims)

    def _record(self, item: Any, output: Any) -> tuple[dict[str, float], np.ndarray, np.ndarray, int, int]:
        """One study as numbers: its features, drawn raw and z-scored intensities, channels and spatial dims."""
        sample = _as_sample(item)
        features = case_features(Sample(sample.image, sample.spacing), self.label_names)
        if output is not None and self.label_names:
            features |= output_features(_as_mask(output), self.label_names)
        grey = np.asarray(sample.image, np.float32).mean(axis=0).ravel()
        drawn = grey if grey.size <= 5000 else self._rng.choice(grey, 5000, replace=False)
        standardised = (drawn - grey.mean()) / max(float(grey.std()), 1e-6)
        return features, drawn, standardised, int(sample.image.shape[0]), int(np.ndim(sample.image) - 1)

    def current(self) -> dict[str, Any]:
        """The fingerprint of the window, in the form ``compare`` takes."""
        keys = set.intersection(*(set(f) for f in self._features)) if self._features else set()
        q = np.linspace(0, 100, N_QUANTILES)
        modalities = set(self._modalities)
        return {
            "n_cases": len(self._features),
            "modality": modalities.pop() if len(modalities) == 1 else "mixed",
            "n_channels": sorted(set(self._channels)),
            "spatial_dims": sorted(set(self._dims)),
            "cases": {k: [f[k] for f in self._features] for k in sorted(keys)},
            "intensity_quantiles": np.percentile(np.concatenate(list(self._raw)), q).tolist() if self._raw else [],
            "standardised_quantiles": np.percentile(np.concatenate(list(self._standardised)), q).tolist()
            if self._standardised
            else [],
        }

    def check(self) -> DriftReport:
        """The verdict on the window: each feature's statistic beside its threshold, flagged or not."""
        n = len(self._features)
        if n < self.min_cases:
            return DriftReport(
                self.model, n, self.window, False, False, note=f"{n} of the {self.min_cases} studies a verdict needs"
            )
        features = compare(self.reference, self.current(), self.alpha, self.psi_threshold)
        for f in features:
            if f.feature.startswith("prevalence_"):
                f.feature = PREDICTED + f.feature
                f.note = "the share the model predicts against the share in the training labels"
        return DriftReport(self.model, n, self.window, True, any(f.flagged for f in features), features)
