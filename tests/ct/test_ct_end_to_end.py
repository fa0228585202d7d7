"""The CT path end to end: a DICOM CT series (LIDC-IDRI-0001, written from its NIfTI) goes through
``medsight predict`` with a CT nodule bundle (trained here at tiny size on the lung-window plan) and comes back as a
DICOM SEG and a TID 1500 SR that reference that series, its study, frame of reference and instances, and that
dciodvfy accepts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pydicom
import pytest

from medsight.io.dicom import read_series
from medsight.serving.dicom_objects import read_sr
from medsight.serving.provenance import bundle_checksum
from medsight.training.bundle import load_bundle
from medsight.transforms import lung_window_normalisation

MEDSIGHT = [sys.executable, "-m", "medsight"]


def dciodvfy_errors(tool: str, path: Path) -> list[str]:
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    return [x for x in (run.stdout + run.stderr).splitlines() if x.startswith("Error")]


def referenced_sops(items: pydicom.Sequence, key: str) -> set[str]:
    return {str(i.ReferencedSOPInstanceUID) for s in items for i in getattr(s, key)}


@pytest.mark.slow
def test_dicom_ct_series_in_seg_and_sr_out(
    nodule_bundle: Path, lidc_series: Path, dciodvfy: str, tmp_path: Path
) -> None:
    bundle = load_bundle(nodule_bundle)
    assert bundle.meta["plan"]["normalisation"] == lung_window_normalisation()  # HU-aware: the lung window
    assert bundle.meta["data"]["modality"] == "CT"

    out = tmp_path / "out"
    run = subprocess.run(
        [*MEDSIGHT, "predict", str(nodule_bundle), str(lidc_series), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    assert "LIDC-IDRI" not in run.stdout + run.stderr  # the patient ID never reaches the log
    (entry,) = json.loads((out / "predictions.json").read_text())["predictions"]
    mask: nib.Nifti1Image = nib.load(str(out / entry["files"]["mask"]))  # type: ignore[assignment]
    assert mask.shape == (390, 302, 117)  # the series' own grid (columns, rows, slices)

    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(lidc_series.glob("*.dcm"))]
    series_uid, study_uid = sources[0].SeriesInstanceUID, sources[0].StudyInstanceUID
    sops = {str(s.SOPInstanceUID) for s in sources}

    seg_path, sr_path = out / entry["dicom"]["seg"], out / entry["dicom"]["sr"]
    seg = pydicom.dcmread(seg_path)
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == study_uid
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [series_uid]
    assert referenced_sops(seg.ReferencedSeriesSequence, "ReferencedInstanceSequence") == sops
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["nodule"]

    sr = pydicom.dcmread(sr_path)
    assert sr.Modality == "SR" and sr.StudyInstanceUID == study_uid
    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    assert [s.SeriesInstanceUID for s in evidence.ReferencedSeriesSequence] == [series_uid]
    assert referenced_sops(evidence.ReferencedSeriesSequence, "ReferencedSOPSequence") <= sops
    # one measurement group per nodule the model found (its volume, peak probability and slices), or one for the
    # class when it found none
    findings, regions = read_sr(sr_path), entry["regions"]
    if regions:
        assert [f.label for f in findings] == [f"nodule {r['number']}" for r in regions]
        assert [f.size for f in findings] == [(pytest.approx(r["size"], rel=1e-3), "mm3") for r in regions]
        assert [f.probability for f in findings] == pytest.approx([r["peak_probability"] for r in regions], abs=1e-4)
        by_slice = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)  # the mask's 3rd axis
                    for p in read_series(lidc_series).files]
        for f, r in zip(findings, regions, strict=True):
            assert set(f.referenced_sop_instance_uids) == {by_slice[k] for k in r["slices"]}
    else:
        assert [(f.label, f.size) for f in findings] == [("nodule", None)]
    for finding in findings:
        assert finding.code[2] and 0.0 <= finding.probability <= 1.0
        assert set(finding.referenced_sop_instance_uids) <= sops and finding.referenced_sop_instance_uids
        assert bundle_checksum(nodule_bundle) in finding.model_checksum  # IHE AIR provenance

    for path in (seg_path, sr_path):
        assert dciodvfy_errors(dciodvfy, path) == [], path.name
