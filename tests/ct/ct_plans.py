"""Tiny segmentation plans for the CT tests: coarse spacing and a small patch, so that training and predicting a
whole chest CT take seconds (they prove the path, not a model)."""

from __future__ import annotations

from typing import Any

TINY_SPACING = (2.5, 2.5, 5.0)
TINY_PLAN: dict[str, Any] = {
    "preset": "fast",
    "target_spacing": list(TINY_SPACING),
    "patch_size": [32, 32, 16],
    "batch_size": 2,
    "iterations_per_epoch": 2,
    "optimizer": {"warmup_iterations": 1},
    "validate_every": 0,
}
