"""A CT NIfTI volume (HU) written as a DICOM CT Image Storage series, one file per slice, with its geometry exact.

Why: the CT path's end-to-end check (DICOM in, SEG and SR out) needs a real CT as a DICOM series, and the shared
LIDC set ships NIfTI. Geometry follows the NIfTI affine: NIfTI is RAS, DICOM patient space is LPS, so the affine
is flipped on x and y (``io.geometry.LPS_TO_RAS``); array axis i runs along a row (the Image Orientation's row
cosine), j down a column, k across slices, and slice k's Image Position (Patient) is the LPS position of voxel
(0, 0, k). A volume whose slice axis runs against the slice normal (row x column) is written with its slices
reversed, so that medsight's reader (which sorts along the normal) gets back the same voxels at the same places.
Pixel values are stored as signed 16-bit with Rescale Intercept -1024 and Slope 1 (HU = stored - 1024, as LIDC's
scanners store them); non-integer HU are rounded. Every UID is new; patient and study identity are what the caller
gives (empty by default: the Type 2 attributes are present and empty).

``python -m medsight.io.nifti_to_dicom CT.nii.gz OUT_FOLDER [--patient-id ID]`` does the same from a shell; check
the result with ``medsight info OUT_FOLDER``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsight.errors import MedsightError
from medsight.io.atomic import atomic_dir
from medsight.io.geometry import LPS_TO_RAS, Geometry, geometry_from_affine, nifti_affine_mm

INTERCEPT = -1024.0
#: The lung window (centre, width) put in the header for display: -600 / 1500 HU, i.e. [-1350, 150] HU.
LUNG_DISPLAY = (-600.0, 1500.0)


@dataclass(frozen=True)
class SeriesIdentity:
    """Who and what the series belongs to; UIDs left ``None`` are made new."""

    patient_id: str = ""
    patient_name: str = ""
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    frame_of_reference_uid: str | None = None
    study_description: str = ""
    series_description: str = "CT from NIfTI (medsight)"
    series_number: int = 1
    manufacturer: str = ""
    kvp: str = ""


def nifti_geometry(affine_ras: np.ndarray, shape: Sequence[int]) -> tuple[Geometry, bool]:
    """The DICOM geometry (LPS) of a NIfTI grid of ``shape`` (i, j, k), and whether k must be reversed so that it
    runs along the slice normal. Sheared or oblique-between-axes affines (non-orthogonal columns) are refused."""
    lps = LPS_TO_RAS @ np.asarray(affine_ras, dtype=float)
    axes = lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing < 1e-6):
        raise MedsightError("the NIfTI affine has a zero-length axis")
    unit = axes / spacing
    if np.abs(unit.T @ unit - np.eye(3)).max() > 1e-4:
        raise MedsightError("the NIfTI affine is sheared (its axes are not orthogonal): no DICOM slice stack has it")
    reverse = float(np.cross(unit[:, 0], unit[:, 1]) @ unit[:, 2]) < 0
    if reverse:
        lps = lps.copy()
        lps[:3, 3] += lps[:3, 2] * (int(shape[2]) - 1)
        lps[:3, 2] *= -1
    i, j, k = (int(v) for v in shape)
    return geometry_from_affine(lps, (k, j, i)), reverse


def _ds(value: float) -> str:
    from pydicom.valuerep import format_number_as_ds

    return str(format_number_as_ds(float(value)))


def write_ct_series(
    nifti: str | Path, out: str | Path, identity: SeriesIdentity | None = None, *, overwrite: bool = False
) -> list[Path]:
    """Write ``nifti`` (a 3D CT in HU) as a CT Image Storage series into the folder ``out`` (made atomically);
    returns the files in slice order."""
    import nibabel as nib
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    nifti, out = Path(nifti), Path(out)
    identity = identity or SeriesIdentity()
    if out.exists() and not overwrite:
        raise MedsightError("already exists (choose a new folder)", out)
    try:
        img: Any = nib.load(str(nifti))
        data = np.asarray(img.dataobj, dtype=np.float64)
    except Exception as exc:
        raise MedsightError(f"not a readable NIfTI file ({exc})", nifti) from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise MedsightError(f"expected a 3D CT volume, got shape {data.shape}", nifti)
    if not np.all(np.isfinite(data)):
        raise MedsightError("the volume holds NaN or infinite values", nifti)
    try:
        geometry, reverse = nifti_geometry(nifti_affine_mm(img), data.shape)
    except MedsightError as exc:
        raise MedsightError(exc.problem, nifti) from exc
    if reverse:
        data = data[:, :, ::-1]
    stored = np.rint(data) - INTERCEPT
    if stored.min() < -32768 or stored.max() > 32767:
        raise MedsightError(f"HU range [{data.min():g}, {data.max():g}] does not fit 16-bit CT storage", nifti)
    stored = stored.astype(np.int16)

    now = dt.datetime.now()
    study_uid = identity.study_instance_uid or generate_uid()
    series_uid = identity.series_instance_uid or generate_uid()
    frame_uid = identity.frame_of_reference_uid or generate_uid()
    direction = geometry.direction_matrix
    orientation = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
    normal = np.cross(direction[:, 0], direction[:, 1])
    sx, sy, sz = geometry.spacing
    paths: list[Path] = []
    with atomic_dir(out) as tmp:
        for k in range(stored.shape[2]):
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
            ds.PatientName, ds.PatientID = identity.patient_name, identity.patient_id
            ds.PatientBirthDate, ds.PatientSex = "", ""
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.StudyDate, ds.StudyTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
            ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", ""
            ds.StudyDescription = identity.study_description
            ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", identity.series_number, k + 1
            ds.SeriesDescription = identity.series_description
            ds.Laterality, ds.PatientPosition = "", ""  # Type 2C, unknown from a NIfTI: present and empty
            ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
            ds.Manufacturer = identity.manufacturer
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
            ds.DerivationDescription = "converted from NIfTI by medsight (geometry from the affine, HU kept)"
            ds.ImageOrientationPatient = orientation
            position = geometry.index_to_lps([0.0, 0.0, float(k)])
            ds.ImagePositionPatient = [_ds(v) for v in position]
            ds.SliceLocation = _ds(float(position @ normal))
            ds.PixelSpacing = [_ds(sy), _ds(sx)]  # (between rows, between columns)
            ds.SliceThickness = _ds(sz)
            ds.KVP = identity.kvp
            ds.AcquisitionNumber = 1
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[0])
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = _ds(INTERCEPT), "1", "HU"
            ds.WindowCenter, ds.WindowWidth = _ds(LUNG_DISPLAY[0]), _ds(LUNG_DISPLAY[1])
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # rows = j, columns = i
            path = tmp / f"CT{k + 1:04d}.dcm"
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
            paths.append(out / path.name)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsight.io.nifti_to_dicom", description=__doc__.split("\n")[0])
    parser.add_argument("nifti", type=Path, help="a 3D CT NIfTI in HU")
    parser.add_argument("out", type=Path, help="new folder for the series")
    parser.add_argument("--patient-id", default="", help="Patient ID to write (default: empty)")
    parser.add_argument("--series-description", default=SeriesIdentity.series_description)
    args = parser.parse_args(argv)
    try:
        files = write_ct_series(
            args.nifti, args.out, SeriesIdentity(patient_id=args.patient_id, series_description=args.series_description)
        )
    except MedsightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(files)} CT slices written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
