"""The in-memory form every classification source is turned into: arrays per split plus metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

TaskType = Literal["binary", "multiclass", "multilabel"]
SPLITS = ("train", "val", "test")


@dataclass
class SplitData:
    """One split: images ``(N, C, *spatial)`` float32 in [0, 1], labels, and per-sample metadata.

    ``labels`` is ``(N,)`` int64 for binary/multi-class and ``(N, K)`` float32 0/1 for multi-label.
    ``attributes`` holds patient-level columns (sex, age, site, ...) used by the subgroup audit.
    """

    images: np.ndarray
    labels: np.ndarray
    patient_ids: list[str] | None = None
    attributes: pd.DataFrame | None = None
    sources: list[str] | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class ClassificationData:
    """A classification data set ready for training and evaluation."""

    name: str
    task_type: TaskType
    label_names: list[str]
    spatial_dims: int
    splits: dict[str, SplitData]
    modality: str = "unknown"
    fingerprint: dict[str, Any] = field(default_factory=dict)
    split_method: str = "official"
    #: Binary data: the label that is the finding (disease), so that sensitivity means finding it; None when the
    #: source declares none (the classification task then takes the second label and says so).
    positive: str | None = None
    #: Multi-class data whose labels are ordered grades (``label_names`` lowest first): MedMNIST's
    #: "ordinal-regression" sets and manifests that declare ``"task": "ordinal"``.
    ordinal: bool = False

    @property
    def n_channels(self) -> int:
        return int(next(iter(self.splits.values())).images.shape[1])

    @property
    def spatial_size(self) -> list[int]:
        return [int(s) for s in next(iter(self.splits.values())).images.shape[2:]]

    @property
    def n_outputs(self) -> int:
        return len(self.label_names)

    def split(self, name: str) -> SplitData:
        from medsight.errors import MedsightError

        if name not in self.splits:
            raise MedsightError(f"no '{name}' split (have: {', '.join(self.splits)})", self.name)
        return self.splits[name]


def infer_task_type(labels: np.ndarray, declared: str | None = None) -> TaskType:
    """Binary, multi-class or multi-label from MedMNIST's task string or the label array's shape."""
    if declared:
        if declared.startswith("multi-label"):
            return "multilabel"
        if declared.startswith("binary"):
            return "binary"
        return "multiclass"
    if labels.ndim == 2 and labels.shape[1] > 1:
        return "multilabel"
    return "binary" if len(np.unique(labels)) <= 2 else "multiclass"
