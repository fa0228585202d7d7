"""A CT NIfTI written as a DICOM CT series keeps its geometry and its HU: medsight's reader (and ``medsight info``)
gives back the NIfTI's spacing, origin and direction, every slice within 1e-3 mm of where the NIfTI puts it, and
the same voxel values; dciodvfy reports no error; a left-handed volume comes back in place; a sheared one is
refused with a message naming the file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medsight.errors import MedsightError
from medsight.io.dicom import read_series
from medsight.io.geometry import LPS_TO_RAS
from medsight.io.nifti_to_dicom import write_ct_series

MEDSIGHT = [sys.executable, "-m", "medsight"]


def nifti_geometry(path: Path) -> tuple[np.ndarray, np.ndarray, Any]:
    img: Any = nib.load(str(path))
    lps = LPS_TO_RAS @ img.affine
    return lps, np.asarray(img.dataobj), img


def test_geometry_and_values_round_trip(lidc_root: Path, lidc_series: Path) -> None:
    lps, data, _ = nifti_geometry(lidc_root / "LIDC-IDRI-0001" / "ct.nii.gz")
    volume = read_series(lidc_series)
    g = volume.geometry
    assert g is not None and volume.modality == "CT"
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    assert np.allclose(g.spacing, spacing, atol=1e-6)
    assert np.allclose(g.origin, lps[:3, 3], atol=1e-3)
    assert np.allclose(g.direction_matrix, lps[:3, :3] / spacing, atol=1e-6)
    for k in range(data.shape[2]):  # every slice where the NIfTI puts it
        assert np.allclose(g.index_to_lps([0, 0, k]), (lps @ [0, 0, k, 1])[:3], atol=1e-3)
    # values: HU exactly (the array is [slice, row, column] = [k, j, i])
    assert np.array_equal(volume.array, np.transpose(data, (2, 1, 0)).astype(np.float32))


def test_medsight_info_reports_the_niftis_geometry(lidc_root: Path, lidc_series: Path) -> None:
    lps, data, _ = nifti_geometry(lidc_root / "LIDC-IDRI-0001" / "ct.nii.gz")
    run = subprocess.run([*MEDSIGHT, "info", str(lidc_series), "--json"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    (series,) = json.loads(run.stdout)["studies"][0]["series"]
    assert series["modality"] == "CT" and series["instances"] == data.shape[2]
    assert series["size"] == list(data.shape)
    geometry = series["geometry"]
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    assert np.allclose(geometry["spacing_mm"], spacing, atol=1e-5)
    assert np.allclose(geometry["origin_lps_mm"], lps[:3, 3], atol=1e-3)
    assert np.allclose(np.reshape(geometry["direction"], (3, 3)), lps[:3, :3] / spacing, atol=1e-6)
    assert geometry["orientation"] == "LPS" and geometry["plane"] == "axial"
    assert "LIDC" not in run.stdout  # no patient identifier without --show-phi


def test_dciodvfy_reports_no_error(lidc_series: Path, dciodvfy: str) -> None:
    files = sorted(lidc_series.glob("*.dcm"))
    for path in (files[0], files[len(files) // 2], files[-1]):
        run = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=120)
        errors = [x for x in (run.stdout + run.stderr).splitlines() if x.startswith("Error")]
        assert errors == [], f"{path.name}: {errors}"
    ds = pydicom.dcmread(files[0])
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
    assert len({pydicom.dcmread(p).SOPInstanceUID for p in files}) == len(files)


def test_a_left_handed_volume_comes_back_in_place(tmp_path: Path) -> None:
    data = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4) - 500
    affine = np.diag([-0.7, -0.7, -2.0, 1.0])  # RAS: i to the left, j to posterior, k to INFERIOR (left-handed)
    affine[:3, 3] = (10.0, 20.0, 30.0)
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "ct.nii.gz"))
    write_ct_series(tmp_path / "ct.nii.gz", tmp_path / "series")
    volume = read_series(tmp_path / "series")
    assert volume.geometry is not None
    lps = LPS_TO_RAS @ affine
    for i, j, k in [(0, 0, 0), (5, 4, 3), (2, 1, 3)]:
        world = (lps @ [i, j, k, 1])[:3]
        index = np.linalg.inv(volume.geometry.affine_lps) @ np.append(world, 1)
        c, r, s = (int(np.rint(v)) for v in index[:3])
        assert np.allclose(index[:3], (c, r, s), atol=1e-4)
        assert volume.array[s, r, c] == data[i, j, k]


def test_bad_volumes_are_refused_naming_the_file(tmp_path: Path) -> None:
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.int16), sheared), str(tmp_path / "sheared.nii.gz"))
    with pytest.raises(MedsightError, match="sheared") as err:
        write_ct_series(tmp_path / "sheared.nii.gz", tmp_path / "out")
    assert "sheared.nii.gz" in str(err.value)
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.int16), np.eye(4)), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(MedsightError, match="3D CT"):
        write_ct_series(tmp_path / "flat.nii.gz", tmp_path / "out")
    (tmp_path / "taken").mkdir()
    with pytest.raises(MedsightError, match="already exists"):
        write_ct_series(tmp_path / "sheared.nii.gz", tmp_path / "taken")
