"""Each connected region of a predicted class is its own finding: size, confidence, slices (``lesions.regions``)."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.tasks.segmentation.lesions import regions

LABELS = ["background", "nodule", "vessel", "absent"]


def _volume() -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((40, 40, 20), np.uint8)
    mask[20:30, 20:30, 5:15] = 1  # 1000 voxels
    mask[2:5, 2:5, 1:3] = 1  # 18 voxels
    mask[5, 5, 3] = 1  # touches the small one only by a corner: still the same region (26-connectivity)
    mask[35:38, 1:3, 18] = 2
    confidence = np.full(mask.shape, 0.5, np.float32)
    confidence[25, 25, 10], confidence[3, 3, 1] = 0.97, 0.71
    return mask, confidence


def test_every_region_is_numbered_by_size_with_its_volume_peak_and_slices() -> None:
    mask, confidence = _volume()
    found, omitted = regions(mask, confidence, LABELS, (0.5, 0.5, 2.0), "mm³")
    assert [r.name for r in found] == ["nodule 1", "nodule 2", "vessel 1"]
    big, small, vessel = found
    assert (big.voxels, big.size, big.slices) == (1000, 500.0, tuple(range(5, 15)))
    assert big.peak_probability == pytest.approx(0.97) and big.centre == pytest.approx((24.5, 24.5, 9.5))
    assert (small.voxels, small.slices, small.peak_probability) == (19, (1, 2, 3), pytest.approx(0.71))
    assert (vessel.voxels, vessel.slices) == (6, (18,))
    assert omitted == {}  # and the class found nowhere gives no region


def test_pixels_are_counted_and_a_fragmented_class_is_capped() -> None:
    mask = np.zeros((20, 20), np.uint8)
    mask[::3, ::3] = 1  # 49 isolated pixels
    mask[10:14, 10:14] = 2
    found, omitted = regions(mask, np.ones(mask.shape, np.float32), LABELS, (0.7, 0.7), "pixels", max_per_class=5)
    assert [r.name for r in found if r.label == "nodule"] == [f"nodule {k}" for k in range(1, 6)]
    vessel = next(r for r in found if r.label == "vessel")
    assert (vessel.size, vessel.unit, vessel.slices) == (16.0, "pixels", ())
    # the 4x4 vessel square covers one of the grid's pixels (12, 12): 48 nodule regions, 5 reported
    assert omitted == {"nodule": 48 - 5}


def test_confidence_must_match_the_mask() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        regions(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.float32), LABELS, (1.0, 1.0), "mm²")
