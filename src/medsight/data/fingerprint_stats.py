"""The distribution fingerprint of a data set: what its images and labels look like, case by case, so that data from
another site (or this week's inputs) can be compared with the training data feature by feature.

Why a separate fingerprint from the planner's (``medsight.data.segmentation.fingerprint``, nnU-Net style): the
planner keeps summaries (medians, foreground percentiles) that decide a plan; a shift test needs the distributions
themselves. So this records, per case, image size and spacing per axis, intensity summaries (mean, standard deviation,
1st/99th percentiles of the raw intensities), and label prevalence per class, plus pooled intensity quantiles (raw,
and after a per-image z-score, the normalisation most plans use) that a population-stability index can be computed
from. A few kilobytes for a few hundred cases; no pixel and no identifier is kept.

Labels come in three shapes: a label map (segmentation: the share of each foreground class's pixels), a class index
(0-d: single-label classification, 1 for its class and 0 for every other, class 0 included, so that the mean over
cases is the class's share), or a 0/1 vector over the labels (multi-label). Classification images are resized on
reading, so their geometry is unknown: an empty ``spacing`` records no size or spacing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsight.errors import MedsightError

VERSION = 1
#: Pooled intensities are kept as these many quantiles (0, 1, ..., 100 %): enough for a 10-bin PSI and a KS bound.
N_QUANTILES = 101
#: Voxels drawn per case for the pooled quantiles (all of them when the case is smaller).
VOXELS_PER_CASE = 5000


@dataclass
class Sample:
    """One case as the fingerprint sees it: image ``(C, *spatial)``, spacing per spatial axis (empty: geometry
    unknown, not recorded), optional label (a label map, a class index, or a 0/1 vector over the labels)."""

    image: np.ndarray
    spacing: Sequence[float]
    label: np.ndarray | None = None


def case_features(sample: Sample, label_names: Sequence[str]) -> dict[str, float]:
    """The per-case features: size and spacing per axis (when the spacing is known), intensity summaries, and the
    prevalence of each class (:func:`label_shares`)."""
    image = np.asarray(sample.image, dtype=np.float32)
    if image.ndim < 3:
        raise MedsightError(f"expected an image (C, *spatial), got shape {image.shape}")
    if image.size == 0:
        raise MedsightError(f"an empty image (shape {image.shape}): nothing to fingerprint")
    bad = int(np.count_nonzero(~np.isfinite(image)))
    if bad:  # NaN statistics compare as "not shifted" in every test: refuse rather than report no shift
        raise MedsightError(
            f"the image holds {bad} non-finite (NaN or infinite) pixel value(s) of {image.size}: its statistics "
            "would be NaN and no shift could be detected"
        )
    grey = image.mean(axis=0)
    out: dict[str, float] = {}
    for axis, (n, s) in enumerate(zip(grey.shape, sample.spacing, strict=False)):
        out[f"size_{axis}"] = float(n)
        out[f"spacing_{axis}"] = float(s)
    p01, p99 = np.percentile(grey, [1.0, 99.0])
    out |= {
        "intensity_mean": float(grey.mean()),
        "intensity_std": float(grey.std()),
        "intensity_p01": float(p01),
        "intensity_p99": float(p99),
    }
    if sample.label is not None:
        out |= label_shares(sample.label, label_names)
    return out


def label_shares(label: np.ndarray | int, label_names: Sequence[str]) -> dict[str, float]:
    """``prevalence_<name>`` per class. A label map (2-D or more) gives each foreground class's share of the pixels
    (background is the rest); a class index (0-d) gives 1 for its class and 0 for every other, class 0 included
    (there is no background in a class label); a 0/1 vector over the labels (multi-label) gives each label's 0/1."""
    arr = np.asarray(label)
    if arr.ndim == 0:
        k = int(arr)
        if not 0 <= k < len(label_names):
            raise MedsightError(f"class index {k} is not one of the {len(label_names)} labels")
        return {f"prevalence_{name}": float(j == k) for j, name in enumerate(label_names)}
    if arr.ndim == 1:
        if arr.size != len(label_names):
            raise MedsightError(f"a label vector of {arr.size} values for {len(label_names)} labels")
        return {f"prevalence_{name}": float(v > 0) for name, v in zip(label_names, arr.tolist(), strict=True)}
    counts = np.bincount(arr.astype(np.int64).ravel(), minlength=len(label_names))
    total = max(int(counts.sum()), 1)
    return {f"prevalence_{name}": float(counts[k]) / total for k, name in enumerate(label_names) if k > 0}


def output_features(mask: np.ndarray | int, label_names: Sequence[str]) -> dict[str, float]:
    """What a model predicted, as the same prevalences the labels give (the output distribution): a segmentation's
    mask, a decided class index, or a multi-label 0/1 vector."""
    return label_shares(mask, label_names)


def array_samples(images: np.ndarray, labels: np.ndarray | None = None) -> Iterator[Sample]:
    """Prepared images ``(N, C, *spatial)`` with their class labels (``(N,)`` indices or ``(N, K)`` 0/1), as samples
    of unknown geometry (classification and outcome images are resized on reading)."""
    for k in range(len(images)):
        yield Sample(images[k], (), None if labels is None else np.asarray(labels[k]))


def _draw(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    flat = values.ravel()
    return flat if flat.size <= VOXELS_PER_CASE else rng.choice(flat, VOXELS_PER_CASE, replace=False)


def distribution_fingerprint(
    samples: Iterable[Sample], label_names: Sequence[str], modality: str, seed: int = 0
) -> dict[str, Any]:
    """The fingerprint of ``samples`` (read one at a time, so a large data set need not fit in memory)."""
    rng = np.random.default_rng(seed)
    cases: dict[str, list[float]] = {}
    raw: list[np.ndarray] = []
    standardised: list[np.ndarray] = []
    n = 0
    channels: set[int] = set()
    dims: set[int] = set()
    for sample in samples:
        n += 1
        channels.add(int(sample.image.shape[0]))
        dims.add(int(sample.image.ndim - 1))
        for key, value in case_features(sample, label_names).items():
            cases.setdefault(key, []).append(value)
        grey = np.asarray(sample.image, dtype=np.float32).mean(axis=0)
        drawn = _draw(grey, rng)
        raw.append(drawn)
        standardised.append((drawn - grey.mean()) / max(float(grey.std()), 1e-6))
    if n == 0:
        raise MedsightError("no cases to fingerprint")
    q = np.linspace(0, 100, N_QUANTILES)
    return {
        "version": VERSION,
        "n_cases": n,
        "modality": modality,
        "n_channels": sorted(channels),
        "spatial_dims": sorted(dims),
        "label_names": list(label_names),
        "cases": {k: [round(v, 6) for v in vals] for k, vals in cases.items() if len(vals) == n},
        "intensity_quantiles": np.percentile(np.concatenate(raw), q).round(6).tolist(),
        "standardised_quantiles": np.percentile(np.concatenate(standardised), q).round(6).tolist(),
    }


def check(fp: Any, where: str = "fingerprint") -> dict[str, Any]:
    """``fp`` if it is a distribution fingerprint this version reads, else an error naming what is wrong."""
    if not isinstance(fp, dict) or fp.get("version") != VERSION:
        raise MedsightError(f"{where}: not a distribution fingerprint of version {VERSION}")
    for key in ("n_cases", "cases", "intensity_quantiles", "standardised_quantiles", "modality"):
        if key not in fp:
            raise MedsightError(f"{where}: missing {key!r}")
    n = fp["n_cases"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise MedsightError(f"{where}: n_cases is {n!r}; a fingerprint of no case compares with nothing")
    if not isinstance(fp["cases"], dict):
        raise MedsightError(f"{where}: 'cases' is not an object of per-case features")
    for name, values in fp["cases"].items():
        if not _finite_numbers(values) or len(values) != n:
            raise MedsightError(f"{where}: cases.{name} is not a list of {n} finite numbers (one per case)")
    for key in ("intensity_quantiles", "standardised_quantiles"):
        if not _finite_numbers(fp[key]) or len(fp[key]) != N_QUANTILES:
            raise MedsightError(f"{where}: {key} is not a list of {N_QUANTILES} finite numbers")
    return fp


def _finite_numbers(values: Any) -> bool:
    """Whether ``values`` is a list of finite numbers (what every statistic of a fingerprint must be)."""
    return isinstance(values, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v) for v in values
    )
