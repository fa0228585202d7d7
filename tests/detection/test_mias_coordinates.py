"""mini-MIAS lesion centres land on the right pixel of the 512-pixel images (hand-picked cases)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsight.data.detection import load_mias, mias_box, mias_patient_id, parse_mias_info
from medsight.io.images import read_image


@pytest.fixture(scope="module")
def mias(shared_data: Path):
    return load_mias(shared_data / "mini_mias")


def _centre(box: np.ndarray) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


# ref: (column, row) of the centre pixel in the 512 image, worked out by hand from Info.txt:
# mdb028 F CIRC M 338 314 56 -> col 338/2 = 169, row (1024 - 314)/2 = 355
# mdb001 G CIRC B 535 425 197 -> col 267.5 -> pixel 267, row (1024 - 425)/2 = 299.5 -> pixel 299
# mdb010 F CIRC B 525 425 33 -> col 262.5 -> 262, row 299.5 -> 299
# mdb023 G CIRC M 538 681 29 -> col 269, row (1024 - 681)/2 = 171.5 -> 171
HAND = {"mdb028": (169, 355, 28.0), "mdb001": (267, 299, 98.5), "mdb010": (262, 299, 16.5), "mdb023": (269, 171, 14.5)}


@pytest.mark.parametrize("ref", sorted(HAND))
def test_centre_pixel_and_radius(mias, ref: str) -> None:
    item = next(it for it in mias.items if it.key == ref)
    assert item.image.name == f"{ref}.png" and "images_512" in str(item.image)
    cx, cy = _centre(item.boxes[0])
    col, row, radius = HAND[ref]
    assert (int(np.floor(cx)), int(np.floor(cy))) == (col, row)
    assert item.boxes[0][2] - cx == pytest.approx(radius)


def test_two_lesions_on_one_image(mias) -> None:
    item = next(it for it in mias.items if it.key == "mdb005")  # 477 133 30 and 500 168 26
    centres = sorted(_centre(b) for b in item.boxes)
    assert centres == [(238.5, 445.5), (250.0, 428.0)]


@pytest.mark.parametrize("ref", ["mdb028", "mdb001"])
def test_masses_are_bright_where_the_box_says(mias, ref: str) -> None:
    """The dense masses are brighter inside the mapped circle than at the position an un-flipped y would give."""
    item = next(it for it in mias.items if it.key == ref)
    img = read_image(item.image)[0]
    assert img.shape == (512, 512)
    cx, cy = _centre(item.boxes[0])
    r = (item.boxes[0][2] - item.boxes[0][0]) / 4
    yy, xx = np.mgrid[:512, :512] + 0.5
    inside = img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r**2].mean()
    wrong_y = 512 - cy  # what reading y from the top would give
    wrong = img[(xx - cx) ** 2 + (yy - wrong_y) ** 2 <= r**2].mean()
    assert inside > wrong + 30


def test_box_formula_and_scale() -> None:
    assert mias_box(512, 512, 10, 1024).tolist() == [502, 502, 522, 522]
    assert mias_box(0, 1024, 0, 512).tolist() == [0, 0, 0, 0]  # bottom-left origin: y = 1024 is the top row
    assert mias_box(1024, 0, 0, 512).tolist() == [512, 512, 512, 512]


def test_counts_and_exclusions(shared_data: Path, mias) -> None:
    rows = parse_mias_info(shared_data / "mini_mias" / "Info.txt")
    assert len(rows) == 330 and len({r.ref for r in rows}) == 322
    assert sorted(e["key"] for e in mias.excluded) == ["mdb059", "mdb216", "mdb233", "mdb245"]
    assert len(mias.items) == 318
    assert sum(len(it.boxes) for it in mias.items) == 119  # every row with coordinates becomes a box
    assert sum(1 for it in mias.items if len(it.boxes) == 0) == 207


def test_left_right_pairs_share_patient() -> None:
    assert mias_patient_id("mdb001") == mias_patient_id("mdb002") != mias_patient_id("mdb003")
