"""Image folder + CSV manifest: PNG, DICOM and NIfTI inputs, patient-level splits, clear errors."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medsight.data.manifest import load_manifest
from medsight.data.splits import assert_disjoint_patients
from medsight.errors import MedsightError


def make_png_manifest(root: Path, n_patients: int = 30, per_patient: int = 2, seed: int = 0) -> Path:
    """Bright-square (label 'lesion') vs plain ('clear') images with patient ids, sex and age columns."""
    rng = np.random.default_rng(seed)
    rows = []
    (root / "img").mkdir(parents=True, exist_ok=True)
    for p in range(n_patients):
        label = "lesion" if p % 2 else "clear"
        for k in range(per_patient):
            img = rng.normal(60, 10, size=(40 + 4 * (p % 3), 40)).clip(0, 255)
            if label == "lesion":
                img[10:22, 12:24] += 120
            name = f"img/p{p:03d}_{k}.png"
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / name)
            rows.append(
                {
                    "path": name,
                    "label": label,
                    "patient_id": f"P{p:03d}",
                    "sex": "F" if p % 4 < 2 else "M",
                    "age": 20 + (7 * p) % 70,  # several age bands in every split
                }
            )
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def test_png_manifest_splits_by_patient_and_keeps_attributes(tmp_path: Path) -> None:
    data = load_manifest(make_png_manifest(tmp_path))
    assert data.task_type == "binary" and data.label_names == ["clear", "lesion"]
    assert data.spatial_dims == 2 and data.n_channels == 1
    assert set(data.splits) == {"train", "val", "test"}
    assert_disjoint_patients({k: v.patient_ids or [] for k, v in data.splits.items()})
    assert sum(len(v) for v in data.splits.values()) == 60
    test = data.split("test")
    assert test.attributes is not None and list(test.attributes.columns) == ["sex", "age"]
    assert all(v.images.shape[1:] == (1, *data.spatial_size) for v in data.splits.values())
    assert len(data.fingerprint["files"]) == 61  # the CSV and every image


def test_dicom_and_nifti_inputs(shared_data: Path, tmp_path: Path) -> None:
    samples = shared_data / "dicom_samples" / "pydicom_test_files"
    rows = []
    for name, label in (("CT_small.dcm", "ct"), ("MR_small.dcm", "mr")):
        for s in ("train", "val", "test"):  # a copy per split: one file on two rows is refused
            (tmp_path / f"{s}_{name}").write_bytes((samples / name).read_bytes())
            rows.append({"path": f"{s}_{name}", "label": label, "split": s})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    data = load_manifest(tmp_path / "manifest.csv")
    assert data.split_method == "manifest" and data.label_names == ["ct", "mr"]
    assert data.split("train").images.shape == (2, 1, *data.spatial_size)

    vols = []
    for i in range(6):
        vol = np.random.default_rng(i).random((12, 10, 8)).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / f"v{i}.nii.gz")
        vols.append(
            {"path": f"v{i}.nii.gz", "label": str(i % 2), "split": ["train", "train", "val", "val", "test", "test"][i]}
        )
    pd.DataFrame(vols).to_csv(tmp_path / "vol.csv", index=False)
    vdata = load_manifest(tmp_path / "vol.csv")
    assert vdata.spatial_dims == 3 and vdata.split("val").images.shape == (2, 1, 12, 10, 8)


def test_missing_file_is_named(tmp_path: Path) -> None:
    csv = make_png_manifest(tmp_path, n_patients=6)
    table = pd.read_csv(csv)
    table.loc[3, "path"] = "img/not_there.png"
    table.to_csv(csv, index=False)
    with pytest.raises(MedsightError) as err:
        load_manifest(csv)
    assert "row 5" in str(err.value) and "not_there.png" in str(err.value) and str(csv) in str(err.value)


def test_unknown_label_against_a_model(tmp_path: Path) -> None:
    csv = make_png_manifest(tmp_path, n_patients=6)
    with pytest.raises(MedsightError, match="unknown label"):
        load_manifest(csv, label_names=["clear", "nodule"])


def test_missing_label_and_columns(tmp_path: Path) -> None:
    csv = make_png_manifest(tmp_path, n_patients=6)
    table = pd.read_csv(csv)
    table.loc[2, "label"] = None
    table.to_csv(csv, index=False)
    with pytest.raises(MedsightError, match="row 4 has no label"):
        load_manifest(csv)
    table.drop(columns=["label"]).to_csv(csv, index=False)
    with pytest.raises(MedsightError, match="no 'label' column"):
        load_manifest(csv)


def test_a_row_with_an_empty_split_is_named_not_dropped(tmp_path: Path) -> None:
    """Rows whose split cell was blank once fell out of every split without a word."""
    csv = make_png_manifest(tmp_path, n_patients=8, per_patient=1)
    table = pd.read_csv(csv)
    table["split"] = ["train"] * 4 + [None, None] + ["val", "test"]
    table.to_csv(csv, index=False)
    with pytest.raises(MedsightError, match=r"2 row\(s\) with an empty split \(line 6, 7\)") as caught:
        load_manifest(csv)
    assert caught.value.path == str(csv)
    table["split"] = ["train"] * 6 + ["val", "test"]
    table.to_csv(csv, index=False)
    assert len(load_manifest(csv).split("train")) == 6


def test_a_split_column_that_puts_one_patient_in_two_splits_is_refused(tmp_path: Path) -> None:
    """Every test patient also in training once passed, and evaluate said none of its cases was seen."""
    csv = make_png_manifest(tmp_path, n_patients=6, per_patient=3)
    table = pd.read_csv(csv)
    table["split"] = ["train", "val", "test"] * 6  # each patient's three images in three splits
    table.to_csv(csv, index=False)
    with pytest.raises(MedsightError, match=r"6 patient\(s\) appear in more than one split \(e.g. rows 2 \(train\)"):
        load_manifest(csv)
    with pytest.raises(MedsightError) as caught:
        load_manifest(csv)
    assert "P000" not in str(caught.value)  # rows, never the patient id


@pytest.mark.parametrize(("cell", "row"), [(" ", 3), ("   ", 3)])
def test_a_blank_looking_label_is_no_label(cell: str, row: int, tmp_path: Path) -> None:
    """A label of spaces once became a third class named " " (a lone "|" is a multi-label row with no label)."""
    csv = make_png_manifest(tmp_path, n_patients=8, per_patient=1)
    table = pd.read_csv(csv)
    table.loc[1, "label"] = cell
    table.to_csv(csv, index=False)
    with pytest.raises(MedsightError, match=f"row {row} has no label"):
        load_manifest(csv)
    table.loc[1, "label"] = " lesion "  # spaces around a label are not part of it
    table.to_csv(csv, index=False)
    data = load_manifest(csv)
    assert data.label_names == ["clear", "lesion"] and data.task_type == "binary"


def test_rows_without_a_patient_id_are_each_a_patient_of_their_own(tmp_path: Path) -> None:
    """Blank ids once became one patient named "nan", whose rows moved between splits as one block."""
    csv = make_png_manifest(tmp_path, n_patients=20, per_patient=1)
    table = pd.read_csv(csv)
    table.loc[[1, 3, 5, 7, 9, 11], "patient_id"] = None
    table.to_csv(csv, index=False)
    data = load_manifest(csv)
    blank_paths = set(table.loc[[1, 3, 5, 7, 9, 11], "path"])  # such a row is known by its path
    in_splits = {name: set(data.split(name).patient_ids) for name in ("train", "val", "test")}
    assert not any("nan" in ids for ids in in_splits.values())
    assert len(blank_paths & set().union(*in_splits.values())) == 6  # six patients, not one
