"""Segmentation data: the folder, its stored folds, cases read once, and the preprocessing the plan implies.

Preprocessed training cases are cached under ``$MEDSIGHT_CACHE/segmentation_preprocessed/<key>/`` where the key
hashes the data fingerprint, the case files (name, size, modification time) and the plan's preprocessing, so a
second run on the same data and plan skips normalisation, resampling and the foreground index search.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from medsight import config
from medsight.data import segmentation as segdata
from medsight.data.folds import Folds, stored_folds
from medsight.data.segmentation import Loaded, SegmentationDataset, load_case, open_dataset
from medsight.data.segmentation import fingerprint as data_fingerprint
from medsight.io.atomic import atomic_path
from medsight.tasks.segmentation import fundus
from medsight.tasks.segmentation.plan import SegmentationPlan, whole_image_shape

__all__ = [
    "Loaded",
    "SegmentationDataset",
    "TrainingItem",
    "fingerprint",
    "folds_for",
    "heldout_ids",
    "load_case",
    "open_dataset",
    "preprocess",
    "read_cases",
    "recognises",
    "resize",
    "training_items",
]

CACHE_DIR = "segmentation_preprocessed"


def recognises(spec: str) -> bool:
    """An MSD / nnU-Net folder or an image + mask folder pair (DRIVE-like)."""
    try:
        return segdata.recognises(spec)
    except (OSError, ValueError):
        return False


def folds_for(ds: SegmentationDataset) -> Folds:
    """The stored patient-level folds of ``ds`` (its official test split kept apart when it has one)."""
    if ds.layout == "busi":  # BUSI's published, grouped folds (medsight.data.busi), never derived per run
        from medsight.data import busi

        return busi.folds_of(ds.root)
    ids = [c.id for c in ds.train]
    official = [c.id for c in ds.test] if ds.official_test else None
    return stored_folds(ds.root, ids, None, official)


def heldout_ids(ds: SegmentationDataset, folds: Folds) -> list[str]:
    return [c.id for c in ds.test] if ds.official_test else list(folds.test)


def fingerprint(ds: SegmentationDataset, loaded: Sequence[Loaded], seed: int = 0) -> dict[str, Any]:
    """The data fingerprint, plus the field of view of 2D images taken through a round aperture (fundus photographs):
    ``field_of_view`` is None unless every image has one."""
    fp = data_fingerprint(ds, loaded, seed)
    if ds.spatial_dims == 2:
        fp["field_of_view"] = fundus.fingerprint_fov([c.image for c in loaded])
    return fp


def read_cases(ds: SegmentationDataset, ids: Sequence[str], desc: str = "read") -> dict[str, Loaded]:
    return {i: load_case(ds, ds.case(i)) for i in tqdm(ids, desc=desc, unit="case", disable=len(ids) < 8)}


# ----------------------------------------------------------------------------------------------- preprocessing


def normalise(image: np.ndarray, plan: SegmentationPlan, fov: np.ndarray | None = None) -> np.ndarray:
    """Apply the plan's normalisation to ``(C, *spatial)``; per-image schemes use only the pixels inside ``fov``
    (the field of view) when it is given, and set the rest to 0."""
    norm = plan.normalisation
    if fov is not None and norm.scheme != "ct":
        return fundus.standardise(image, fov)
    out = np.empty_like(image, dtype=np.float32)
    for c in range(image.shape[0]):
        x = image[c].astype(np.float32)
        if norm.scheme == "ct":
            assert norm.clip is not None and norm.mean is not None and norm.std is not None
            lo, hi = norm.clip[c]
            out[c] = (np.clip(x, lo, hi) - norm.mean[c]) / norm.std[c]
        else:
            out[c] = (x - x.mean()) / max(float(x.std()), 1e-6)
    return out


def match_channels(image: np.ndarray, n_channels: int) -> np.ndarray:
    """Grey → repeated to the model's channels; colour → mean for a one-channel model."""
    if image.shape[0] == n_channels:
        return image
    if n_channels == 1:
        return image.mean(axis=0, keepdims=True)
    if image.shape[0] == 1:
        return np.repeat(image, n_channels, axis=0)
    raise ValueError(f"image has {image.shape[0]} channels, the model takes {n_channels}")


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> list[int]:
    return [max(1, round(s * sp / t)) for s, sp, t in zip(shape, spacing, target, strict=True)]


def resize(array: np.ndarray, shape: Sequence[int], label: bool, anti_aliasing: bool = False) -> np.ndarray:
    """Resize ``(C, *spatial)`` to ``shape``: linear for images and probabilities, nearest for labels; with
    ``anti_aliasing`` an image is smoothed before it is shrunk (MONAI's Gaussian), so thin structures survive."""
    if list(array.shape[1:]) == list(shape):
        return array
    from monai.transforms import Resize

    mode = "nearest" if label else ("bilinear" if len(shape) == 2 else "trilinear")
    out = Resize(spatial_size=list(shape), mode=mode, anti_aliasing=anti_aliasing and not label)(torch.as_tensor(array))
    return np.asarray(out.cpu().numpy() if isinstance(out, torch.Tensor) else out)


def needs_resampling(spacing: Sequence[float], plan: SegmentationPlan) -> bool:
    """Every image whose spacing differs from the plan's by more than 1% is resampled (training and inference)."""
    target = plan.target_spacing
    return len(spacing) == len(target) and not np.allclose(spacing, target, rtol=0.01)


def preprocess(
    image: np.ndarray, spacing: Sequence[float], plan: SegmentationPlan, label: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Normalise (on the original grid) and resample to the plan's spacing, and, for a plan with a field of view,
    to the size that gives the image's FOV the training FOV's diameter."""
    fov = fundus.find_fov(image) if plan.field_of_view is not None else None
    image = normalise(match_channels(image, plan.network.in_channels), plan, fov)
    shape: list[int] | None = None
    if needs_resampling(spacing, plan):
        shape = resampled_shape(image.shape[1:], spacing, plan.target_spacing)
    if fov is not None and plan.field_of_view is not None:
        factors = fundus.scale_factors(fov, plan.field_of_view.diameter)
        if any(f != 1.0 for f in factors):
            shape = [max(1, round(s * f)) for s, f in zip(shape or image.shape[1:], factors, strict=True)]
    if plan.image_pixels:
        shape = whole_image_shape(shape or image.shape[1:], plan.image_pixels)
    if shape is not None:
        image = resize(image, shape, label=False, anti_aliasing=fov is not None or plan.image_pixels is not None)
        if label is not None:
            label = resize(label[None].astype(np.float32), shape, label=True)[0].astype(np.int64)
    return image.astype(np.float32), label


# ----------------------------------------------------------------------------------------------- training items


@dataclass
class TrainingItem:
    """A preprocessed training case: image ``(C, *spatial)``, label ``(1, *spatial)`` and the flat indices of
    foreground and (inside the ROI) background voxels, which the patch sampler centres on."""

    image: np.ndarray
    label: np.ndarray
    fg: np.ndarray
    bg: np.ndarray

    def as_dict(self) -> dict[str, Any]:
        return {"image": self.image, "label": self.label, "fg": self.fg, "bg": self.bg}


def _item(case: Loaded, plan: SegmentationPlan) -> TrainingItem:
    assert case.label is not None
    image, label = preprocess(case.image, case.spacing, plan, case.label)
    assert label is not None
    roi = case.roi
    if roi is not None and roi.shape != label.shape:
        roi = resize(roi[None].astype(np.float32), label.shape, label=True)[0] > 0
    flat = label.ravel()
    fg = np.flatnonzero(flat > 0)
    bg = np.flatnonzero((flat == 0) & (roi.ravel() if roi is not None else True))
    return TrainingItem(image, label[None].astype(np.float32), fg, bg)


def cache_key(ds: SegmentationDataset, fp: dict[str, Any], plan: SegmentationPlan) -> str:
    """Hash of what the preprocessed arrays depend on: the data (fingerprint and files) and the plan's preprocessing."""
    files = []
    for case in ds.train:
        for p in (*case.images, case.label, *case.more_labels, case.roi):
            if p is not None:
                st = p.stat()
                files.append([p.name, st.st_size, st.st_mtime_ns])
    what = {
        "version": 1,
        "root": str(ds.root.resolve()),
        "fingerprint": fp,
        "files": files,
        "target_spacing": plan.target_spacing,
        "resample": plan.resample,
        "normalisation": plan.normalisation.to_json(),
        "in_channels": plan.network.in_channels,
    }
    if plan.field_of_view is not None:
        what["field_of_view"] = plan.field_of_view.to_json()
    if plan.image_pixels:
        what["image_pixels"] = plan.image_pixels
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:24]


def training_items(
    ds: SegmentationDataset, cases: dict[str, Loaded], ids: Sequence[str], fp: dict[str, Any], plan: SegmentationPlan
) -> tuple[list[TrainingItem], int]:
    """The preprocessed training cases (from the cache when present) and how many were read from the cache."""
    folder = config.cache_root() / CACHE_DIR / cache_key(ds, fp, plan)
    items: list[TrainingItem] = []
    hits = 0
    for cid in tqdm(ids, desc="preprocess", unit="case", disable=len(ids) < 8):
        path = folder / f"{_safe(cid)}.npz"
        if path.is_file():
            try:
                with np.load(path) as z:
                    items.append(TrainingItem(z["image"], z["label"], z["fg"], z["bg"]))
                hits += 1
                continue
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache entry is rebuilt below
        item = _item(cases[cid], plan)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, image=item.image, label=item.label, fg=item.fg, bg=item.bg)
        except OSError:
            pass  # a read-only cache only costs the speed-up
        items.append(item)
    return items, hits


def _safe(case_id: str) -> str:
    return (
        "".join(c if c.isalnum() or c in "-_." else "_" for c in case_id)[:80]
        + "_"
        + hashlib.sha1(case_id.encode()).hexdigest()[:8]
    )
