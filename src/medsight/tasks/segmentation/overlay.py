"""Pictures of a segmentation: the prediction filled in class colours over the image, the reference outlined."""

from __future__ import annotations

import numpy as np

COLOURS = np.asarray(
    [[0, 0, 0], [0, 230, 60], [40, 120, 255], [255, 200, 0], [255, 60, 60], [200, 80, 255]], dtype=np.float32
)


def _grey(image: np.ndarray) -> np.ndarray:
    """``(C, *spatial)`` → RGB-ready float in 0..1 (colour kept for 3-channel images)."""
    x = image if image.shape[0] == 3 else image[:1]
    lo, hi = np.percentile(x, [0.5, 99.5])
    x = np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.repeat(x, 3, axis=0) if x.shape[0] == 1 else x


def view(image: np.ndarray, label: np.ndarray | None, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 2D view: the image, or for 3D the slice (last axis) with the most reference or predicted foreground."""
    if image.ndim == 3:
        lab = label if label is not None else np.zeros(mask.shape, np.int64)
        return image, lab, mask
    ref = label if label is not None else mask
    k = int(np.argmax((ref > 0).sum(axis=(0, 1)) + (mask > 0).sum(axis=(0, 1))))
    lab = label[..., k] if label is not None else np.zeros(mask.shape[:2], np.int64)
    return image[..., k], lab, mask[..., k]


def overlay(image: np.ndarray, mask: np.ndarray, label: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8: prediction filled in class colours, the reference (if given) outlined in white."""
    from scipy import ndimage

    rgb = np.moveaxis(_grey(image), 0, -1) * 255
    colours = COLOURS[np.minimum(mask, len(COLOURS) - 1)]
    alpha = (mask > 0)[..., None] * 0.45
    rgb = rgb * (1 - alpha) + colours * alpha
    if label is not None:
        edge = (label > 0) & ~ndimage.binary_erosion(label > 0)
        rgb[edge] = 255
    out = np.clip(rgb, 0, 255).astype(np.uint8)
    if max(out.shape[:2]) < 160:  # small 3D slices: enlarge for the card
        scale = max(1, 160 // max(out.shape[:2]))
        out = np.kron(out, np.ones((scale, scale, 1), np.uint8))
    return out
