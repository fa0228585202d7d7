"""MONAI transform chains: one preparation chain shared by training and prediction, and augmentation per modality."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAdjustContrast,
    RandAffine,
    RandFlip,
    RandGaussianNoise,
    Resize,
    ScaleIntensity,
)

#: Modalities where a left-right flip keeps the image plausible.
FLIP_OK = {"ultrasound", "dermoscopy", "pathology", "microscopy", "fundus", "oct", "ct", "mri", "mra", "em"}


def prepare(image: np.ndarray, spatial_size: Sequence[int], n_channels: int) -> np.ndarray:
    """Channels-first image of any size and intensity range → the model's input: size, channels, [0, 1]."""
    arr = np.asarray(image, dtype=np.float32)
    if arr.shape[0] != n_channels:
        if n_channels == 1:
            arr = arr.mean(axis=0, keepdims=True)
        elif arr.shape[0] == 1:
            arr = np.repeat(arr, n_channels, axis=0)
        else:
            arr = arr[:n_channels]
    chain = Compose(
        [
            ScaleIntensity(minv=0.0, maxv=1.0),
            Resize(
                spatial_size=tuple(spatial_size),
                mode="area" if _shrinks(arr, spatial_size) else "bilinear" if len(spatial_size) == 2 else "trilinear",
            ),
        ]
    )
    out = chain(arr)
    return np.asarray(out.numpy() if isinstance(out, torch.Tensor) else out, dtype=np.float32)


def _shrinks(arr: np.ndarray, spatial_size: Sequence[int]) -> bool:
    return any(s > t for s, t in zip(arr.shape[1:], spatial_size, strict=False))


def augmentation(modality: str, spatial_dims: int, seed: int) -> Compose:
    """Mild, anatomy-preserving augmentation: small affine, contrast and noise; flips only where plausible."""
    rotate = (np.pi / 18,) * (1 if spatial_dims == 2 else 3)
    steps: list = [
        RandAffine(
            prob=0.7,
            rotate_range=rotate,
            scale_range=(0.1,) * spatial_dims,
            translate_range=(0.08,) * spatial_dims,
            padding_mode="border",
        ),
        RandAdjustContrast(prob=0.3, gamma=(0.8, 1.25)),
        RandGaussianNoise(prob=0.2, std=0.02),
    ]
    if modality in FLIP_OK:
        steps.insert(0, RandFlip(prob=0.5, spatial_axis=spatial_dims - 1))
    chain = Compose(steps)
    chain.set_random_state(seed=seed)
    return chain
