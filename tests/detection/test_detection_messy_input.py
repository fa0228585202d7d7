"""Messy COCO input, as real exporters write it: what detection accepts (string image ids equal to integer ones as
numbers, a box partly outside its image, categories listed in another order at evaluation) and what it refuses
before any training with one line naming annotations.json and the annotation (a malformed or out-of-image box, an
annotation for an image not listed, an image whose annotated shape is not the file's, a detector scored on
categories it was not trained on). Tiny synthetic images (32 px), one epoch."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from medsight.cli import main
from medsight.data.detection import load_coco
from medsight.errors import MedsightError

SIDE = 32
N_IMAGES = 12


def _coco(folder: Path, names: tuple[str, ...] = ("blob",), n: int = N_IMAGES) -> dict[str, Any]:
    """``n`` 32-px images (patients P000...), a bright 8-px square on every other one, one box each."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(n):
        img = (rng.random((SIDE, SIDE)) * 60).astype(np.uint8)
        images.append({"id": i, "file_name": f"im{i:03d}.png", "width": SIDE, "height": SIDE,
                       "metadata": {"patientid": f"P{i:03d}"}})  # fmt: skip
        if i % 2 == 0:
            x, y = (int(v) for v in rng.integers(2, SIDE - 10, 2))
            img[y : y + 8, x : x + 8] += 150
            cat = 1 + (i // 2) % len(names)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": [x, y, 8, 8]})
        Image.fromarray(img).save(folder / "images" / f"im{i:03d}.png")
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(names)]
    coco = {"images": images, "annotations": anns, "categories": categories}
    _write(folder, coco)
    return coco


def _write(folder: Path, coco: dict[str, Any]) -> Path:
    (folder / "annotations.json").write_text(json.dumps(coco))
    return folder


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0] and "P000" not in err[0]  # one line, never a patient identifier
    return err[0]


# ------------------------------------------------------------------- 02: image ids as strings, unlisted images


def test_string_image_ids_match_integer_image_ids(tmp_path: Path) -> None:
    coco = _coco(tmp_path)
    for a in coco["annotations"]:
        a["image_id"] = str(a["image_id"])  # "3" for images[].id 3, as many exporters write
    data = load_coco(_write(tmp_path, coco))
    assert not data.excluded
    assert sum(len(it.boxes) for it in data.items) == len(coco["annotations"]) == N_IMAGES // 2
    by_key = {it.key: it for it in data.items}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        assert np.allclose(by_key[a["image_id"]].boxes, [[x, y, x + w, y + h]])


def test_integer_ids_match_string_image_ids_and_float_ids(tmp_path: Path) -> None:
    coco = _coco(tmp_path)
    for img in coco["images"]:
        img["id"] = str(img["id"])  # images[].id "3", annotations' image_id 3.0: equal as numbers
    for a in coco["annotations"]:
        a["image_id"] = float(a["image_id"])
    data = load_coco(_write(tmp_path, coco))
    assert sum(len(it.boxes) for it in data.items) == N_IMAGES // 2


def test_an_annotation_for_an_unlisted_image_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    coco = _coco(tmp_path)
    coco["annotations"].append({"id": 999, "image_id": 4242, "category_id": 1, "bbox": [1, 1, 5, 5]})
    _write(tmp_path, coco)
    with pytest.raises(MedsightError, match=r"annotations\[6\] \(id 999\).*image_id 4242"):
        load_coco(tmp_path)
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "b"), "--epochs", "1", "--image-size", "32"]) == 2
    line = _one_line_error(capsys)
    assert "annotations.json" in line and "4242" in line
    assert not (tmp_path / "b").exists()


def test_two_images_with_one_id_are_refused(tmp_path: Path) -> None:
    coco = _coco(tmp_path)
    coco["images"][1]["id"] = "0"  # equal to images[0].id as a number: which image would its boxes belong to?
    with pytest.raises(MedsightError, match=r"images\[1\].*id 0.*images\[0\]"):
        load_coco(_write(tmp_path, coco))


# ------------------------------------------------------------------------- 09: malformed annotations, one line


def _bbox(k: int, v: Any) -> Callable[[dict[str, Any]], None]:
    def edit(c: dict[str, Any]) -> None:
        c["annotations"][0]["bbox"][k] = v

    return edit


MALFORMED: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "negative_width": (_bbox(2, -8), r"annotations\[0\] \(id 1\).*width"),
    "zero_height": (_bbox(3, 0), r"annotations\[0\] \(id 1\).*height"),
    "nan_x": (_bbox(0, float("nan")), r"annotations\[0\] \(id 1\).*bbox"),
    "text_height": (_bbox(3, "abc"), r"annotations\[0\] \(id 1\).*bbox"),
    "three_numbers": (lambda c: c["annotations"][0]["bbox"].pop(), r"annotations\[0\] \(id 1\).*bbox"),
    "no_bbox": (lambda c: c["annotations"][0].pop("bbox"), r"annotations\[0\] \(id 1\).*no bbox"),
    "null_bbox": (lambda c: c["annotations"][0].update(bbox=None), r"annotations\[0\] \(id 1\).*bbox"),
    "no_image_id": (lambda c: c["annotations"][0].pop("image_id"), r"annotations\[0\] \(id 1\).*image_id"),
    "unknown_category": (lambda c: c["annotations"][0].update(category_id=7), r"annotations\[0\].*category_id 7"),
    "image_width_0": (lambda c: c["images"][0].update(width=0), r"images\[0\] \(id 0\).*width"),
    "image_no_height": (lambda c: c["images"][0].pop("height"), r"images\[0\] \(id 0\).*height"),
    "image_no_file_name": (lambda c: c["images"][0].pop("file_name"), r"images\[0\] \(id 0\).*file_name"),
    "category_no_name": (lambda c: c["categories"][0].pop("name"), r"categories\[0\].*name"),
    "outside_image": (
        lambda c: c["annotations"][0].update(bbox=[200, 200, 8, 8]),
        r"annotations\[0\] \(id 1\).*wholly outside.*32x32",
    ),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_annotation_is_refused_in_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    edit, expected = MALFORMED[name]
    coco = _coco(tmp_path)
    edit(coco)
    _write(tmp_path, coco)
    with pytest.raises(MedsightError, match=expected):
        load_coco(tmp_path)
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "b"), "--epochs", "1", "--image-size", "32"]) == 2
    line = _one_line_error(capsys)
    assert "annotations.json" in line
    assert not (tmp_path / "b").exists()


def test_all_problems_are_counted_in_the_one_line(tmp_path: Path) -> None:
    coco = _coco(tmp_path)
    for a in coco["annotations"][:3]:
        a["bbox"][2] = -1
    with pytest.raises(MedsightError, match=r"annotations\[0\].*\(and 2 more problems\)$"):
        load_coco(_write(tmp_path, coco))


def test_a_box_partly_outside_its_image_is_clipped(tmp_path: Path) -> None:
    coco = _coco(tmp_path)
    coco["annotations"][0]["bbox"] = [-4, 28, 10, 10]  # 4 px past the left edge, 6 px past the bottom
    data = load_coco(_write(tmp_path, coco))
    assert np.allclose(data.items[0].boxes, [[0, 28, 6, 32]])


# ----------------------------------------------------------------------- 22: annotated shape is not the file's


def test_an_image_whose_annotated_shape_is_transposed_is_refused(tmp_path: Path) -> None:
    coco = _coco(tmp_path)
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(tmp_path / "images" / "im000.png")  # 32 wide, 24 high
    coco["images"][0].update(width=24, height=32)  # annotated portrait: transposed / EXIF-rotated export
    with pytest.raises(MedsightError, match=r"images\[0\] \(id 0\).*24x32.*32x24"):
        load_coco(_write(tmp_path, coco))


def test_a_whole_image_resize_is_still_accepted(tmp_path: Path) -> None:
    coco = _coco(tmp_path)
    coco["images"][0].update(width=2 * SIDE, height=2 * SIDE)  # annotated at 64 px, the file read is 32 px
    Image.fromarray(np.zeros((21, 32), np.uint8)).save(tmp_path / "images" / "im002.png")
    coco["images"][2].update(width=97, height=64)  # 97x64 resized to 32x21 (rounded): same aspect to a pixel
    data = load_coco(_write(tmp_path, coco))
    x, y, w, h = coco["annotations"][0]["bbox"]
    assert np.allclose(data.items[0].boxes, [[x / 2, y / 2, (x + w) / 2, (y + h) / 2]])
    x, y, w, h = coco["annotations"][1]["bbox"]
    sx, sy = 32 / 97, 21 / 64
    assert np.allclose(data.items[2].boxes, [[x * sx, y * sy, (x + w) * sx, (y + h) * sy]])


# ------------------------------------------------------------------------- 08: evaluate compares category names


@pytest.fixture(scope="module")
def two_class_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    data = tmp_path_factory.mktemp("coco2")
    _coco(data, names=("blob", "cyst"), n=16)
    out = tmp_path_factory.mktemp("bundle2") / "bundle"
    assert main(["train", str(data), "--out", str(out), "--epochs", "1", "--image-size", "32"]) == 0
    return data, out


def test_evaluate_refuses_data_whose_categories_are_not_the_bundles(
    two_class_bundle: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, bundle = two_class_bundle
    coco = json.loads((data / "annotations.json").read_text())
    coco["categories"] = [{"id": 1, "name": "tumour"}, {"id": 2, "name": "cyst"}]  # "blob" became "tumour"
    other = tmp_path / "other"
    other.mkdir()
    (other / "images").symlink_to(data / "images")
    _write(other, coco)
    capsys.readouterr()
    assert main(["evaluate", str(bundle), str(other), "--out", str(tmp_path / "ev"), "--bootstrap", "10"]) == 2
    line = _one_line_error(capsys)
    assert "tumour" in line and "blob" in line and "cyst" in line
    assert not (tmp_path / "ev").exists()


def test_evaluate_matches_categories_by_name_not_position(two_class_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    from medsight.tasks.detection.evaluate import align_labels

    data, bundle = two_class_bundle
    coco = json.loads((data / "annotations.json").read_text())
    coco["categories"] = [{"id": 1, "name": "blob"}, {"id": 2, "name": "cyst"}]
    swapped = {**coco, "categories": [{"id": 1, "name": "cyst"}, {"id": 2, "name": "blob"}]}
    for a in swapped["annotations"]:
        a["category_id"] = 3 - a["category_id"]  # the same boxes, each still of its class, ids swapped
    other = tmp_path / "swapped"
    other.mkdir()
    (other / "images").symlink_to(data / "images")
    _write(other, swapped)
    same = align_labels(load_coco(data), ["blob", "cyst"], str(data))
    moved = align_labels(load_coco(other), ["blob", "cyst"], str(other))
    assert moved.class_names == ["blob", "cyst"]
    assert [it.labels.tolist() for it in moved.items] == [it.labels.tolist() for it in same.items]
    assert any(len(it.labels) and it.labels[0] == 1 for it in moved.items)  # both classes occur
    ev = tmp_path / "ev"
    assert main(["evaluate", str(bundle), str(other), "--out", str(ev), "--bootstrap", "10"]) == 0
    assert {"ap50_blob", "ap50_cyst"} <= set(json.loads((ev / "metrics.json").read_text())["metrics"])


# ------------------------------------------------------------------- 25: a declared train/val/test split


def _declare(coco: dict[str, Any], splits: list[str | None]) -> dict[str, Any]:
    for image, split in zip(coco["images"], splits, strict=True):
        if split is not None:
            image["metadata"]["split"] = split
    return coco


def test_a_declared_test_split_is_honoured(tmp_path: Path) -> None:
    """A COCO file whose images declare train, val and test: the declared split is the split. It used to be honoured
    only without "test"; with it, a random split was drawn and declared test images were trained on, unsaid."""
    declared = ["train"] * 6 + ["val"] * 2 + ["test"] * 2 + ["Validation", "TEST"]
    data = load_coco(_write(tmp_path / "c", _declare(_coco(tmp_path / "c"), list(declared))))
    parts = data.split()
    expected = {"train": list(range(6)), "val": [6, 7, 10], "test": [8, 9, 11]}
    assert {k: sorted(int(i) for i in v) for k, v in parts.items()} == expected


@pytest.mark.parametrize(
    ("splits", "message"),
    [
        (["train"] * 6 + ["val"] * 2 + [None] * 4, "4 of 12 images declare no split"),
        (["train"] * 6 + ["val"] * 2 + ["holdout"] * 4, "'holdout'"),
        (["val"] * 10 + ["test"] * 2, "no image declares the train split"),
    ],
    ids=["some-undeclared", "unknown-name", "no-train"],
)
def test_a_declared_split_that_cannot_be_used_is_refused(
    tmp_path: Path, splits: list[str | None], message: str
) -> None:
    data = load_coco(_write(tmp_path / "c", _declare(_coco(tmp_path / "c"), splits)))
    with pytest.raises(MedsightError, match=message):
        data.split()


# ------------------------------------------------------------------- COCO images missing on disk, or listed twice


def test_missing_image_files_are_said_and_one_file_listed_twice_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    coco = _coco(tmp_path / "c")
    for i in (1, 3, 5):
        (tmp_path / "c" / "images" / f"im{i:03d}.png").unlink()
    with caplog.at_level("WARNING"):
        data = load_coco(_write(tmp_path / "c", coco))
    assert len(data.items) == N_IMAGES - 3 and len(data.excluded) == 3
    assert f"3 of {N_IMAGES} COCO images left out: image file not found" in caplog.text
    coco["images"][2]["file_name"] = coco["images"][0]["file_name"]
    with pytest.raises(MedsightError, match="images with ids 0 and 2 are one file"):
        load_coco(_write(tmp_path / "c", coco))
