"""Text burned into the pixels of the shared samples is read by the OCR option, quarantined or masked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medsight.cli import main
from medsight.privacy import ocr
from needs import unavailable

SAMPLES = ("pydicom_data/693_UNCR.dcm", "pydicom_data/MR2_J2KR.dcm", "pydicom_test_files/examples_overlay.dcm",
           "pydicom_data/explicit_VR-UN.dcm")


@pytest.fixture(autouse=True)
def _tesseract(monkeypatch: pytest.MonkeyPatch) -> None:
    if not ocr.available():
        unavailable("tesseract not found: apt-get install tesseract-ocr (make tools)")
    monkeypatch.setenv("MEDSIGHT_DEID_KEY", "cd" * 32)


def test_recall_on_text_burned_into_the_samples(shared_data: Path) -> None:
    frames = [pydicom.dcmread(shared_data / "dicom_samples" / s).pixel_array for s in SAMPLES]
    result = ocr.measure(frames)
    assert result["texts_burned"] == 16
    assert result["recall"] >= 0.9 and result["ink_covered"] >= 0.9, result  # measured 1.0 and 1.0


def test_detect_text_quarantines_or_masks_a_file_the_header_calls_clean(shared_data: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(shared_data / "dicom_samples" / "pydicom_data/693_UNCR.dcm")
    frame, inks = ocr.burn_text(ds.pixel_array, [("DOE^JOHN 1971-02-03", 8, 8, 20)])
    ds.PixelData = frame.tobytes()
    src = tmp_path / "in"
    src.mkdir()
    ds.save_as(src / "ct.dcm")
    common = ["--audit-log", str(tmp_path / "a.log"), "--workers", "1", "--no-progress"]
    assert main(["deid", str(src), str(tmp_path / "plain"), *common]) == 0  # a CT: the header raises no flag
    assert main(["deid", str(src), str(tmp_path / "flag"), "--detect-text", "flag", *common]) == 3
    flagged = json.loads((tmp_path / "flag" / "deid_report.json").read_text())
    assert "OCR read" in flagged["quarantined"][0]["reason"]
    out = tmp_path / "mask"
    assert main(["deid", str(src), str(out), "--detect-text", "mask", "--accept-burned-in-risk", *common]) == 0
    masked = pydicom.dcmread(next(out.rglob("*.dcm")))
    top = frame.max()
    assert not (masked.pixel_array[inks[0]] == top).any()  # every burned pixel blanked
    assert "113101" in [i.CodeValue for i in masked.DeidentificationMethodCodeSequence]
    outside = ~ocr.covered_by(ocr.find_text(frame), frame.shape)
    assert np.array_equal(masked.pixel_array[outside], frame[outside])  # the rest of the image untouched
