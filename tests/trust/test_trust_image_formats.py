"""Every 2D format Pillow reads is accepted wherever images are: ``read_image``, the input reader of
``medsight predict`` (segmentation) and the image + mask folder loader (issue 9, §5: PPM/PGM, BMP and WebP were
refused because the readers listed only PNG/TIFF/JPEG/GIF)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsight.data.segmentation import load_case, open_dataset
from medsight.io.images import RASTER_SUFFIXES, read_image
from medsight.tasks.segmentation.predict import read_input

#: (suffix, Pillow mode written, lossless): the formats the issue names, and a few more Pillow reads.
FORMATS = [
    (".png", "RGB", True),
    (".tif", "RGB", True),
    (".jpg", "RGB", False),
    (".gif", "L", True),
    (".bmp", "RGB", True),
    (".ppm", "RGB", True),
    (".pgm", "L", True),
    (".pnm", "RGB", True),
    (".webp", "RGB", False),
    (".tga", "RGB", True),
]


def _pattern(mode: str) -> np.ndarray:
    """A smooth 24x32 pattern (smooth so that lossy formats stay close to it)."""
    y, x = np.mgrid[0:24, 0:32]
    grey = (4 * x + 3 * y).astype(np.uint8)
    if mode == "L":
        return grey
    return np.stack([grey, (255 - grey), np.full_like(grey, 90)], axis=-1)


def _write(path: Path, mode: str) -> np.ndarray:
    arr = _pattern(mode)
    Image.fromarray(arr, mode=mode).save(path, **({"lossless": True} if path.suffix == ".webp" else {}))
    return arr


@pytest.mark.parametrize(("suffix", "mode", "lossless"), FORMATS)
def test_read_image_and_predict_input_accept_the_format(tmp_path: Path, suffix: str, mode: str, lossless: bool) -> None:
    path = tmp_path / f"image{suffix}"
    arr = _write(path, mode)
    expected = arr[None].astype(np.float32) if arr.ndim == 2 else np.moveaxis(arr, -1, 0).astype(np.float32)
    for image in (read_image(path), read_input(path).image):
        assert image.shape == expected.shape and image.dtype == np.float32
        tolerance = 0 if lossless or suffix == ".webp" else 12  # WebP is written lossless above; JPEG is not
        assert np.abs(image - expected).max() <= tolerance
    assert read_input(path).kind == "raster" and suffix in RASTER_SUFFIXES


def test_image_and_mask_folders_in_every_format_load(tmp_path: Path) -> None:
    """An images/ + masks/ folder whose files use the newly accepted formats is recognised and read."""
    root = tmp_path / "pairs"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    written = {}
    for k, suffix in enumerate([".ppm", ".pgm", ".bmp", ".webp", ".png"]):
        mode = "L" if suffix == ".pgm" else "RGB"
        written[f"{k:02d}"] = _write(root / "images" / f"{k:02d}_img{suffix}", mode)
        mask = np.zeros((24, 32), np.uint8)
        mask[5:15, 8:20] = 255
        Image.fromarray(mask).save(root / "masks" / f"{k:02d}_mask{'.pgm' if k % 2 else '.bmp'}")
    ds = open_dataset(root)
    assert sorted(c.id for c in ds.train) == sorted(written)
    for case in ds.train:
        loaded = load_case(ds, case)
        assert loaded.label is not None and int(loaded.label.sum()) == 10 * 12
        assert loaded.image.shape[1:] == (24, 32)
