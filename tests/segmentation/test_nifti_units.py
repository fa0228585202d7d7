"""NIfTI's spatial unit (``xyzt_units``) is part of its geometry (audit): a 1 mm volume stored in metres (pixdim
0.001, units "meter", legal NIfTI-1) was read as 0.001 mm voxels, resampled to one voxel per axis, and predicted as
an empty mask with exit 0; microns went the other way (a thousandfold upsampling). Spacing is now read in mm."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsight.data.segmentation import _read_volume, spacing_of


def _saved(path: Path, scale: float, unit: str) -> Path:
    img = nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.diag([scale * 1.5, scale * 2.0, scale * 3.0, 1.0]))
    img.header.set_xyzt_units(unit, "sec")
    nib.save(img, path)
    return path


@pytest.mark.parametrize(("scale", "unit"), [(1.0, "mm"), (0.001, "meter"), (1000.0, "micron"), (1.0, "unknown")])
def test_spacing_is_read_in_millimetres_whatever_unit_the_header_names(tmp_path: Path, scale: float, unit: str) -> None:
    arr, affine = _read_volume(_saved(tmp_path / f"{unit}.nii.gz", scale, unit))
    assert arr.shape == (4, 5, 6)
    assert spacing_of(affine) == pytest.approx((1.5, 2.0, 3.0))


def test_a_label_volume_with_a_trailing_channel_of_one_is_read_like_an_image_is(tmp_path: Path) -> None:
    """(x, y, z, 1) labels were refused ("label shape (24, 24, 24, 1) does not match its image") while the same
    singleton channel is accepted on images."""
    from medsight.data.segmentation import _read_label

    lab = np.zeros((6, 7, 8, 1), np.uint8)
    lab[1:3, 1:3, 1:3, 0] = 1
    nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp_path / "lab.nii.gz")
    read = _read_label(tmp_path / "lab.nii.gz", declared=[0, 1])
    assert read.shape == (6, 7, 8) and int(read.sum()) == 8
