"""BUSI read in place: recognised by segmentation (lesion masks merged by OR, colour images read as grey) and by
classification (benign/malignant/normal), on the published grouped 5-fold split; a broken folder is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsight import tasks
from medsight.data import busi
from medsight.data.sources import load_classification
from medsight.errors import MedsightError
from medsight.tasks.segmentation.data import folds_for, load_case, open_dataset


def test_busi_is_segmentation_data_with_every_mask_of_an_image_merged(busi_root: Path) -> None:
    assert tasks.detect(str(busi_root)) == "segmentation"
    ds = open_dataset(busi_root)
    assert ds.layout == "busi" and len(ds.train) == 780 and ds.labels == {0: "background", 1: "lesion"}
    three = load_case(ds, ds.case("benign (195)"))  # the one image with three masks
    masks = [np.asarray(Image.open(p)) > 0 for p in sorted((busi_root / "benign").glob("benign (195)_mask*.png"))]
    assert len(masks) == 3
    assert three.label is not None and np.array_equal(three.label > 0, masks[0] | masks[1] | masks[2])
    assert three.label.sum() > max(m.sum() for m in masks)  # more than any one lesion
    normal = load_case(ds, ds.case("normal (1)"))
    assert normal.label is not None and normal.label.max() == 0


def test_busi_colour_images_are_read_as_one_grey_channel(busi_root: Path) -> None:
    ds = open_dataset(busi_root)
    with Image.open(busi_root / "benign" / "benign (13).png") as img:
        assert img.mode == "RGB"
        luma = np.asarray(img.convert("L"), np.float32)
    case = load_case(ds, ds.case("benign (13)"))
    assert case.image.shape == (1, *luma.shape)
    assert np.abs(case.image[0] - luma).max() <= 1.0  # Pillow's "L" rounds the same BT.601 luma


def test_busi_published_folds_are_the_deterministic_grouped_stratified_split(busi_root: Path) -> None:
    doc = busi.published()
    assert busi.make_folds(busi_root)["folds"] == doc["folds"]  # regenerated from the data: the same file
    flat = [i for f in doc["folds"] for i in f]
    assert len(flat) == len(set(flat)) == 780
    fold_of = {i: k for k, f in enumerate(doc["folds"]) for i in f}
    assert fold_of["benign (433)"] == fold_of["malignant (145)"]  # the byte-identical pair stays together
    assert doc["groups"] == {"benign (433)": ["benign (433)", "malignant (145)"]}
    for cls, total in (("benign", 437), ("malignant", 210), ("normal", 133)):
        counts = [sum(i.startswith(cls) for i in f) for f in doc["folds"]]
        assert max(counts) - min(counts) <= 2 and sum(counts) == total


def test_busi_test_fold_is_held_out_and_a_fold_view_reads_another_fold_in_place(
    busi_root: Path, tmp_path: Path
) -> None:
    default = folds_for(open_dataset(busi_root))
    assert default.test == busi.published()["folds"][0]
    train, val = default.train_val(0)
    assert not set(train) & set(default.test) and not set(val) & set(default.test) and not set(train) & set(val)
    assert sorted(val) == sorted(busi.published()["folds"][1]) and len(train) + len(val) + len(default.test) == 780
    view = busi.fold_view(busi_root, 3, tmp_path / "fold3")
    assert all((view / c).is_symlink() for c in busi.CLASSES)  # links, nothing copied
    other = folds_for(open_dataset(view))
    assert sorted(other.test) == sorted(busi.published()["folds"][3])
    assert sorted(other.folds[0]) == sorted(busi.published()["folds"][4])
    small = folds_for(open_dataset(busi.fold_view(busi_root, 1, tmp_path / "small", limit=4)))
    assert len(small.test) == 4 and all(len(f) == 4 for f in small.folds)


def test_busi_classification_uses_the_same_folds_and_checks_a_models_labels(busi_root: Path, tmp_path: Path) -> None:
    view = busi.fold_view(busi_root, 2, tmp_path / "view", limit=6)
    data = load_classification(str(view))
    assert data.label_names == ["benign", "malignant", "normal"] and data.task_type == "multiclass"
    split = json.loads((view / busi.SPLITS_FILE).read_text())
    assert data.splits["test"].sources is not None
    assert sorted(Path(s).stem for s in data.splits["test"].sources) == sorted(split["test"])
    assert sorted(Path(s).stem for s in data.splits["val"].sources or []) == sorted(split["folds"][0])
    assert data.splits["train"].images.shape[1:] == (1, 128, 128)
    assert len(data.splits["train"]) == 18
    with pytest.raises(MedsightError, match="do not match the model"):
        load_classification(str(view), like={"label_names": ["a", "b"], "spatial_size": [128, 128], "n_channels": 1})


def _fake_busi(root: Path) -> Path:
    for cls in busi.CLASSES:
        (root / cls).mkdir(parents=True)
        for n in (1, 2):
            Image.fromarray(np.full((8, 10), 100, np.uint8)).save(root / cls / f"{cls} ({n}).png")
            Image.fromarray(np.zeros((8, 10), np.uint8)).save(root / cls / f"{cls} ({n})_mask.png")
    return root


def test_busi_folder_with_an_image_without_a_mask_is_a_clear_error(tmp_path: Path) -> None:
    root = _fake_busi(tmp_path / "busi")
    assert len(busi.list_images(root)) == 6
    (root / "malignant" / "malignant (2)_mask.png").unlink()
    with pytest.raises(MedsightError, match=r"image 'malignant \(2\)' has no mask file"):
        open_dataset(root)
    (root / "malignant" / "malignant (9)_mask.png").write_bytes((root / "benign" / "benign (1)_mask.png").read_bytes())
    with pytest.raises(MedsightError, match="without its image"):
        busi.list_images(root)
    with pytest.raises(MedsightError, match="test fold 7 does not exist"):
        busi.folds(7)
