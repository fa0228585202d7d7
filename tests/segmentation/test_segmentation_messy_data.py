"""Messy segmentation data: valid-but-unusual folders work (case ids ending in digits, non-consecutive label ids,
label sets only some masks show, 16-bit binary masks, colour images among grey ones) and bad ones are refused before
training with one line naming the file and the problem (a 255 ignore border, channel counts that differ, splits
files that are malformed or put a test case in a fold)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medsight.data.folds import stored_folds
from medsight.errors import MedsightError
from medsight.tasks import segmentation
from medsight.tasks.segmentation import SegmentationOptions
from medsight.tasks.segmentation.data import Loaded, fingerprint, load_case, open_dataset, read_cases
from medsight.training.bundle import load_bundle

TINY_3D = {
    "patch_size": [16, 16, 16],
    "batch_size": 2,
    "iterations_per_epoch": 2,
    "optimizer": {"warmup_iterations": 1},
    "validate_every": 0,
    "test_time_flips": False,
    "network": {"filters": [8, 16, 32]},
}


def _pairs(root: Path, masks: list[np.ndarray], colour: frozenset[int] = frozenset()) -> Path:
    """An image + mask folder: ``images/NNN_img.png`` (grey, or RGB for the indices in ``colour``) and
    ``labels/NNN_mask.png`` holding ``masks`` as they are (8- or 16-bit)."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i, mask in enumerate(masks):
        img = Image.fromarray((rng.random(mask.shape) * 200).astype(np.uint8))
        (img.convert("RGB") if i in colour else img).save(root / "images" / f"{i:03d}_img.png")
        Image.fromarray(mask).save(root / "labels" / f"{i:03d}_mask.png")
    return root


def _square(value: int, dtype: type = np.uint8, shape: tuple[int, int] = (24, 24)) -> np.ndarray:
    m: np.ndarray = np.zeros(shape, dtype)
    m[6:14, 8:16] = value
    return m


def _msd(
    root: Path,
    labels: list[np.ndarray],
    names: list[str] | None = None,
    meta: dict | None = None,
    images: dict[int, np.ndarray] | None = None,
) -> Path:
    """An MSD folder with one image and one label per case, ``case_NNN`` (or ``names``)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(1)
    for i, lab in enumerate(labels):
        name = names[i] if names else f"case_{i:03d}"
        img = (images or {}).get(i)
        if img is None:
            img = rng.normal(0, 1, lab.shape).astype(np.float32) + 3 * (lab > 0)
        nib.save(nib.Nifti1Image(img.astype(np.float32), np.eye(4)), str(root / "imagesTr" / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(lab.astype(np.uint8), np.eye(4)), str(root / "labelsTr" / f"{name}.nii.gz"))
    if meta is not None:
        (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _cube(values: dict[int, tuple[slice, slice, slice]], shape: tuple[int, int, int] = (12, 12, 12)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    for v, box in values.items():
        lab[box] = v
    return lab


def _one_line(err: pytest.ExceptionInfo[MedsightError]) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# ------------------------------------------------------------------------------------------- 06: mask values


def test_mask_with_a_255_ignore_border_is_refused_naming_the_values(tmp_path: Path) -> None:
    """0/1 masks with a 255 "void" border (Pascal VOC) once made a 256-class network whose 253 phantom classes
    scored Dice 1.0 each."""
    masks = []
    for _ in range(4):
        m = _square(1)
        m[:2, :] = 255
        masks.append(m)
    root = _pairs(tmp_path / "voc", masks)
    with pytest.raises(MedsightError) as err:
        open_dataset(root)
    text = _one_line(err)
    assert "000_mask.png" in text and "0/1/255" in text and "ignore label" in text

    # declared in dataset.json as two classes: the same file is refused when the case is read, with the same words
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "lesion"}}))
    ds = open_dataset(root)
    assert ds.n_classes == 2
    with pytest.raises(MedsightError, match=r"0/1/255 are not class numbers: 255 looks like an ignore label"):
        load_case(ds, ds.train[0])


def test_16_bit_full_scale_binary_mask_is_two_classes_and_big_values_are_refused(tmp_path: Path) -> None:
    """A 0/65535 binary mask (MATLAB im2uint16) once gave 65,536 classes."""
    ds = open_dataset(_pairs(tmp_path / "u16", [_square(65535, np.uint16) for _ in range(3)]))
    assert ds.labels == {0: "background", 1: "foreground"} and ds.n_classes == 2
    case = load_case(ds, ds.train[0])
    assert case.label is not None and set(np.unique(case.label).tolist()) == {0, 1}
    assert int(case.label.sum()) == 8 * 8

    big = _square(1000, np.uint16)
    big[0, 0] = 7
    with pytest.raises(MedsightError) as err:
        open_dataset(_pairs(tmp_path / "intensity", [big, _square(1, np.uint16)]))
    assert "000_mask.png" in _one_line(err) and "not small class numbers" in str(err.value)

    scaled = _square(128)
    scaled[0:2, 0:2] = 255  # classes 1 and 2 stored as 128 and 255
    with pytest.raises(MedsightError, match=r"0/128/255 are not class numbers: class numbers scaled to fill 8-bit"):
        open_dataset(_pairs(tmp_path / "scaled", [scaled]))


# ------------------------------------------------------------------------------------------- 10: channels


def test_colour_images_among_grey_ones_are_all_read_as_grey(tmp_path: Path) -> None:
    """9 RGB PNGs among 3 grey ones once ended in IndexError in the fingerprint."""
    masks = [_square(255) for _ in range(12)]
    ds = open_dataset(_pairs(tmp_path / "mixed", masks, colour=frozenset(i for i in range(12) if i % 4 != 3)))
    assert ds.grey and ds.channel_names == ["grey"] and ds.modality == "unknown"
    assert any("9 of 12 images are colour" in n for n in ds.notes)
    cases = read_cases(ds, [c.id for c in ds.train])
    assert {c.image.shape for c in cases.values()} == {(1, 24, 24)}
    assert fingerprint(ds, list(cases.values()))["n_channels"] == 1


def test_a_volume_with_another_channel_count_is_refused_naming_its_file(tmp_path: Path) -> None:
    """One 4D two-channel NIfTI among 3D ones once ended in IndexError in the fingerprint."""
    labels = [_cube({1: (slice(3, 7),) * 3}) for _ in range(5)]
    vol = np.random.default_rng(0).normal(size=(12, 12, 12)).astype(np.float32)
    with pytest.raises(MedsightError) as err:  # from the headers, when the folder is opened: also for evaluate
        open_dataset(_msd(tmp_path / "nometa", labels, images={1: np.stack([vol, vol], -1)}))
    text = _one_line(err)
    assert "case_001.nii.gz" in text and "2 channel(s) where 4 of the 5 cases have 1" in text

    meta = {"labels": {"0": "background", "1": "tumour"}, "channel_names": {"0": "MRI"}}
    with pytest.raises(MedsightError, match=r"case_001\.nii\.gz: an image of 2 channel\(s\); dataset.json declares 1"):
        open_dataset(_msd(tmp_path / "meta", labels, meta=meta, images={1: np.stack([vol, vol], -1)}))

    # the fingerprint checks the cases it is given too (formats whose headers are not read at opening)
    ds = open_dataset(_msd(tmp_path / "ok", labels))
    cases = list(read_cases(ds, [c.id for c in ds.train]).values())
    cases[2] = Loaded(cases[2].id, np.concatenate([cases[2].image] * 2), cases[2].label, (1.0,) * 3, np.eye(4))
    with pytest.raises(MedsightError, match=r"case_002\.nii\.gz: an image of 2 channel\(s\) where 4 of the 5"):
        fingerprint(ds, cases)


# ------------------------------------------------------------------------------------------- 13: label inference


def test_labels_are_inferred_from_every_mask_not_the_first_few(tmp_path: Path) -> None:
    """Ten normal images sorted first (empty masks) once made the label set {background} and refused the lesions."""
    masks = [np.zeros((24, 24), np.uint8) for _ in range(10)] + [_square(255) for _ in range(4)]
    ds = open_dataset(_pairs(tmp_path / "pairs", masks))
    assert ds.labels == {0: "background", 1: "foreground"}
    lesion = load_case(ds, ds.train[12])
    assert lesion.label is not None and int(lesion.label.max()) == 1

    empty = _cube({})
    labels = [empty] * 21 + [_cube({1: (slice(2, 5),) * 3, 2: (slice(6, 9),) * 3})]
    ds = open_dataset(_msd(tmp_path / "msd", labels))  # MSD once looked at the first 20 masks only
    assert ds.labels == {0: "background", 1: "label_1", 2: "label_2"}
    again = open_dataset(tmp_path / "msd")  # the second opening reads the remembered values
    assert again.labels == ds.labels

    with pytest.raises(MedsightError, match="all 3 masks are empty"):
        open_dataset(_pairs(tmp_path / "blank", [np.zeros((24, 24), np.uint8)] * 3))


# ------------------------------------------------------------------------------------------- 20: splits files


def test_nnunet_splits_with_a_misspelled_key_are_refused_in_one_line(tmp_path: Path) -> None:
    ids = [f"case_{i:03d}" for i in range(8)]
    (tmp_path / "splits_final.json").write_text(json.dumps([{"train": ids[:3], "validation": ids[3:4]}]))
    with pytest.raises(MedsightError) as err:
        stored_folds(tmp_path, ids)
    text = _one_line(err)
    assert "splits_final.json" in text and "fold 0 has no 'val' list" in text and "'validation'" in text

    (tmp_path / "splits_final.json").write_text(json.dumps([{"train": ids[:3], "val": ids[2:4]}]))
    with pytest.raises(MedsightError, match="case 'case_002' is in both 'train' and 'val'"):
        stored_folds(tmp_path, ids)

    # a partial nnU-Net split trains on the cases it lists, and holds out the rest
    (tmp_path / "splits_final.json").write_text(json.dumps([{"train": ids[:3], "val": ids[3:4]}]))
    folds = stored_folds(tmp_path, ids)
    assert folds.train_val(0) == (ids[:3], ids[3:4]) and folds.test == ids[4:]
    assert folds.to_json()["train"] == [ids[:3]]


def test_a_test_case_in_a_fold_is_refused(tmp_path: Path) -> None:
    """A medsight_splits.json listing case_007 under "test" and in fold 1 once trained on the test case."""
    ids = [f"case_{i:03d}" for i in range(8)]
    splits = {"test": ["case_007"], "folds": [ids[0:2], [*ids[2:4], "case_007"], ids[4:7]]}
    (tmp_path / "medsight_splits.json").write_text(json.dumps(splits))
    with pytest.raises(MedsightError) as err:
        stored_folds(tmp_path, ids)
    text = _one_line(err)
    assert "medsight_splits.json" in text and "case 'case_007' is both in 'test' and in fold 1" in text

    splits = {"test": ["case_007"], "folds": [ids[0:3], ids[2:7]]}
    (tmp_path / "medsight_splits.json").write_text(json.dumps(splits))
    with pytest.raises(MedsightError, match="case 'case_002' is in validation folds 0 and 1"):
        stored_folds(tmp_path, ids)
    (tmp_path / "medsight_splits.json").write_text(json.dumps({"test": ["case_070"], "folds": [ids[:4], ids[4:7]]}))
    with pytest.raises(MedsightError, match=r"splits name 1 case\(s\) not in the data, e\.g\. case_070"):
        stored_folds(tmp_path, ids)
    assert stored_folds(tmp_path, ids, official_test=["case_070"]).test == ["case_070"]  # the data's own test case
    (tmp_path / "medsight_splits.json").write_text(json.dumps({"test": [], "fold": [ids]}))
    with pytest.raises(MedsightError, match="has no 'folds' list"):
        stored_folds(tmp_path, ids)
    (tmp_path / "medsight_splits.json").write_text(json.dumps({"test": "case_007", "folds": [ids[:7]]}))
    with pytest.raises(MedsightError, match="'test' must be a list of case ids"):
        stored_folds(tmp_path, ids)


def test_training_refuses_a_splits_file_with_a_test_case_in_a_fold_before_reading_any_case(tmp_path: Path) -> None:
    labels = [_cube({1: (slice(3, 7),) * 3}) for _ in range(4)]
    root = _msd(tmp_path / "d", labels)
    (root / "medsight_splits.json").write_text(
        json.dumps({"test": ["case_003"], "folds": [["case_000"], ["case_001", "case_003"]]})
    )
    with pytest.raises(MedsightError, match="both in 'test' and in fold 1"):
        segmentation.TASK.train(str(root), tmp_path / "bundle", SegmentationOptions(epochs=1))
    assert not (tmp_path / "bundle").exists()


# ------------------------------------------------------------------------------------------- 21: case ids


def test_case_ids_ending_in_four_digits_are_cases_not_channel_files(tmp_path: Path) -> None:
    """patient_1000 ... patient_1003 (one image and one label each) were once taken for channel files of a case
    "patient" when dataset.json declared channel_names, and the folder refused."""
    labels = [_cube({1: (slice(3, 7),) * 3}) for _ in range(4)]
    names = [f"patient_{1000 + i}" for i in range(4)]
    meta = {"labels": {"0": "background", "1": "tumour"}, "channel_names": {"0": "MRI"}}
    ds = open_dataset(_msd(tmp_path / "ids", labels, names=names, meta=meta))
    assert [c.id for c in ds.train] == names and all(len(c.images) == 1 for c in ds.train)
    assert load_case(ds, ds.train[0]).image.shape == (1, 12, 12, 12)

    # real nnU-Net channel files are still grouped: case_001_0000 + case_001_0001 with labelsTr/case_001
    root = tmp_path / "channels"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for ch in range(2):
        vol = np.full((12, 12, 12), ch, np.float32)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(root / "imagesTr" / f"case_001_{ch:04d}.nii.gz"))
    nib.save(nib.Nifti1Image(labels[0], np.eye(4)), str(root / "labelsTr" / "case_001.nii.gz"))
    (root / "dataset.json").write_text(json.dumps(meta | {"channel_names": {"0": "T1", "1": "T2"}}))
    ds = open_dataset(root)
    assert [c.id for c in ds.train] == ["case_001"] and len(ds.train[0].images) == 2
    assert load_case(ds, ds.train[0]).image.shape == (2, 12, 12, 12)


# ------------------------------------------------------------------------------------------- 23: label ids


def test_non_consecutive_label_ids_are_numbered_consecutively_with_their_names(tmp_path: Path) -> None:
    labels = [_cube({1: (slice(2, 6),) * 3, 3: (slice(7, 10),) * 3}) for _ in range(3)]
    meta = {"labels": {"0": "background", "1": "liver", "3": "tumour"}, "channel_names": {"0": "CT"}}
    ds = open_dataset(_msd(tmp_path / "gap", labels, meta=meta))
    assert ds.labels == {0: "background", 1: "liver", 2: "tumour"} and ds.n_classes == 3
    assert ds.label_values == (0, 1, 3) and any("not consecutive" in n for n in ds.notes)
    case = load_case(ds, ds.train[0])
    assert case.label is not None and set(np.unique(case.label).tolist()) == {0, 1, 2}
    assert int((case.label == 2).sum()) == 27  # the tumour cube, value 3 in the file

    nib.save(nib.Nifti1Image(_cube({2: (slice(2, 6),) * 3}), np.eye(4)), str(tmp_path / "gap/labelsTr/case_001.nii.gz"))
    with pytest.raises(
        MedsightError, match=r"case_001\.nii\.gz: label values \[2\] are not declared classes \[0, 1, 3\]"
    ):
        load_case(ds, ds.train[1])


def test_training_with_non_consecutive_label_ids_reports_no_phantom_class(tmp_path: Path) -> None:
    """{"0": background, "1": liver, "3": tumour} once trained a class "label_2" that never occurs and scored Dice 1.0
    on every case, averaged into the headline mean Dice."""
    rng = np.random.default_rng(0)
    labels = []
    for _ in range(6):
        c = rng.integers(6, 10, 3)
        lab = np.zeros((16, 16, 16), np.uint8)
        lab[c[0] - 3 : c[0] + 3, c[1] - 3 : c[1] + 3, c[2] - 3 : c[2] + 3] = 1
        lab[c[0] - 3 : c[0] + 3, c[1] - 3 : c[1] + 3, c[2] + 3 : c[2] + 5] = 3
        labels.append(lab)
    meta = {"labels": {"0": "background", "1": "liver", "3": "tumour"}, "channel_names": {"0": "CT"}}
    root = _msd(tmp_path / "gap", labels, meta=meta)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(TINY_3D))
    meta_out = segmentation.TASK.train(str(root), tmp_path / "bundle", SegmentationOptions(epochs=1, plan=plan))
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.label_names == ["background", "liver", "tumour"]
    assert bundle.meta["network"]["kwargs"]["out_channels"] == 3
    assert bundle.meta["data"]["label_values"] == [0, 1, 3]
    val = meta_out["metrics"]["val"]
    assert set(val) == {"dice", "dice_liver", "dice_tumour"}
    assert val["dice"] == pytest.approx((val["dice_liver"] + val["dice_tumour"]) / 2)
    # predict writes label maps in the data's own values: class 2 (the tumour) is 3 again, as in the label files
    from medsight.tasks.segmentation.predict import SegmentationModel

    model = SegmentationModel(bundle)
    assert model.label_file_values(np.array([[0, 1, 2]])).tolist() == [[0, 1, 3]]
    image = root / "imagesTr" / sorted(p.name for p in (root / "imagesTr").iterdir())[0]
    from medsight.cli import main

    assert main(["predict", str(tmp_path / "bundle"), str(image), "--out", str(tmp_path / "pred")]) == 0
    written = np.asarray(nib.load(str(next((tmp_path / "pred").glob("*_seg.nii.gz")))).dataobj)
    assert 2 not in set(np.unique(written).tolist())
