"""Field of view (FOV) of 2D images taken through a round aperture (fundus photographs): find it, measure it, and
normalise scale and colour by it, so that a model trained on one camera is not tuned to that camera.

Why: a vessel model learns vessel widths in pixels and intensities of one camera's colour balance. Fundus cameras
differ in resolution (DRIVE's FOV is about 540 px wide; many cameras give 1000-3000 px) and colour, and an image
without its FOV mask makes the model fire on the bright rim of the aperture. Most fundus cameras image a similar
angle of the retina (about 45 degrees), so the FOV diameter is a physical ruler: images are resampled so that their
FOV has the training FOV's size (the mask is mapped back to the original grid by the caller), colour is normalised
per channel inside the FOV by ranks (invariant to any monotone colour curve), and predictions outside it are
suppressed.

The FOV is found as scikit-image/scipy would: threshold the brightest channel a little above the dark surround,
open, keep the largest connected component and fill its holes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

#: The threshold is this fraction of the way from the dark surround (1st percentile) to the bright end (99.5th
#: percentile) of the brightest channel: DRIVE's surround is 0-10 and its darkest FOV pixels about 25 of ~220.
THRESHOLD_FRACTION = 0.08
#: An image "has a field of view" when the found region covers this share of it, is this much brighter than its
#: surround, and fills its bounding ellipse (a disc, possibly cut by the image border).
FOV_AREA = (0.2, 0.97)
SURROUND_CONTRAST = 4.0
MIN_FILL = 0.85
#: Scale differences below this (relative) are not resampled: resampling blurs, and DRIVE's FOVs vary by ~1%.
SCALE_TOLERANCE = 0.02


def brightness(image: np.ndarray) -> np.ndarray:
    """The brightest channel per pixel: the FOV is bright in at least one channel whatever the colour balance."""
    return np.asarray(image, dtype=np.float32).max(axis=0)


def find_fov(image: np.ndarray) -> np.ndarray:
    """Boolean FOV mask ``(H, W)`` of ``image`` ``(C, H, W)``; the whole image when no dark surround is found."""
    lum = brightness(image)
    lo, hi = np.percentile(lum, [1.0, 99.5])
    if hi <= lo:
        return np.ones(lum.shape, bool)
    mask = lum > lo + THRESHOLD_FRACTION * (hi - lo)
    radius = max(1, round(min(lum.shape) / 200))  # cut thin bridges to text and frame marks, whatever the size
    mask = ndimage.binary_opening(mask, structure=np.ones((2 * radius + 1,) * 2, bool))
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.ones(lum.shape, bool)
    largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    return np.asarray(ndimage.binary_fill_holes(labels == largest), dtype=bool)


def looks_like_fov(image: np.ndarray, fov: np.ndarray) -> bool:
    """Whether ``fov`` is an aperture: a disc (maybe cut by the border) much brighter than a dark surround."""
    share = float(fov.mean())
    if not FOV_AREA[0] <= share <= FOV_AREA[1]:
        return False
    lum = brightness(image)
    inside, outside = float(lum[fov].mean()), float(lum[~fov].mean())
    if inside < SURROUND_CONTRAST * max(outside, 1e-6):
        return False
    ys, xs = np.nonzero(fov)
    ellipse = np.pi / 4 * (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    return float(fov.sum()) / ellipse >= MIN_FILL or _cut_by_border(fov) != (False, False)


def _cut_by_border(fov: np.ndarray) -> tuple[bool, bool]:
    """(cut at the top or bottom, cut at the left or right): there the FOV's extent is the image's, not the disc's."""
    return bool(fov[0].any() or fov[-1].any()), bool(fov[:, 0].any() or fov[:, -1].any())


def fov_diameter(fov: np.ndarray) -> list[float]:
    """The FOV's extent per axis ``[rows, columns]`` in pixels. An axis cut by the image border takes the other
    axis's extent (a disc is as tall as it is wide); when both are cut, the larger extent is used for both."""
    ys, xs = np.nonzero(fov)
    if ys.size == 0:
        return [float(fov.shape[0]), float(fov.shape[1])]
    height, width = float(ys.max() - ys.min() + 1), float(xs.max() - xs.min() + 1)
    cut_rows, cut_cols = _cut_by_border(fov)
    if cut_rows and cut_cols:
        height = width = max(height, width)
    elif cut_rows:
        height = width
    elif cut_cols:
        width = height
    return [height, width]


def scale_factors(fov: np.ndarray, reference: Sequence[float]) -> list[float]:
    """Per-axis zoom that gives ``fov`` the ``reference`` diameter; 1 where the difference is within tolerance."""
    factors = [float(r) / max(d, 1.0) for r, d in zip(reference, fov_diameter(fov), strict=True)]
    return [1.0 if abs(f - 1.0) <= SCALE_TOLERANCE else f for f in factors]


def standardise(image: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """Each channel's pixels inside the FOV replaced by their normal scores (rank → standard normal quantile); 0
    outside.

    A camera's colour balance and exposure act on each channel as a monotone transfer curve (gain, offset, gamma,
    white balance). Ranks are unchanged by any such curve, so their normal scores are too (what scikit-learn's
    ``QuantileTransformer(output_distribution="normal")`` does, exactly and per image); a z-score would undo only
    gain and offset. Statistics come from inside the FOV only, so the share of black surround, which changes with
    the aperture, does not weigh on them."""
    from scipy.special import ndtri
    from scipy.stats import rankdata

    out = np.zeros(image.shape, np.float32)
    for c in range(image.shape[0]):
        values = image[c][fov]
        if values.size:
            out[c][fov] = ndtri((rankdata(values) - 0.5) / values.size).astype(np.float32)
    return out


def fingerprint_fov(images: Sequence[np.ndarray]) -> dict[str, object] | None:
    """What the planner needs about the FOV of training images ``(C, H, W)``: None unless every image has one."""
    diameters = []
    for image in images:
        fov = find_fov(image)
        if not looks_like_fov(image, fov):
            return None
        diameters.append(fov_diameter(fov))
    if not diameters:
        return None
    d = np.asarray(diameters)
    return {
        "diameter_median": np.median(d, axis=0).round(1).tolist(),
        "diameter_min": d.min(axis=0).tolist(),
        "diameter_max": d.max(axis=0).tolist(),
        "n_images": len(diameters),
    }
