"""Fixtures of the CT path: the LIDC folder, a DICOM CT series cut from it, and a tiny nodule bundle trained here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ct_plans import TINY_PLAN, TINY_SPACING

from needs import tool


@pytest.fixture(scope="session")
def lidc_root(shared_data: Path) -> Path:
    from medsight.data import lidc

    return lidc.locate(shared_data / lidc.FOLDER, verify=True)


@pytest.fixture(scope="session")
def dciodvfy() -> str:
    return tool("dciodvfy", "dicom3tools")


@pytest.fixture(scope="session")
def lidc_series(lidc_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LIDC-IDRI-0001 as a DICOM CT series (117 slices) written by ``io.nifti_to_dicom``."""
    from medsight.io.nifti_to_dicom import SeriesIdentity, write_ct_series

    out = tmp_path_factory.mktemp("lidc_dicom") / "series"
    write_ct_series(lidc_root / "LIDC-IDRI-0001" / "ct.nii.gz", out, SeriesIdentity(patient_id="LIDC-IDRI-0001"))
    return out


@pytest.fixture(scope="session")
def nodule_bundle(lidc_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CT nodule bundle trained for one epoch of 2 iterations on LIDC-IDRI-0001's left lung (seconds): a model
    that proves the path, not one that finds nodules."""
    from medsight.data import lidc
    from medsight.tasks import segmentation
    from medsight.tasks.segmentation import SegmentationOptions
    from medsight.transforms import lung_window_normalisation

    tmp = tmp_path_factory.mktemp("nodule_bundle")
    folder = tmp / "msd"
    lidc.write_training_folder(lidc.read_case("LIDC-IDRI-0001", lidc_root), folder, TINY_SPACING)
    plan = tmp / "plan.json"
    plan.write_text(json.dumps({**TINY_PLAN, "normalisation": lung_window_normalisation()}))
    out = tmp / "bundle"
    segmentation.TASK.train(str(folder), out, SegmentationOptions(epochs=1, lr=1e-2, plan=plan, fold=0))
    return out
