"""Label images that are not class maps: a JPEG mask, or a 0/255 mask smoothed at its edges. Read as classes, one
binary mask once became up to 256 classes, a network to match and a training that did not finish; now the file is
named with the problem before training starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from medsight.cli import main


def _pairs(root: Path, suffix: str, smooth: bool) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for k in range(6):
        Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(root / "images" / f"{k}_image.png")
        mask = np.zeros((48, 48), np.uint8)
        mask[10:30, 12:34] = 255
        img = Image.fromarray(mask)
        if smooth:
            img = img.filter(ImageFilter.GaussianBlur(1.5))
        img.save(root / "labels" / f"{k}_mask{suffix}")
    return root


@pytest.mark.parametrize(
    ("suffix", "smooth", "words"),
    [(".jpg", False, "a label image saved as JPEG"), (".png", True, "a 0/255 mask with")],
)
def test_a_mask_that_is_not_a_class_map_is_named_before_training(
    suffix: str, smooth: bool, words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _pairs(tmp_path / "set", suffix, smooth)
    out = tmp_path / "bundle"
    assert main(["train", "--task", "segmentation", str(data), "--out", str(out), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert words in err and f"_mask{suffix}" in err
    assert not out.exists()


def test_a_clean_binary_png_mask_is_two_classes(tmp_path: Path) -> None:
    from medsight.data.segmentation import open_dataset

    data = _pairs(tmp_path / "set", ".png", smooth=False)
    assert open_dataset(data).labels == {0: "background", 1: "foreground"}
