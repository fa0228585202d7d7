"""Detection reads every 2D format Pillow reads (issue 9 §5): a mini-MIAS folder whose images are BMP or WebP and a
COCO folder mixing .bmp and .webp load, their pixels arrive intact and their boxes land on the pixels read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsight.data.detection import load_coco, load_detection, load_mias
from medsight.errors import MedsightError
from medsight.tasks.detection.data import read_items

INFO = """MIAS database (tiny copy for a test)
mdb001 G CIRC B 535 425 197
mdb002 G NORM
mdb003 D CIRC B 338 314 56
mdb004 D NORM
"""


def _pixels(seed: int, side: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 200, size=(side, side)).astype(np.uint8)


def _save(arr: np.ndarray, path: Path) -> None:
    """Lossless in every format used here (WebP too), so the test can compare pixels exactly."""
    if path.suffix == ".webp":
        Image.fromarray(arr).save(path, lossless=True)
    else:
        Image.fromarray(arr).save(path)


@pytest.mark.parametrize("suffix", [".bmp", ".webp"])
def test_mias_folder_of_bmp_or_webp_images(tmp_path: Path, suffix: str) -> None:
    (tmp_path / "Info.txt").write_text(INFO)
    (tmp_path / "images_512").mkdir()
    written = {}
    for i, ref in enumerate(("mdb001", "mdb002", "mdb003", "mdb004")):
        written[ref] = _pixels(i, 64)
        _save(written[ref], tmp_path / "images_512" / f"{ref}{suffix}")
    data = load_detection(tmp_path)
    assert [it.key for it in data.items] == ["mdb001", "mdb002", "mdb003", "mdb004"]
    assert all(it.image.suffix == suffix for it in data.items)
    first = data.items[0]
    # 64-pixel image: scale 64/1024; centre col 535/16, row (1024 - 425)/16, radius 197/16
    cx, cy, r = 535 / 16, (1024 - 425) / 16, 197 / 16
    assert np.allclose(first.boxes[0], [cx - r, cy - r, cx + r, cy + r])
    prepared = read_items(data.items, 64)
    assert prepared.images.shape == (4, 1, 64, 64)
    raw = written["mdb001"].astype(np.float32)
    expected = (raw - raw.min()) / (raw.max() - raw.min())  # detection's own min-max to [0, 1], no resize at 64
    assert np.allclose(prepared.images[0, 0], expected, atol=1e-6)


def test_coco_folder_of_bmp_and_webp_images(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    names = ["a.bmp", "b.webp", "c.bmp", "d.webp"]
    sides = [(40, 30), (48, 32), (40, 30), (48, 32)]  # (width, height)
    images, annotations = [], []
    for i, (name, (w, h)) in enumerate(zip(names, sides, strict=True)):
        _save(_pixels(10 + i, 48)[:h, :w], tmp_path / "images" / name)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h, "metadata": {"patientid": f"P{i}"}})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 7, "bbox": [2, 3, 10, 12]})
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 7, "name": "lesion"}]}
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    data = load_coco(tmp_path)
    assert not data.excluded and [it.image.name for it in data.items] == names
    assert all(np.allclose(it.boxes, [[2, 3, 12, 15]]) for it in data.items)
    prepared = read_items(data.items, 48)
    assert prepared.images.shape == (4, 1, 48, 48)
    assert [s for s in prepared.scales] == [(48 / 40, 48 / 40), (1.0, 1.0), (48 / 40, 48 / 40), (1.0, 1.0)]


def test_a_coco_image_pillow_cannot_read_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "broken.bmp").write_bytes(b"not a bitmap")
    coco = {
        "images": [{"id": 1, "file_name": "broken.bmp", "width": 8, "height": 8}],
        "annotations": [],
        "categories": [{"id": 1, "name": "lesion"}],
    }
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(MedsightError, match=r"broken\.bmp"):
        load_coco(tmp_path)


def test_a_mias_image_in_no_readable_format_is_named(tmp_path: Path) -> None:
    (tmp_path / "Info.txt").write_text(INFO)
    (tmp_path / "mdb001.txt").write_text("not an image")
    with pytest.raises(MedsightError, match="mdb001"):
        load_mias(tmp_path)
