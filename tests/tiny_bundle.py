"""The seconds-long classification bundle several tests predict with: one epoch on 32 noise images, a bright square
in half of them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def train_tiny_bundle(root: Path, modality: str | None = None) -> Path:
    """Write the images and ``manifest.csv`` under ``root`` (with a ``manifest.json`` sidecar declaring ``modality``
    when given) and train; returns the bundle folder, ``root / "bundle"``."""
    import pandas as pd
    from PIL import Image

    from medsight.cli import main

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
    if modality is not None:
        (root / "manifest.json").write_text(json.dumps({"modality": modality}))
    out = root / "bundle"
    args = ["train", "--task", "classification", str(root / "manifest.csv"), "--out", str(out), "--epochs", "1"]
    assert main([*args, "--seed", "0", "--tta", "off", "--ensemble", "off"]) == 0
    return out
