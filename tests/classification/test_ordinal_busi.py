"""BUSI as an ordered scale (benchmarks/ordinal.py): the manifest it writes declares normal < benign < malignant,
points into the shared data (nothing copied) and keeps the published fold 0 split. Needs the shared data: a
failure under CI, a loud skip elsewhere (conftest.shared_data)."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medsight.data import busi, manifest

ROOT = Path(__file__).resolve().parents[2]


def test_busi_ordinal_manifest_keeps_the_published_fold(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    bench = importlib.import_module("ordinal")
    csv = bench.write_manifest(shared_data / "busi", tmp_path / "data", fold=0)
    table = pd.read_csv(csv)
    assert len(table) == 780 and all(Path(p).is_absolute() and Path(p).is_file() for p in table["path"])
    split = busi.folds(0)
    test_paths = {str(im.image.resolve()) for im in busi.list_images(shared_data / "busi") if im.id in set(split.test)}
    assert set(table.loc[table["split"] == "test", "path"]) == test_paths
    monkeypatch.setattr(manifest, "MAX_2D", 32)
    data = manifest.load_manifest(csv)
    assert data.ordinal and data.label_names == ["normal", "benign", "malignant"] and data.spatial_size == [32, 32]
    assert len(data.split("test")) == len(split.test) and len(data.split("val")) == len(split.folds[0])
    counts = np.bincount(data.split("train").labels, minlength=3)
    assert counts[1] > counts[2] > counts[0] > 0  # BUSI: benign 437 > malignant 210 > normal 133
