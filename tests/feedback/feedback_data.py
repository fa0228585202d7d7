"""Small real data sets for the feedback tests: BreastMNIST images written as PNG files with a manifest."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def breast_manifest(shared_data: Path, out: Path, start: int, n: int, labels: dict[int, str] | None = None) -> Path:
    """``n`` BreastMNIST training images from index ``start`` as PNG files + ``manifest.csv`` (one patient per image,
    the first 70% train, the rest val)."""
    names = labels or {0: "malignant", 1: "normal, benign"}
    raw = np.load(shared_data / "medmnist" / "breastmnist.npz")
    images, targets = raw["train_images"][start : start + n], raw["train_labels"][start : start + n, 0]
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (img, y) in enumerate(zip(images, targets, strict=True)):
        name = f"img{start + i:04d}.png"
        Image.fromarray(img).save(out / name)
        rows.append({"path": name, "label": names[int(y)], "patient_id": f"p{start + i}", "split": ""})
    cut = int(0.7 * n)
    for i, row in enumerate(rows):
        row["split"] = "train" if i < cut else "val"
    with (out / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "patient_id", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return out / "manifest.csv"
