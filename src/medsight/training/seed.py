"""Seeding: one call makes a run repeatable (Python, NumPy, torch, MONAI)."""

from __future__ import annotations

import torch
from monai.utils import set_determinism


def seed_everything(seed: int) -> None:
    set_determinism(seed=seed)
    torch.manual_seed(seed)
