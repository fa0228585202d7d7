"""Per-nodule scoring of a 3D nodule probability map: candidates, LUNA16 hits, FROC.

A segmenter becomes a detector here: each connected component of the probability map above a low threshold is a
candidate scored by its highest probability, placed at the centre of its bounding box in patient space (LPS mm).
A candidate hits a nodule when its centre lies strictly within the nodule's radius of the nodule's centre (LUNA16's
rule, :func:`medsight.evaluation.froc.within_radius`); nodules are given as boxes centre ± radius, which
``froc.lesion_circles`` turns back into exactly that sphere. The FROC itself is :mod:`medsight.evaluation.froc`'s
(MONAI's curve and interpolation). :func:`found_at` adds the plain counts behind each operating point, so a figure
over a handful of nodules can carry an exact binomial interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medsight.evaluation.froc import ImageMatch, match_image
from medsight.io.geometry import LPS_TO_RAS  # its own inverse: RAS (NIfTI, MONAI) to LPS (LIDC, LUNA16) too


@dataclass(frozen=True)
class Candidate:
    """One candidate nodule: its score, voxel count, and bounding box ``(x1, y1, z1, x2, y2, z2)`` in LPS mm."""

    score: float
    voxels: int
    box_lps: tuple[float, float, float, float, float, float]

    @property
    def centre_lps(self) -> tuple[float, float, float]:
        b = self.box_lps
        return ((b[0] + b[3]) / 2, (b[1] + b[4]) / 2, (b[2] + b[5]) / 2)

    def to_json(self) -> dict[str, object]:
        return {
            "score": round(self.score, 4),
            "voxels": self.voxels,
            "centre_lps_mm": [round(v, 2) for v in self.centre_lps],
        }


def candidates(
    probability: np.ndarray,
    affine_ras: np.ndarray,
    threshold: float = 0.1,
    within: np.ndarray | None = None,
    max_candidates: int = 100,
    rule: str = "touching",
) -> list[Candidate]:
    """Connected components (26-connected) of ``probability >= threshold`` on an ``(x, y, z)`` grid with RAS
    ``affine_ras``, best first; with ``within`` (e.g. the lung mask) a component touching none of it is dropped.
    Touching, not centred in: a nodule on the pleura or a large solid one is a hole in a threshold lung mask, and
    its centre often lies outside even the closed mask. ``rule="centre"`` keeps only components whose bounding-box
    centre voxel lies in ``within`` (the rule of the first LIDC run, kept so that its figure can be reproduced)."""
    from scipy import ndimage

    if rule not in ("touching", "centre"):
        raise ValueError(f"unknown candidate rule {rule!r} (touching or centre)")

    prob = np.asarray(probability, dtype=np.float32)
    components, n = ndimage.label(prob >= threshold, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return []
    labels = np.arange(1, n + 1)
    scores = ndimage.maximum(prob, components, labels)
    sizes = ndimage.sum_labels(np.ones_like(prob), components, labels)
    touches = ndimage.maximum(np.asarray(within, bool), components, labels) if within is not None else np.ones(n)
    lps = LPS_TO_RAS @ np.asarray(affine_ras, dtype=float)
    out: list[Candidate] = []
    for k, box in enumerate(ndimage.find_objects(components)):
        if box is None or not touches[k]:
            continue
        if rule == "centre" and within is not None and not within[tuple((s.start + s.stop - 1) // 2 for s in box)]:
            continue
        lo = np.array([s.start for s in box], float) - 0.5
        hi = np.array([s.stop for s in box], float) - 0.5
        corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        world = (lps @ corners.T).T[:, :3]
        w_lo, w_hi = world.min(axis=0), world.max(axis=0)
        out.append(Candidate(float(scores[k]), int(sizes[k]), (*map(float, w_lo), *map(float, w_hi))))  # type: ignore[arg-type]
    out.sort(key=lambda c: -c.score)
    return out[:max_candidates]


def nodule_boxes(centres_lps: Sequence[Sequence[float]], diameters_mm: Sequence[float]) -> np.ndarray:
    """Nodules as boxes centre ± radius (LPS mm), the form ``froc.within_radius`` reads back as spheres."""
    c = np.asarray(centres_lps, dtype=float).reshape(-1, 3)
    r = np.asarray(diameters_mm, dtype=float).reshape(-1, 1) / 2
    return np.concatenate([c - r, c + r], axis=1)


def match_scan(found: Sequence[Candidate], nodule_box: np.ndarray) -> ImageMatch:
    """One scan's candidates against its nodules, by the LUNA16 radius rule."""
    boxes = np.asarray([c.box_lps for c in found], dtype=float).reshape(-1, 6)
    scores = np.asarray([c.score for c in found], dtype=float)
    return match_image(boxes, scores, np.asarray(nodule_box, float).reshape(-1, 6), criterion="radius")


def found_at(matches: Sequence[ImageMatch], rate: float) -> tuple[int, int, float]:
    """(nodules found, nodules, threshold) at the lowest score threshold whose false positives per scan stay at or
    below ``rate``: the count behind a FROC point, without interpolation."""
    n_scans = max(1, len(matches))
    best = np.concatenate([m.lesion_best for m in matches]) if matches else np.zeros(0)
    fps = np.sort(np.concatenate([m.fp_scores for m in matches]) if matches else np.zeros(0))[::-1]
    allowed = int(np.floor(rate * n_scans + 1e-9))
    # a threshold just above the (allowed+1)-th highest false-positive score admits exactly `allowed` of them
    threshold = float(np.nextafter(fps[allowed], np.inf)) if len(fps) > allowed else 0.0
    hit = (best > 0) & (best >= threshold)
    return int(hit.sum()), len(best), threshold
