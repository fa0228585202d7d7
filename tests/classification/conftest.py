"""Shared data for the classification tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def square_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bright square (the finding, 1 in 4) on noise: imbalanced, so plain and class-balanced losses are both
    trained. 96 images of 32 x 32, one per patient; returns the manifest CSV."""
    import pandas as pd
    from PIL import Image

    root = tmp_path_factory.mktemp("square_set")
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(96):
        img = rng.normal(60, 10, (32, 32))
        finding = i % 4 == 0
        if finding:
            img[6:16, 8:18] += 120
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / "img" / f"{i}.png")
        rows.append({"path": f"img/{i}.png", "label": "square" if finding else "clear", "patient_id": f"P{i}"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"
