"""Small real data sets for the feedback tests: BreastMNIST images written as PNG files with a manifest."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def breast_manifest(
    shared_data: Path,
    out: Path,
    start: int,
    n: int,
    labels: dict[int, str] | None = None,
    train_share: float = 0.7,
    part: str = "train",
    exclude: tuple[int, ...] = (),
) -> Path:
    """``n`` BreastMNIST images of the release's ``part`` from index ``start`` as PNG files + ``manifest.csv`` (one
    patient per image, the first ``train_share`` train, the rest val)."""
    names = labels or {0: "malignant", 1: "normal, benign"}
    raw = np.load(shared_data / "medmnist" / "breastmnist.npz")
    keep = [i for i in range(start, start + n) if i not in exclude]
    images, targets = raw[f"{part}_images"][keep], raw[f"{part}_labels"][keep, 0]
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, img, y in zip(keep, images, targets, strict=True):
        name = f"{part}{i:04d}.png"
        Image.fromarray(img).save(out / name)
        rows.append({"path": name, "label": names[int(y)], "patient_id": f"{part}{i}", "split": ""})
    cut = int(train_share * len(rows))
    for i, row in enumerate(rows):
        row["split"] = "train" if i < cut else "val"
    with (out / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "patient_id", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return out / "manifest.csv"
