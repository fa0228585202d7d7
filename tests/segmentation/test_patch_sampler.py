"""The patch sampler on images without foreground (a lesion task's normal images) stays quiet."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np

from medsight.tasks.segmentation.augment import PatchSampler
from medsight.tasks.segmentation.data import TrainingItem


def test_images_without_foreground_give_patches_without_a_warning_each() -> None:
    """MONAI warned once per patch of a lesion-free image (the voxel count in the text defeats Python's
    once-per-place rule): a BUSI run printed thousands of lines. The sampler still crops such images."""
    label = np.zeros((1, 40, 40), np.float32)
    item = TrainingItem(np.random.default_rng(0).random((1, 40, 40), np.float32), label, np.array([], np.int64),
                        np.arange(1600))
    plan = SimpleNamespace(spatial_dims=2, patch_size=[32, 32], augmentation="cpu", foreground_oversampling=0.33,
                           batch_size=4, max_rotation_degrees=None, mirrored_axes=lambda: [0, 1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampler = PatchSampler([item], plan, seed=0)  # type: ignore[arg-type]
        x, y = sampler.batch()
    assert x.shape == (4, 1, 32, 32) and y.shape == (4, 1, 32, 32) and float(y.sum()) == 0.0
    assert not [w for w in caught if "Num foregrounds 0" in str(w.message)]
