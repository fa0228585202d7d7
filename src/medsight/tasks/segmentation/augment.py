"""Training batches: foreground-oversampled patches with MONAI augmentation, produced per epoch.

The patches are cropped first and augmented after, so the cost is that of a patch, not of a case; the batches are
produced on a background thread (:func:`medsight.training.engine.prefetch`) so augmentation overlaps the step.
``cuda`` augmentation is nnU-Net-like (affine, noise, blur, intensity scale, gamma, flips); ``cpu`` leaves out the
Gaussian blur, the costliest transform per 3D patch and the least useful one at CPU schedule lengths.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from medsight.tasks.segmentation.data import TrainingItem
from medsight.tasks.segmentation.plan import SegmentationPlan

#: MONAI warns, with the voxel count in the text (so Python's once-per-place rule does not hold), every time it crops
#: a patch from an image that has no foreground; an image without the lesion (BUSI's normals) is expected training
#: data, and a run printed thousands of these lines.
NO_FOREGROUND_WARNING = r"Num foregrounds 0, Num backgrounds \d+, unable to generate class balanced samples"


def train_transforms(plan: SegmentationPlan, seed: int) -> Any:
    """MONAI dictionary transforms for one training sample: pad, crop (foreground-oversampled), augment."""
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandScaleIntensityd,
        SpatialPadd,
    )

    dims = plan.spatial_dims
    patch = plan.patch_size
    degrees = plan.max_rotation_degrees
    rot = (math.pi if dims == 2 else math.pi / 6) if degrees is None else math.radians(degrees)
    keys = ["image", "label"]
    blur = (
        [RandGaussianSmoothd(["image"], prob=0.1, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0))]
        if plan.augmentation != "cpu"
        else []
    )
    chain = Compose(
        [
            SpatialPadd(keys, spatial_size=patch, mode="constant"),
            RandCropByPosNegLabeld(
                keys,
                label_key="label",
                spatial_size=patch,
                pos=plan.foreground_oversampling,
                neg=1 - plan.foreground_oversampling,
                num_samples=1,
                fg_indices_key="fg",
                bg_indices_key="bg",
            ),
            RandAffined(
                keys,
                prob=0.2,
                rotate_range=[rot] if dims == 2 else [rot] * 3,
                scale_range=[0.3] * dims,
                mode=["bilinear", "nearest"],
                padding_mode="zeros",
            ),
            RandGaussianNoised(["image"], prob=0.1, std=0.1),
            *blur,
            RandScaleIntensityd(["image"], factors=0.25, prob=0.15),
            RandAdjustContrastd(["image"], prob=0.15, gamma=(0.7, 1.5)),
            *[RandFlipd(keys, prob=0.5, spatial_axis=a) for a in plan.mirrored_axes()],
        ]
    )
    chain.set_random_state(seed=seed)
    return chain


class PatchSampler:
    """Draws ``batch_size`` cases at random (seeded) and one augmented patch from each, batch after batch.

    One sampler serves the whole run and is consumed in order, so the same seed gives the same batches whether or
    not they are produced on a background thread.
    """

    def __init__(self, items: Sequence[TrainingItem], plan: SegmentationPlan, seed: int) -> None:
        # a process-wide filter: the batches are drawn on a background thread, where catch_warnings is not safe
        warnings.filterwarnings("ignore", message=NO_FOREGROUND_WARNING, category=UserWarning)
        self.items = list(items)
        self.batch_size = plan.batch_size
        self.transforms = train_transforms(plan, seed)
        self.rng = np.random.default_rng(seed)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        picks = self.rng.integers(len(self.items), size=self.batch_size)
        samples = [self.transforms(self.items[i].as_dict())[0] for i in picks]
        x = torch.stack([torch.as_tensor(s["image"]) for s in samples]).float()
        y = torch.stack([torch.as_tensor(s["label"]) for s in samples]).float()
        return x.as_subclass(torch.Tensor).contiguous(), y.as_subclass(torch.Tensor).contiguous()

    def epoch(self, iterations: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(iterations):
            yield self.batch()
