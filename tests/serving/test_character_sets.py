"""Results (SR, SEG, Secondary Capture, the reader's SR) for sources in any valid Specific Character Set.

highdicom copies the source's character set and refuses forms PS3.5 allows: code extensions whose first value is empty
(the default repertoire, Annex H's Japanese example) and Korean ``ISO 2022 IR 149``. Such a source once made predict
fail with "cannot build DICOM SR"; the results are now written in UTF-8 and name the patient as the source does."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medsight.review.reader_objects import write_reader_sr
from medsight.serving.dicom_objects import Finding, write_secondary_capture, write_seg, write_sr
from needs import tool

CASES = {
    "japanese": (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    "korean": (["", "ISO 2022 IR 149"], "Hong^Gildong=洪^吉洞=홍^길동"),
    "latin1": (["ISO_IR 100"], "Müller^Jürgen"),
}


def _source(shared_data: Path, tmp_path: Path, charset: list[str], name: str) -> pydicom.Dataset:
    """The CT sample with ``charset`` and a patient name in it, written and read back (as a PACS would send it)."""
    ds = pydicom.dcmread(shared_data / "dicom_samples" / "pydicom_test_files" / "CT_small.dcm")
    ds.SpecificCharacterSet = charset if len(charset) > 1 else charset[0]
    ds.PatientName = name
    path = tmp_path / "source.dcm"
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def _errors(path: Path) -> list[str]:
    run = subprocess.run([tool("dciodvfy", "dicom3tools"), str(path)], capture_output=True, text=True)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("case", sorted(CASES))
def test_results_for_any_character_set_are_valid_and_keep_the_name(
    case: str, shared_data: Path, tmp_path: Path
) -> None:
    charset, name = CASES[case]
    source = _source(shared_data, tmp_path, charset, name)
    mask = np.zeros((1, int(source.Rows), int(source.Columns)), np.uint8)
    mask[0, 20:40, 20:40] = 1
    written = [
        write_sr([Finding("nodule", 0.7)], [source], tmp_path / "sr.dcm"),
        write_seg(mask, [source], ["nodule"], tmp_path / "seg.dcm"),
        write_secondary_capture(np.zeros((int(source.Rows), int(source.Columns), 3)), source, tmp_path / "sc.dcm"),
    ]
    ai = pydicom.dcmread(written[0])
    written.append(
        write_reader_sr(
            ai,
            [source],
            tmp_path / "reader.dcm",
            reader="dr.alice",
            decision="agree",
            ai_label="nodule",
            reader_label="nodule",
            comment="",
            finding_id="ct-1/0",
        )
    )
    for path in written:
        result = pydicom.dcmread(path)
        assert str(result.PatientName) == name, path.name
        # the source's own set where highdicom takes it, UTF-8 where it does not
        assert result.SpecificCharacterSet == ("ISO_IR 100" if case == "latin1" else "ISO_IR 192"), path.name
        assert _errors(path) == [], path.name
