"""MONAI transform chains: one preparation chain shared by training and prediction, augmentation per modality, and
the lung CT chain (HU floor, lung mask and crop, resampling; the lung window as the model's normalisation)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    MapTransform,
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


# ----------------------------------------------------------------------------------------------- CT (lung)

#: The lung window (HU): air at -1000 up to soft tissue and small calcifications at 400.
LUNG_WINDOW_HU = (-1000.0, 400.0)
#: Air and aerated lung lie below this (HU); nodules, vessels and the chest wall above it.
LUNG_THRESHOLD_HU = -400.0
#: CT air; values below it are padding outside the scanner's field of view (-2048) or noise (docs/ct.md).
HU_FLOOR = -1024.0


def lung_window(keys: Sequence[str] = ("image",), out_range: tuple[float, float] = (0.0, 1.0)) -> MapTransform:
    """The lung window as MONAI's ``ScaleIntensityRanged``: [-1000, 400] HU → ``out_range``, clipped. With
    ``(-1, 1)`` it equals the segmentation plan's ``ct`` normalisation that :func:`lung_window_normalisation` gives."""
    from monai.transforms import ScaleIntensityRanged

    lo, hi = LUNG_WINDOW_HU
    return ScaleIntensityRanged(keys, a_min=lo, a_max=hi, b_min=out_range[0], b_max=out_range[1], clip=True)


def lung_window_normalisation() -> dict[str, object]:
    """The plan's HU-aware normalisation for lung CT (``SegmentationPlan.normalisation``): clip to the lung window,
    then centre and scale it to [-1, 1]; fixed, so a model sees the same numbers for the same tissue on any scan."""
    lo, hi = LUNG_WINDOW_HU
    return {"scheme": "ct", "clip": [[lo, hi]], "mean": [(lo + hi) / 2], "std": [(hi - lo) / 2]}


def lung_mask(image_hu: np.ndarray | torch.Tensor) -> np.ndarray:
    """Both lungs of a ``(x, y, z)`` or ``(1, x, y, z)`` CT in HU: voxels below -400 HU that are not outside air
    (air reaching the in-plane border of the volume), the two largest components (MONAI's
    ``KeepLargestConnectedComponent``), closed by 5 voxels (MONAI's dilate/erode) so that nodules on the pleura lie
    inside. Boolean ``(x, y, z)``; empty when the volume holds no lung."""
    from monai.transforms import KeepLargestConnectedComponent
    from monai.transforms.utils_morphological_ops import dilate, erode
    from scipy import ndimage

    arr = np.asarray(image_hu.detach().cpu().numpy() if isinstance(image_hu, torch.Tensor) else image_hu)
    arr = arr[0] if arr.ndim == 4 else arr
    air = arr < LUNG_THRESHOLD_HU
    components, n = ndimage.label(air)
    if n == 0:
        return np.zeros(arr.shape, bool)
    border = np.unique(np.concatenate([components[[0, -1]].ravel(), components[:, [0, -1]].ravel()]))
    air &= ~np.isin(components, border[border > 0])
    if not air.any():
        return np.zeros(arr.shape, bool)
    lungs = KeepLargestConnectedComponent(applied_labels=[1], num_components=2)(
        torch.as_tensor(air[None], dtype=torch.uint8)
    )
    closed = erode(dilate(torch.as_tensor(lungs, dtype=torch.float32)[None], 5), 5)
    return np.asarray(torch.as_tensor(closed)[0, 0].numpy() > 0.5)


class LungMaskd(MapTransform):
    """Add ``mask_key``: the :func:`lung_mask` of ``key`` (a MetaTensor in HU, channel first)."""

    def __init__(self, key: str = "image", mask_key: str = "lung") -> None:
        super().__init__([key])
        self.key, self.mask_key = key, mask_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        image = d[self.key]
        mask = lung_mask(image)[None]  # type: ignore[arg-type]
        if isinstance(image, MetaTensor):
            d[self.mask_key] = MetaTensor(torch.as_tensor(mask, dtype=torch.uint8), meta=dict(image.meta))
        else:
            d[self.mask_key] = mask.astype(np.uint8)
        return d


def ct_lung_preparation(
    spacing: Sequence[float], margin_mm: float = 10.0, keys: Sequence[str] = ("image", "label")
) -> Compose:
    """Lung CT in HU (channel-first MetaTensors under ``keys``; the first is the image) → floored at -1024 HU,
    cropped to the lungs plus ``margin_mm`` (``CropForegroundd`` on :class:`LungMaskd`), resampled to ``spacing`` mm
    (``Spacingd``: linear for the image, nearest for labels). Intensities stay HU: the lung window is the model's
    normalisation, applied the same way at training and at prediction. The lung mask is kept under ``"lung"``."""
    from monai.transforms import CropForegroundd, Spacingd, ThresholdIntensityd

    image, *labels = keys
    first = float(min(spacing))
    margin = max(1, round(margin_mm / first))
    mask_keys = [*keys, "lung"]
    return Compose(
        [
            ThresholdIntensityd([image], threshold=HU_FLOOR, above=True, cval=HU_FLOOR),
            LungMaskd(image, "lung"),
            CropForegroundd(mask_keys, source_key="lung", margin=margin, allow_smaller=True),
            Spacingd(
                mask_keys,
                pixdim=[float(s) for s in spacing],
                mode=["bilinear", *(["nearest"] * len(labels)), "nearest"],
            ),
        ]
    )
