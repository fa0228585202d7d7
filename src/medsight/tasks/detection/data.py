"""Detection data for the model: images read, made grey, resized into a square input; boxes scaled alike.

The sources themselves (mini-MIAS, COCO) and their coordinate conventions live in :mod:`medsight.data.detection`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from medsight.data.detection import DetectionData, DetectionItem, is_coco, is_mias, load_detection
from medsight.errors import MedsightError
from medsight.io.images import read_image

__all__ = ["DetectionData", "DetectionItem", "Prepared", "load_detection", "prepare", "read_items", "recognises"]


def recognises(spec: str) -> bool:
    """A mini-MIAS folder or Info.txt, or a COCO annotations.json (or its folder); never an outcome spec (#)."""
    if "#" in str(spec):
        return False
    try:
        return is_mias(spec) or is_coco(spec)
    except OSError:
        return False


def prepare(raw: np.ndarray, size: int) -> tuple[np.ndarray, tuple[float, float]]:
    """(C, H, W) image → (1, size, size) float32 in [0, 1]: grey, resized keeping the aspect ratio so the longest
    side is ``size``, padded with zeros at the bottom/right. Returns the per-axis scale (sx, sy)."""
    if raw.ndim != 3:
        raise MedsightError(f"detection takes 2D images; got an array of shape {raw.shape}")
    grey = torch.as_tensor(np.asarray(raw, np.float32).mean(axis=0))
    lo, hi = float(grey.min()), float(grey.max())
    grey = (grey - lo) / (hi - lo if hi > lo else 1.0)
    h, w = grey.shape
    f = size / max(h, w)
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    small = torch.nn.functional.interpolate(grey[None, None], size=(nh, nw), mode="area" if f < 1 else "bilinear")
    out = torch.zeros(1, size, size)
    out[0, :nh, :nw] = small[0, 0]
    return out.numpy(), (nw / w, nh / h)


def scale_boxes(boxes: np.ndarray, sx: float, sy: float) -> np.ndarray:
    return np.asarray(boxes, np.float64).reshape(-1, 4) * np.array([sx, sy, sx, sy])


@dataclass
class Prepared:
    """Items of one split at the model's input size: images (N, 1, S, S), per-image scales and scaled boxes."""

    items: list[DetectionItem]
    images: np.ndarray
    scales: list[tuple[float, float]]

    @property
    def boxes(self) -> list[np.ndarray]:
        return [scale_boxes(it.boxes, *s) for it, s in zip(self.items, self.scales, strict=True)]

    def box_sizes(self) -> np.ndarray:
        """(rows, cols) of every box at the input size: what the anchors are planned from."""
        sized = [np.stack([b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]], 1) for b in self.boxes if len(b)]
        return np.concatenate(sized) if sized else np.zeros((0, 2))


def read_items(items: list[DetectionItem], size: int) -> Prepared:
    images, scales = [], []
    for it in tqdm(items, desc="read", unit="image", disable=len(items) < 20):
        arr, s = prepare(read_image(it.image), size)
        images.append(arr)
        scales.append(s)
    stacked = np.stack(images) if images else np.zeros((0, 1, size, size), np.float32)
    return Prepared(items, stacked, scales)


def split_digest(items: Sequence[DetectionItem], idx: np.ndarray) -> str:
    """A digest of a split's image keys, so evaluation can tell whether it sees the split training recorded."""
    return hashlib.sha256(",".join(sorted(items[i].key for i in idx)).encode()).hexdigest()[:16]


def augment(x: np.ndarray, boxes: np.ndarray, flip: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random contrast/brightness, and (when ``flip``) a random horizontal flip of image and boxes."""
    x = x * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05)
    if flip and rng.random() < 0.5:
        w = x.shape[-1]
        x = x[..., ::-1]
        boxes = boxes.copy()
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    return np.ascontiguousarray(x, np.float32), boxes


@dataclass
class EpochSampler:
    """Each epoch: every training image with boxes plus ``negatives`` images without, freshly drawn, shuffled and
    cut into batches of augmented (image, boxes, labels). One NumPy generator drives it all, so a seed repeats it."""

    train: Prepared
    negatives: int
    batch_size: int
    flip: bool
    rng: np.random.Generator

    def __post_init__(self) -> None:
        self.boxes = self.train.boxes
        self.positive = np.flatnonzero([len(b) > 0 for b in self.boxes])
        self.negative = np.flatnonzero([len(b) == 0 for b in self.boxes])

    def __call__(self, epoch: int) -> Iterator[list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
        chosen = np.concatenate([self.positive, self.rng.permutation(self.negative)[: self.negatives]]).astype(int)
        order = self.rng.permutation(chosen)
        for start in range(0, len(order), self.batch_size):
            batch = []
            for i in order[start : start + self.batch_size]:
                x, b = augment(self.train.images[i], self.boxes[i], self.flip, self.rng)
                batch.append((x, b, self.train.items[i].labels))
            yield batch
