"""Findings of several views or models of one image fused into one set: the test-time flip fuses two views of one
model (:mod:`.test_time`); a seed ensemble fuses its members' findings (``benchmarks/mias_ensemble.py``).

**Rule.** Within each class, the views are taken in turn: the boxes of the next view are paired one-to-one with the
clusters formed so far (each represented by its score-weighted mean box) exactly as the uncertainty pairs two views
(:func:`.uncertainty.paired`: Hungarian assignment on IoU, IoU >= 0.3); a paired box joins its cluster, an unpaired
one starts a new cluster. A cluster becomes one finding: the score-weighted mean of its boxes, with the sum of its
scores divided by the number of views (a view that found nothing there scored it 0). For two views that is the
flip's merge: a pair gets the mean score, a box one view alone found keeps half its score. This is weighted boxes
fusion (Solovyev et al. 2021) with one-to-one rather than greedy cluster assignment, so a view never puts two of its
boxes into one cluster; ensemble-boxes implements the greedy form and needs numba, and sharing the pairing keeps
the fused findings and the uncertainty agreeing on which boxes match.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medsight.errors import MedsightError
from medsight.tasks.detection.network import Detections
from medsight.tasks.detection.uncertainty import paired


def _representatives(clusters: list[tuple[list[np.ndarray], list[float]]]) -> np.ndarray:
    """Each cluster's score-weighted mean box (the plain mean where all its scores are 0)."""
    out = np.zeros((len(clusters), 4), np.float64)
    for i, (boxes, scores) in enumerate(clusters):
        w = np.asarray(scores, np.float64)
        b = np.asarray(boxes, np.float64)
        out[i] = (w @ b) / w.sum() if w.sum() > 0 else b.mean(axis=0)
    return out


def fuse(views: Sequence[Detections]) -> Detections:
    """One set of findings from ``views`` of one image (every view's boxes already in the image's pixels): see the
    module docstring. Highest score first."""
    if not views:
        raise MedsightError("no detections to fuse")
    n = len(views)
    boxes: list[np.ndarray] = []
    scores: list[float] = []
    labels: list[int] = []
    for c in np.unique(np.concatenate([v.labels for v in views]).astype(int)):
        clusters: list[tuple[list[np.ndarray], list[float]]] = []
        for view in views:
            mine = view.labels == c
            vb, vs = view.boxes[mine], view.scores[mine]
            reps = Detections(_representatives(clusters), np.ones(len(clusters)), np.full(len(clusters), c))
            own = Detections(vb, vs, np.full(len(vb), c))
            joined = np.zeros(len(vb), bool)
            for _, rows, cols, _, _ in paired(reps, own):
                for r, k in zip(rows, cols, strict=True):
                    clusters[int(r)][0].append(vb[k])
                    clusters[int(r)][1].append(float(vs[k]))
                    joined[k] = True
            clusters.extend(([vb[k]], [float(vs[k])]) for k in np.flatnonzero(~joined))
        boxes.extend(_representatives(clusters))
        scores.extend(float(sum(s)) / n for _, s in clusters)
        labels.extend([int(c)] * len(clusters))
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    return Detections(
        np.asarray(boxes, np.float64).reshape(-1, 4)[order],
        np.asarray(scores, np.float64)[order],
        np.asarray(labels, int)[order],
    )


def fused(per_view: Sequence[Sequence[Detections]]) -> list[Detections]:
    """:func:`fuse` for every image: ``per_view[v][i]`` is view ``v``'s detections of image ``i``."""
    if not per_view:
        raise MedsightError("no detections to fuse")
    n_images = {len(v) for v in per_view}
    if len(n_images) != 1:
        raise MedsightError(f"the views hold different numbers of images: {sorted(n_images)}")
    return [fuse([v[i] for v in per_view]) for i in range(n_images.pop())]
