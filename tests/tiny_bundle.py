"""The seconds-long bundles several tests predict with: a classifier of one epoch on 32 noise images (a bright
square in half of them), and a 3D segmenter of two iterations on real Hippocampus cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_tiny_manifest(root: Path) -> Path:
    """32 noise images of 24 x 24 under ``root/img``, a bright square in half of them, and their ``manifest.csv``."""
    import pandas as pd
    from PIL import Image

    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(32):
        img = rng.normal(60, 10, (24, 24))
        if i % 2:
            img[4:12, 4:12] += 120
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / "img" / f"{i}.png")
        rows.append({"path": f"img/{i}.png", "label": "square" if i % 2 else "clear", "patient_id": f"P{i}"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def train_tiny_bundle(root: Path, modality: str | None = None) -> Path:
    """Write the images and ``manifest.csv`` under ``root`` (with a ``manifest.json`` sidecar declaring ``modality``
    when given) and train; returns the bundle folder, ``root / "bundle"``."""
    from medsight.cli import main

    manifest = write_tiny_manifest(root)
    if modality is not None:
        (root / "manifest.json").write_text(json.dumps({"modality": modality}))
    out = root / "bundle"
    args = ["train", "--task", "classification", str(manifest), "--out", str(out), "--epochs", "1"]
    assert main([*args, "--seed", "0", "--tta", "off", "--ensemble", "off"]) == 0
    return out


def train_tiny_hippocampus(shared_data: Path, root: Path, spacing: float) -> Path:
    """A 3D segmentation bundle of one epoch of 2 iterations on 4 real Hippocampus cases (seconds), resampled to
    ``spacing`` mm; returns ``root / "bundle"``."""
    from medsight.tasks import segmentation
    from medsight.tasks.segmentation import SegmentationOptions

    plan = root / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "target_spacing": [spacing] * 3,
                "patch_size": [32, 32, 32],
                "batch_size": 2,
                "iterations_per_epoch": 2,
                "optimizer": {"warmup_iterations": 1},
                "validate_every": 0,
                "test_time_flips": False,
                "network": {"filters": [8, 16, 32, 64]},
            }
        )
    )
    options = SegmentationOptions(epochs=1, lr=1e-2, plan=plan, max_cases=4)
    segmentation.TASK.train(str(shared_data / "msd_hippocampus"), root / "bundle", options)
    return root / "bundle"
