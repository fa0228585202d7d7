"""A validation split of one class only: nothing can be chosen on it (best epoch, temperature, operating point), so
training stops with one line before it starts; it once wrote a bundle whose bundle.json held bare NaN."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from medsight.cli import main


def test_training_refuses_a_validation_split_of_one_class(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = pd.read_csv(tiny_bundle.parent / "manifest.csv")
    rows["path"] = [str(tiny_bundle.parent / p) for p in rows["path"]]
    rows["split"] = ["train"] * 24 + ["test"] * 4 + ["val"] * 4
    rows.loc[28:, "label"] = "clear"
    manifest = tmp_path / "manifest.csv"
    rows.to_csv(manifest, index=False)
    out = tmp_path / "bundle"
    assert main(["train", "--task", "classification", str(manifest), "--out", str(out), "--epochs", "1"]) == 2
    assert "the validation split holds one class only ('clear', 4 case(s))" in capsys.readouterr().err
    assert not out.exists()
