"""The separate objects of a predicted mask: each connected region of a class, with its size and confidence.

Why: a report that says "nodule: 0.93" cannot tell a radiologist that there are three nodules, where they are or how
big each is. Each connected region (26-connectivity in 3D, 8 in 2D) of a foreground class becomes one finding, with
its size, the highest probability the model gave its class inside it, and the slices it spans; the SR writes one
measurement group per region (``predict.py``), as nodule tools report one per nodule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: the most regions reported per class (the largest first); a fragmented organ must not flood the report
MAX_REGIONS_PER_CLASS = 20


@dataclass(frozen=True)
class Region:
    """One connected region of class ``label``: ``number`` ranks it by size within its class (1 = largest)."""

    label: str
    number: int
    voxels: int
    size: float  # in ``unit``: mm³ (3D), mm² (2D with spacing) or pixels
    unit: str
    peak_probability: float
    slices: tuple[int, ...]  # indices along the last axis that it touches (3D); empty in 2D
    centre: tuple[float, ...]  # centre of mass, in array indices

    @property
    def name(self) -> str:
        return f"{self.label} {self.number}"

    def payload(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "number": self.number,
            "voxels": self.voxels,
            "size": round(self.size, 3),
            "unit": self.unit,
            "peak_probability": round(self.peak_probability, 4),
            "slices": list(self.slices),
            "centre": [round(c, 2) for c in self.centre],
        }


def regions(
    mask: np.ndarray,
    confidence: np.ndarray,
    labels: list[str],
    spacing: tuple[float, ...],
    unit: str,
    max_per_class: int = MAX_REGIONS_PER_CLASS,
) -> tuple[list[Region], dict[str, int]]:
    """The connected regions of every foreground class of ``mask`` (class indices into ``labels``), largest first,
    at most ``max_per_class`` each; and per class how many smaller ones were left out.

    ``confidence`` holds, per voxel, the probability of the class the mask assigns there (same shape). ``unit`` is
    the size unit: "pixels" counts voxels, any other multiplies by the voxel size from ``spacing``.
    """
    from scipy import ndimage

    if confidence.shape != mask.shape:
        raise ValueError(f"confidence {confidence.shape} and mask {mask.shape} differ in shape")
    structure = np.ones((3,) * mask.ndim, bool)
    voxel = 1.0 if unit == "pixels" else float(np.prod(spacing[: mask.ndim]))
    found: list[Region] = []
    omitted: dict[str, int] = {}
    extents = ndimage.find_objects(mask.astype(np.int32, copy=False))  # each class's bounding box, in one pass
    for c in range(1, len(labels)):
        if c > len(extents) or extents[c - 1] is None:
            continue
        box = extents[c - 1]  # work inside the class's bounding box only
        offset = np.array([sl.start for sl in box], float)
        inside, conf = mask[box] == c, confidence[box]
        components, n = ndimage.label(inside, structure=structure)
        index = np.arange(1, n + 1)
        counts = np.bincount(components.ravel(), minlength=n + 1)[1:]
        order = np.argsort(-counts, kind="stable")[:max_per_class]
        peaks = ndimage.maximum(conf, components, index)
        centres = ndimage.center_of_mass(inside, components, index)
        for rank, k in enumerate(order, start=1):
            slices: tuple[int, ...] = ()
            if mask.ndim == 3:
                touched = np.flatnonzero((components == k + 1).any(axis=(0, 1)))
                slices = tuple(int(box[2].start + z) for z in touched)
            found.append(
                Region(
                    label=labels[c],
                    number=rank,
                    voxels=int(counts[k]),
                    size=float(counts[k]) * voxel,
                    unit=unit,
                    peak_probability=float(min(1.0, max(0.0, peaks[k]))),
                    slices=slices,
                    centre=tuple(float(v) for v in np.asarray(centres[k]) + offset),
                )
            )
        if n > max_per_class:
            omitted[labels[c]] = n - max_per_class
    return found, omitted
