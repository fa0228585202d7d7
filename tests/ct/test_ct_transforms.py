"""The lung CT chain: the lung window (MONAI ScaleIntensityRange) and the plan's HU normalisation agree, the lung
mask finds two lungs and not the air around the patient, and the chain floors HU, crops to the lungs and resamples.
Synthetic phantoms: seconds, no shared data."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor

from medsight.tasks.segmentation.data import normalise
from medsight.tasks.segmentation.plan import NormalisationPlan, SegmentationPlan
from medsight.transforms import (
    LUNG_WINDOW_HU,
    ct_lung_preparation,
    lung_mask,
    lung_window,
    lung_window_normalisation,
)


def phantom(shape: tuple[int, int, int] = (80, 64, 20)) -> np.ndarray:
    """Air around a soft-tissue body holding two lungs (-850 HU), a nodule (40 HU) in the left one, and -2048
    padding in one corner (outside a scanner's field of view)."""
    x, y, z = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    ct = np.full(shape, -1000.0)
    body = ((x - 40) / 36) ** 2 + ((y - 32) / 28) ** 2 <= 1
    ct[body] = 40.0
    for cx in (22, 58):
        ct[(((x - cx) / 12) ** 2 + ((y - 32) / 18) ** 2 <= 1) & (z > 2) & (z < 17)] = -850.0
    ct[((x - 58) ** 2 + (y - 32) ** 2 + (z - 10) ** 2) <= 9] = 40.0
    ct[:3, :3] = -2048.0
    return ct


def test_lung_window_equals_the_plans_ct_normalisation() -> None:
    hu = np.array([[-3000.0, -1000.0, -300.0, 400.0, 2000.0]], np.float32)
    windowed = lung_window(out_range=(-1.0, 1.0))({"image": hu[None]})["image"]
    plan_norm = NormalisationPlan.from_json(lung_window_normalisation())
    plan = SegmentationPlan.__new__(SegmentationPlan)
    plan.normalisation = plan_norm
    assert np.allclose(np.asarray(windowed)[0], normalise(hu[None], plan)[0], atol=1e-6)
    unit = np.asarray(lung_window()({"image": hu[None]})["image"])[0, 0]
    assert unit.tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert LUNG_WINDOW_HU == (-1000.0, 400.0)


def test_lung_mask_finds_both_lungs_and_keeps_a_pleural_nodule_inside() -> None:
    ct = phantom()
    mask = lung_mask(ct)
    assert mask[22, 32, 10] and mask[50, 32, 10]
    assert not mask[1, 1, 10] and not mask[40, 2, 10]  # outside air and padding are not lung
    assert mask[58, 32, 10]  # the nodule is closed into the lung
    from scipy import ndimage

    assert ndimage.label(mask)[1] == 2
    assert not lung_mask(np.full((10, 10, 5), 40.0)).any()


def test_preparation_floors_crops_and_resamples() -> None:
    ct = phantom()
    affine = torch.diag(torch.tensor([-0.8, -0.8, 2.5, 1.0], dtype=torch.float64))
    data = {
        "image": MetaTensor(torch.as_tensor(ct[None], dtype=torch.float32), affine=affine),
        "label": MetaTensor(torch.as_tensor((ct > 0)[None], dtype=torch.float32), affine=affine),
    }
    out = ct_lung_preparation((1.6, 1.6, 2.5), margin_mm=3.2)(data)
    image = out["image"]
    assert float(image.min()) >= -1024.0
    spacing = np.sqrt((np.asarray(image.affine)[:3, :3] ** 2).sum(axis=0))
    assert np.allclose(spacing, (1.6, 1.6, 2.5))
    # lungs span x 10..70 of 80 voxels at 0.8 mm: cropped with 2 voxels of margin, then halved by resampling
    assert image.shape[1] < ct.shape[0] / 2 and image.shape[1] >= (70 - 10) / 2
    assert image.shape == out["label"].shape == out["lung"].shape
