"""A service data folder for the feedback tests: a site configuration routing to a real bundle, real BreastMNIST
pixels stored as DICOM instances in the service's StudyStore (with made-up patient identifiers), and verdicts
recorded through ``medsight.review.verdicts``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def site_toml(folder: Path, route: str, bundle: Path) -> Path:
    path = folder / "site.toml"
    path.write_text(
        f'[service]\ndata_dir = "service"\n[dicom]\nallow_any = true\n[[routes]]\nname = "{route}"\n'
        f'bundle = "{bundle}"\n'
    )
    return path


def cr_instance(pixels: np.ndarray, patient_id: str, study_uid: str) -> Dataset:
    """A CR instance holding ``pixels`` (uint8), with identifiers a de-identified export must not carry."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.PatientID, ds.PatientName = patient_id, f"DOE^{patient_id}"
    ds.Modality, ds.StudyDate = "CR", "20240101"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.ascontiguousarray(pixels, np.uint8).tobytes()
    return ds


@dataclass
class Finding:
    study_uid: str
    sop_uid: str
    label: str  # what the reader settles on
    patient: str
    pixels: np.ndarray = field(repr=False)


def store_cases(
    data_dir: Path, shared_data: Path, start: int, n: int, patients: int, part: str = "val", prefix: str = "PAT"
) -> list[Finding]:
    """``n`` BreastMNIST images of ``part`` as CR studies of ``patients`` patients (``<prefix><number>``), stored as
    the listener would."""
    from medsight.serving.database import open_database
    from medsight.serving.store import StudyStore

    raw = np.load(shared_data / "medmnist" / "breastmnist.npz")
    images, labels = raw[f"{part}_images"], raw[f"{part}_labels"][:, 0]
    engine = open_database(None, data_dir)
    store = StudyStore(engine, data_dir / "instances")
    out = []
    for i in range(start, start + n):
        patient = f"{prefix}{i % patients:04d}"
        ds = cr_instance(images[i], patient, generate_uid())
        store.store(ds, calling_ae="MODALITY", peer="test")
        out.append(Finding(ds.StudyInstanceUID, ds.SOPInstanceUID, ["malignant", "normal, benign"][labels[i]],
                           patient, images[i]))  # fmt: skip
    engine.dispose()
    return out


def record(data_dir: Path, findings: list[Finding], model: str, checksum: str, first: int = 0) -> None:
    """One verdict per finding, cycling agree / disagree / edit so that every kind reaches the reader's label."""
    from medsight.review.verdicts import record_verdict
    from medsight.serving.database import open_database

    engine = open_database(None, data_dir)
    other = {"malignant": "normal, benign", "normal, benign": "malignant"}
    for i, f in enumerate(findings, start=first):
        kind = ("agree", "disagree", "edit")[i % 3]
        ai_label = f.label if kind == "agree" else other[f.label]
        record_verdict(
            engine, study_uid=f.study_uid, finding_id=f"{model}-1/{i}", model=model, model_version="0.1",
            bundle_checksum=checksum, label=ai_label, probability=0.7, ai_positive=ai_label == "malignant",
            reader="dr_a", role="radiologist", decision=kind, reader_label=f.label,
            reader_positive=f.label == "malignant", edit={"label": f.label} if kind == "edit" else None,
            source_sop_uids=[f.sop_uid],
        )  # fmt: skip
    engine.dispose()


def read_back(path: Path) -> np.ndarray:
    return pydicom.dcmread(path).pixel_array
