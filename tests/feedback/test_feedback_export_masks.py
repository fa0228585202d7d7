"""``medsight feedback export`` of a segmentation route: a tiny 2D segmentation bundle (trained for seconds on real
BUSI pairs) runs in the service on single-slice DICOM studies (the shared CT sample, restudied under made-up
patients); readers agree, disagree and draw masks through the review backend; the export is an image/mask pairs
folder the segmentation task opens with the frozen split, whose labels are the readers' and which names no patient,
and ``train --init`` fine-tunes on it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from medsight.cli import main
from medsight.data.folds import stored_folds
from medsight.data.segmentation import load_case, open_dataset
from medsight.feedback.export import NOT_DRAWN
from medsight.review.api import VerdictIn, submit_verdict
from medsight.review.verdicts import list_verdicts
from medsight.serving.config import load_config
from medsight.serving.security import Principal
from medsight.serving.service import Service
from medsight.serving.worker import INFERENCE, run_inference
from medsight.tasks import segmentation
from medsight.tasks.segmentation import SegmentationOptions
from runtime.test_stream import TINY_2D, _busi_pairs

CT_SLICE = ("dicom_samples", "pydicom_test_files", "CT_small.dcm")  # one 128x128 CT slice with patient geometry
KEY = "5e" * 32  # a fixed feedback key: the frozen sides of these patients are the same on every run
PATIENTS = [f"SEGPAT{i:02d}" for i in range(10)]
READER = Principal("dr_a", "radiologist", "test-token")


@pytest.fixture(scope="module")
def site(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("seg_site")
    pairs = _busi_pairs(shared_data / "busi", tmp / "busi_pairs", 6)
    plan = tmp / "plan.json"
    plan.write_text(json.dumps(TINY_2D))
    bundle = tmp / "bundle"
    segmentation.TASK.train(str(pairs), bundle, SegmentationOptions(epochs=1, plan=plan))
    cfg = tmp / "site.toml"
    cfg.write_text(
        f'[service]\ndata_dir = "{tmp / "data"}"\n[dicom]\nallow_any = true\n[[routes]]\nname = "seg"\n'
        f'bundle = "{bundle}"\nmatch.modality = ["CT"]\n'
    )
    service = Service(load_config(cfg))
    key = tmp / "data" / "feedback" / "seg" / "key"
    key.parent.mkdir(parents=True)
    key.write_text(KEY + "\n")
    os.chmod(key, 0o600)
    studies: list[pydicom.Dataset] = []
    for patient in PATIENTS:
        ds = pydicom.dcmread(shared_data.joinpath(*CT_SLICE))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID, ds.PatientName = patient, f"DOE^{patient}"
        shifted = np.roll(ds.pixel_array, 9 * len(studies), axis=1)  # each study its own image
        ds.PixelData = np.ascontiguousarray(shifted).tobytes()
        service.store.store(ds, calling_ae="MODALITY", peer="test")
        assert service.complete_study(str(ds.StudyInstanceUID))
        job = service.queue.claim("test-worker", kinds=[INFERENCE])
        assert job is not None
        service.queue.complete(job.id, run_inference(service.ctx, job), worker="test-worker")
        studies.append(ds)
    try:
        yield {"tmp": tmp, "bundle": bundle, "plan": plan, "config": cfg, "service": service, "studies": studies}
    finally:
        service.engine.dispose()


def _finding(service: Service, study: str) -> Any:
    from medsight.review.worklist import read_findings

    (finding,) = read_findings(service.store, service.ctx.results_dir, study)
    return finding


def _ai_label(service: Service, study: str) -> np.ndarray:
    """The AI's label map of the study's one result, rows first (its NIfTI holds x = column first)."""
    folder = next((service.ctx.results_dir / study).glob("seg-*"))
    entry = json.loads((folder / "predictions.json").read_text())["predictions"][0]
    return np.asarray(nib.load(str(folder / entry["files"]["mask"])).dataobj)[:, :, 0].T  # type: ignore[attr-defined]


def _png(mask: np.ndarray) -> str:
    import base64
    import io

    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _export(site: dict[str, Any], out: Path) -> dict[str, Any]:
    args = ["-q", "feedback", "export", "--model", "seg", "--out", str(out), "--config", str(site["config"])]
    assert main(args) == 0
    return dict(json.loads((out / "export.json").read_text()))


def test_segmentation_export_is_a_pairs_folder_with_the_readers_masks(site: dict[str, Any], tmp_path: Path) -> None:
    service, studies = site["service"], site["studies"]
    drawn = np.zeros((128, 128), bool)
    drawn[20:60, 30:90] = True  # the reader's own outline, unlike anything the model drew
    decisions = {}
    for i, ds in enumerate(studies):
        study = str(ds.StudyInstanceUID)
        finding = _finding(service, study)
        kind: Literal["agree", "disagree", "edit"] = ("edit", "agree", "disagree", "edit", "agree")[i % 5]
        edit = {"mask": {str(ds.SOPInstanceUID): _png(drawn)}} if kind == "edit" else None
        submit_verdict(service.review_backend(), READER, study,
                       VerdictIn(finding_id=finding.finding_id, decision=kind, edit=edit))  # fmt: skip
        decisions[study] = (kind, finding.positive)
    assert len(list_verdicts(service.engine, model="seg")) == len(studies)

    out = tmp_path / "export"
    summary = _export(site, out)
    not_drawn = sum(1 for kind, positive in decisions.values() if kind == "disagree" and not positive)
    assert summary["cases"] == len(studies) - not_drawn
    assert summary["left_out"] == ({NOT_DRAWN: not_drawn} if not_drawn else {})

    # the segmentation task reads the folder, with the frozen split as fold 0 and no test cases
    ds_read = open_dataset(out)
    ids = [c.id for c in ds_read.train]
    assert ds_read.layout == "pairs" and len(ids) == summary["cases"] and not ds_read.test
    folds = stored_folds(out, ids)
    assert folds.source.endswith("medsight_splits.json") and folds.test == []
    cases = {c["case"]: c for c in json.loads((out / "cases.json").read_text())}
    assert folds.train_val(0)[1] == sorted(c for c, row in cases.items() if row["split"] == "val")
    assert folds.train_val(0)[0] == sorted(c for c, row in cases.items() if row["split"] == "train")
    assert folds.train_val(0)[1] and folds.train_val(0)[0]  # both sides hold cases with this key
    split_file = service.data_dir / "feedback" / "seg" / "split.json"
    assert set(json.loads(split_file.read_text())["assignments"]) == {row["patient_id"] for row in cases.values()}

    # each exported label map is the reader's verdict applied to the AI's mask; the image is the stored slice
    pixels_of = {}
    for ds in studies:
        stored = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        pixels_of[stored.astype(np.float32).tobytes()] = str(ds.StudyInstanceUID)
    seen = set()
    for case in ds_read.train:
        loaded = load_case(ds_read, case)
        study = pixels_of[loaded.image[0].tobytes()]  # the stored pixels, rescaled as the service reads them
        seen.add(study)
        kind, positive = decisions[study]
        assert loaded.label is not None
        if kind == "edit":
            np.testing.assert_array_equal(loaded.label, drawn.astype(np.int64))
        elif kind == "agree":
            np.testing.assert_array_equal(loaded.label, _ai_label(service, study))
        else:  # disagree with a positive finding: the structure is removed
            assert positive and not loaded.label.any()
    assert len(seen) == summary["cases"]
    # nothing in the data set names a patient or a UID
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"SEGPAT" not in data and b"DOE" not in data
            assert not any(str(ds.StudyInstanceUID).encode() in data or str(ds.SOPInstanceUID).encode() in data
                           for ds in studies)  # fmt: skip

    # a later export keeps every side; then the loop closes: fine-tune from the bundle in service on it
    again = _export(site, tmp_path / "again")
    assert again["frozen_split"]["new_units"] == 0 and again["by_split"] == summary["by_split"]
    child = tmp_path / "child"
    args = ["-q", "train", str(out), "--init", str(site["bundle"]), "--out", str(child), "--epochs", "1",
            "--plan", str(site["plan"])]  # fmt: skip
    assert main(args) == 0
    meta = json.loads((child / "bundle.json").read_text())
    assert meta["parent"]["checksum"] and meta["task"] == "segmentation"


def test_a_3d_series_is_left_out_with_its_reason(site: dict[str, Any], tmp_path: Path) -> None:
    from medsight.feedback.export import SERIES_3D, _locate

    service = site["service"]
    ds = site["studies"][0]
    verdict = list_verdicts(service.engine, study_uid=str(ds.StudyInstanceUID))[0]
    several = type("V", (), {"source_sop_uids": (str(ds.SOPInstanceUID), "1.2.3.4")})()
    assert _locate(service.store, service.ctx.results_dir, verdict.study_uid, verdict.finding_id, several) == SERIES_3D
    found = _locate(service.store, service.ctx.results_dir, verdict.study_uid, verdict.finding_id, verdict)
    assert not isinstance(found, str) and found.label_index == 1
