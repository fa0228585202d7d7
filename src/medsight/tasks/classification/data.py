"""Classification data: the sources a user names, the splits training needs, and new inputs read for prediction.

Training and prediction prepare images the same way (:func:`medsight.transforms.prepare`), so a model sees
at prediction time what it saw in training.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from medsight.data.dataset import ClassificationData, SplitData
from medsight.data.sources import load_classification
from medsight.errors import MedsightError
from medsight.io.images import read_image
from medsight.training.bundle import Bundle
from medsight.transforms import prepare

log = logging.getLogger("medsight.data")

__all__ = ["ClassificationData", "SplitData", "load", "load_like", "positive_class", "read_inputs", "val_split"]


def load(spec: str, seed: int) -> ClassificationData:
    """The data set ``spec`` names (MedMNIST, a MedMNIST-layout .npz or a manifest), split by the split seed ``seed``
    if needed (:func:`medsight.data.splits.split_seed`, never the training seed)."""
    return load_classification(spec, seed=seed)


def load_like(bundle: Bundle, spec: str, seed: int) -> ClassificationData:
    """``spec`` prepared as the bundle's model expects (same size, channels, labels), or a clear error; split by the
    split seed ``seed`` the bundle recorded (:func:`medsight.data.splits.recorded_split_seed`)."""
    like: dict[str, Any] = {
        **bundle.input,
        "label_names": bundle.label_names,
        "task_type": bundle.meta["task_type"],
    }
    return load_classification(spec, like=like, seed=seed)


def published_release(data: ClassificationData) -> bool:
    """Whether ``data`` is an official MedMNIST file, verified by its MD5: its splits are published and unchanged, so
    a training image its own test split repeats belongs to the release (flagged, not refused, by the leakage check)."""
    from medsight.data import medmnist

    if not data.name.startswith("medmnist:") or data.split_method != "official":
        return False
    try:
        official = medmnist.parse_name(data.name).md5
    except MedsightError:
        return False
    return set(data.fingerprint.get("files", {}).values()) == {official}


def positive_class(data: ClassificationData, override: str | None = None) -> str | None:
    """The label whose detection counts as positive (binary data only): ``--positive`` if given, else what the data
    set declares, else the second label (with a warning, since that is a convention, not a finding)."""
    if data.task_type != "binary":
        if override is not None:
            raise MedsightError(f"--positive applies to binary data; {data.name} is {data.task_type}")
        return None
    if override is not None:
        if override not in data.label_names:
            raise MedsightError(
                f"--positive {override} is not one of the labels ({', '.join(data.label_names)})", data.name
            )
        return override
    if data.positive is not None:
        return data.positive
    log.warning(
        "%s declares no positive class: taking %r (give --positive LABEL to choose)", data.name, data.label_names[1]
    )
    return data.label_names[1]


def val_split(data: ClassificationData) -> SplitData:
    """The validation split: model selection, calibration and the operating point all need one."""
    if "val" not in data.splits:
        raise MedsightError("no validation split: model selection and calibration need one", data.name)
    val = data.splits["val"]
    labels = np.asarray(val.labels)
    if labels.ndim == 1 and len(np.unique(labels)) < 2:  # AUC, the operating point and calibration are undefined
        only = data.label_names[int(labels[0])] if len(labels) else "none"
        raise MedsightError(
            f"the validation split holds one class only ({only!r}, {len(labels)} case(s)): the best epoch, the "
            "temperature and the operating point cannot be chosen on it; give validation cases of every class",
            data.name,
        )
    if labels.ndim == 2 and len(labels):  # multi-label: each label needs cases with it and without it
        present = (labels >= 0.5).sum(axis=0)
        for k, count in enumerate(present):
            if count in (0, len(labels)):
                state = "absent from" if count == 0 else "present in"
                raise MedsightError(
                    f"label {data.label_names[k]!r} is {state} every validation case ({len(labels)} case(s)): its "
                    "AUC, threshold and calibration cannot be chosen on it; give validation cases with and without "
                    "every label",
                    data.name,
                )
    return val


def read_inputs(inputs: Sequence[Path], spatial_dims: int, spatial_size: Sequence[int], n_channels: int) -> np.ndarray:
    """Read and check every input before any is run: ``(N, C, *spatial)`` float32, prepared as in training."""
    if not inputs:
        raise MedsightError("no input files given")
    prepared = []
    for path in tqdm(inputs, desc="read", unit="file", disable=len(inputs) < 4):  # reading and resizing both count
        image = read_image(path)
        if image.ndim - 1 != spatial_dims:
            raise MedsightError(f"a {image.ndim - 1}D image, but the model takes {spatial_dims}D images", path)
        prepared.append(prepare(image, list(spatial_size), n_channels))
    return np.stack(prepared)
