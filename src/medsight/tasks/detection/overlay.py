"""Boxes drawn over an image (ground truth green, detections red), for the card and for predict's overlays."""

from __future__ import annotations

import numpy as np


def draw_boxes(
    image: np.ndarray, truth: np.ndarray, boxes: np.ndarray, scale: float = 1.0, width: int = 2
) -> np.ndarray:
    """RGB uint8 of a (C, H, W) image with ground truth in green and detections in red."""
    grey = np.asarray(image, np.float32).mean(axis=0)
    g = (grey - grey.min()) / (np.ptp(grey) or 1.0)
    rgb = np.stack([g] * 3, -1)
    h, w = g.shape

    def rect(b: np.ndarray, colour: tuple[float, float, float]) -> None:
        x1, y1, x2, y2 = (np.asarray(b) * scale).round().astype(int)
        x1, x2 = np.clip([x1, x2 - 1], 0, w - 1)
        y1, y2 = np.clip([y1, y2 - 1], 0, h - 1)
        rgb[y1 : y1 + width, x1 : x2 + 1] = colour
        rgb[max(y2 - width + 1, 0) : y2 + 1, x1 : x2 + 1] = colour
        rgb[y1 : y2 + 1, x1 : x1 + width] = colour
        rgb[y1 : y2 + 1, max(x2 - width + 1, 0) : x2 + 1] = colour

    for b in np.asarray(truth).reshape(-1, 4):
        rect(b, (0.0, 1.0, 0.0))
    for b in np.asarray(boxes).reshape(-1, 4):
        rect(b, (1.0, 0.1, 0.1))
    return np.asarray(np.clip(rgb * 255, 0, 255), np.uint8)
