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


def _multilabel_manifest(root: Path, val_kinds: list[str]) -> Path:
    """Multi-label rows ("square", "bar", both, or "|" for none), 24 train / 8 val / 8 test, one image per patient;
    the validation rows take ``val_kinds`` in turn."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(3)
    (root / "img").mkdir(parents=True)
    kinds = ["square", "bar", "square|bar", "|"]
    rows = []
    for i in range(40):
        split = "train" if i < 24 else ("val" if i < 32 else "test")
        kind = val_kinds[i % len(val_kinds)] if split == "val" else kinds[i % 4]
        img = rng.normal(60, 20, (16, 16))
        img[2:7, 2:7] += 50 * ("square" in kind)
        img[11:14, :] += 50 * ("bar" in kind)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / "img" / f"{i}.png")
        rows.append({"path": f"img/{i}.png", "label": kind, "patient_id": f"P{i}", "split": split})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


@pytest.mark.parametrize(
    ("val_kinds", "message"),
    [
        (["square", "|"], "label 'bar' is absent from every validation case"),
        (["square|bar", "bar"], "label 'bar' is present in every validation case"),
    ],
    ids=["never-present", "always-present"],
)
def test_training_refuses_a_multilabel_validation_split_with_a_constant_label(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], val_kinds: list[str], message: str
) -> None:
    """A multi-label label that validation never shows present (or never absent) has no AUC, no threshold and no
    conformal calibration there: training used to go on, select epochs on the other labels' AUC and store a
    threshold fitted on one class. It now stops before training, naming the label."""
    manifest = _multilabel_manifest(tmp_path / "set", val_kinds)
    out = tmp_path / "bundle"
    assert main(["train", "--task", "classification", str(manifest), "--out", str(out), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert message in err and "give validation cases" in err
    assert not out.exists()
