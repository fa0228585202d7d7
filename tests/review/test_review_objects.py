"""The reader's SR and SEG on real sample images: valid by dciodvfy (no errors), and saying what the reader did."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medsight.errors import MedsightError
from medsight.review.reader_objects import ReaderBox, decode_mask, mask_png, write_reader_seg, write_reader_sr
from medsight.serving.dicom_objects import Finding, write_sr
from needs import tool

SAMPLES = ("pydicom_data/RG3_J2KR.dcm", "pydicom_test_files/CT_small.dcm", "pydicom_test_files/MR_small.dcm")


def _errors(path: Path) -> list[str]:
    run = subprocess.run([tool("dciodvfy", "dicom3tools"), str(path)], capture_output=True, text=True)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("sample", SAMPLES)
def test_reader_sr_and_seg_pass_dciodvfy(sample: str, shared_data: Path, tmp_path: Path) -> None:
    source = pydicom.dcmread(shared_data / "dicom_samples" / sample)
    ai = pydicom.dcmread(write_sr([Finding("pneumonia", 0.8)], [source], tmp_path / "ai.dcm"))
    sop = str(source.SOPInstanceUID)
    sr_path = write_reader_sr(
        ai,
        [source],
        tmp_path / "reader.dcm",
        reader="dr.alice",
        decision="edit",
        ai_label="pneumonia",
        reader_label="normal",
        comment="no consolidation",
        finding_id="cr-1/0",
        boxes=[ReaderBox(sop, 1, 2, 10, 12, "nodule")],
    )
    assert _errors(sr_path) == []
    sr = pydicom.dcmread(sr_path)
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.VerificationFlag == "VERIFIED"
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "dr.alice^"
    pred = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert pred.ReferencedSOPInstanceUID == ai.SOPInstanceUID
    text = str(sr)
    for expected in ("Person", "dr.alice", "AI finding edited by reader", "no consolidation", "Comment"):
        assert expected in text, expected
    mask = np.zeros((int(source.Rows), int(source.Columns)), bool)
    mask[5:20, 3:30] = True
    seg_path = write_reader_seg({sop: mask}, [source], tmp_path / "seg.dcm", reader="dr.alice", label="pneumonia")
    assert _errors(seg_path) == []
    seg = pydicom.dcmread(seg_path)
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    assert int(np.asarray(seg.pixel_array).sum()) == int(mask.sum())


def test_agree_and_disagree_use_dicom_codes_and_no_ai_sr_is_allowed(shared_data: Path, tmp_path: Path) -> None:
    source = pydicom.dcmread(shared_data / "dicom_samples" / SAMPLES[0])
    for decision, code in (("agree", "122775"), ("disagree", "122776")):
        path = write_reader_sr(
            None,
            [source],
            tmp_path / f"{decision}.dcm",
            reader="bob",
            decision=decision,
            ai_label="pneumonia",
            reader_label="pneumonia",
        )
        assert _errors(path) == []
        ds = pydicom.dcmread(path)
        assert code in str(ds) and "PredecessorDocumentsSequence" not in ds
    with pytest.raises(MedsightError, match="decision must be"):
        write_reader_sr(
            None, [source], tmp_path / "x.dcm", reader="bob", decision="maybe", ai_label="a", reader_label="a"
        )


def test_masks_round_trip_and_bad_masks_are_refused() -> None:
    import base64

    mask = np.zeros((6, 8), bool)
    mask[1:3, 2:5] = True
    encoded = base64.b64encode(mask_png(mask)).decode()
    assert (decode_mask(encoded, 6, 8) == mask).all()
    assert (decode_mask("data:image/png;base64," + encoded, 6, 8) == mask).all()
    with pytest.raises(MedsightError, match="is 8x6 but its image is 8x7"):
        decode_mask(encoded, 7, 8)
    with pytest.raises(MedsightError, match="not a base64-encoded PNG"):
        decode_mask("bm90IGEgcG5n", 6, 8)
