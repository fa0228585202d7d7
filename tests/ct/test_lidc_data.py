"""LIDC-IDRI read in place: the consensus rule gives SOURCE.md's nodules (1 in 0001, 3 in 0003; 0003's nodule 4
had one reader), their volumes equal nodules.csv's, the files are checked against MD5SUMS, and the training
folder keeps the test patient out and splits the training patient by lung."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsight.data import lidc
from medsight.errors import MedsightError


def test_consensus_of_two_readers_gives_the_nodules_in_source_md(lidc_root: Path) -> None:
    found = {c: lidc.read_case(c, lidc_root).nodules() for c in lidc.CASES}
    assert [n.number for n in found["LIDC-IDRI-0001"]] == [1]
    assert [n.number for n in found["LIDC-IDRI-0003"]] == [1, 2, 3]  # nodule 4: one reader, not a consensus nodule
    with open(lidc_root / "nodules.csv", newline="") as fh:
        rows = {(r["case"], int(r["nodule"])): r for r in csv.DictReader(fh)}
    for case, nodules in found.items():
        for n in nodules:
            row = rows[(case, n.number)]
            assert n.voxels == int(row["consensus50_voxels"])
            assert n.volume_mm3 == pytest.approx(float(row["consensus50_volume_mm3"]), abs=0.1)
            assert n.n_readers == 4
    # one reader is not enough; at 1 reader 0003's ground-glass nodule 4 joins
    assert len(lidc.read_case("LIDC-IDRI-0003", lidc_root).nodules(min_readers=1)) == 4
    solid = found["LIDC-IDRI-0001"][0]
    assert solid.malignancy == (4, 5, 5, 5)
    assert 20 < solid.diameter_mm < 26
    # the centre in LPS is the affine applied to the voxel centre (LIDC gives positions in DICOM patient space)
    assert solid.centre_lps[0] > 0  # the patient's left: x grows to the left in LPS


def test_locate_checks_md5sums_and_names_the_file(lidc_root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "lidc_idri_ct"
    copy.mkdir()
    for name in ("cases.json", "nodules.csv", "MD5SUMS"):
        shutil.copy(lidc_root / name, copy / name)
    with pytest.raises(MedsightError, match="listed in MD5SUMS but missing"):
        lidc.locate(copy)
    (copy / "MD5SUMS").write_text("0" * 32 + "  ./cases.json\n")
    with pytest.raises(MedsightError, match="does not match MD5SUMS") as err:
        lidc.locate(copy)
    assert "cases.json" in str(err.value)
    with pytest.raises(MedsightError, match="no LIDC-IDRI folder"):
        lidc.locate(tmp_path / "nowhere")


def test_read_case_rejects_a_mask_on_another_grid(lidc_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "lidc_idri_ct"
    (root / "LIDC-IDRI-0001").mkdir(parents=True)
    for name in ("cases.json", "nodules.csv"):
        shutil.copy(lidc_root / name, root / name)
    ct: nib.Nifti1Image = nib.load(str(lidc_root / "LIDC-IDRI-0001" / "ct.nii.gz"))  # type: ignore[assignment]
    small = np.zeros((4, 4, 4), np.int16)
    nib.save(nib.Nifti1Image(small, ct.affine), str(root / "LIDC-IDRI-0001" / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 5), np.uint8), ct.affine), str(root / "LIDC-IDRI-0001" / lidc.FILES[1]))
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), ct.affine), str(root / "LIDC-IDRI-0001" / lidc.FILES[2]))
    with pytest.raises(MedsightError, match="grid differs"):
        lidc.read_case("LIDC-IDRI-0001", root)
    with pytest.raises(MedsightError, match="no case"):
        lidc.read_case("LIDC-IDRI-0002", root)


def test_training_folder_splits_the_training_patient_by_lung(lidc_root: Path, tmp_path: Path) -> None:
    written = lidc.write_training_folder(lidc.read_case("LIDC-IDRI-0003", lidc_root), tmp_path / "msd", (2.5, 2.5, 5.0))
    assert written["train"] == "LIDC-IDRI-0003-left"  # nodules 2 and 3 lie in the left lung, nodule 1 in the right
    assert all(v > 0 for v in written["nodule_voxels"].values())
    splits = json.loads((tmp_path / "msd" / "medsight_splits.json").read_text())
    assert splits["folds"] == [["LIDC-IDRI-0003-right"], ["LIDC-IDRI-0003-left"]] and splits["test"] == []
    assert set(splits["patients"].values()) == {"LIDC-IDRI-0003"}
    image: nib.Nifti1Image = nib.load(str(tmp_path / "msd" / "imagesTr" / "LIDC-IDRI-0003-left_0000.nii.gz"))  # type: ignore[assignment]
    assert np.allclose(np.sqrt((image.affine[:3, :3] ** 2).sum(axis=0)), (2.5, 2.5, 5.0))
    assert np.asarray(image.dataobj).min() >= -1024  # the -2048 padding outside the field of view is floored
    assert not list((tmp_path / "msd").glob("**/LIDC-IDRI-0001*"))
