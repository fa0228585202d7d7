"""Sources whose patient attributes are not in their VR's form (audit): PatientBirthDate "1970-03-15" (DA wants
YYYYMMDD), PatientSex "Male" (CS, enumerated M/F/O), as some exporters write them. highdicom refused to copy them,
so predict wrote no SEG, SR or SC, and its one-line error quoted the birth date. Results are now written with the
values in their standard form (or empty where no standard form can be read), and no failure message quotes a
patient attribute of the sources."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from medsight.errors import MedsightError
from medsight.io.dicom import Volume, read_datasets, read_series
from medsight.serving.dicom_objects import (
    Finding,
    conformant_patient_attributes,
    scrub_source_values,
    write_secondary_capture,
    write_seg,
    write_sr,
)
from serving.test_dicom_objects import dciodvfy_errors


@pytest.fixture(scope="module")
def series(shared_data: Path) -> tuple[Volume, list[Dataset]]:
    volume = read_series(shared_data / "udacity_brain_mr_dicom" / "Study3" / "11-T1post-18670")
    return volume, read_datasets(volume.files)


def _messy(datasets: list[Dataset], birth: str, sex: str) -> list[Dataset]:
    out = []
    for ds in datasets:
        messy = copy.copy(ds)
        messy.PatientName = "DOE^JANE"
        messy.PatientBirthDate = birth
        messy.PatientSex = sex
        out.append(messy)
    return out


@pytest.mark.parametrize(
    ("birth", "sex", "expected"),
    [
        ("1970-03-15", "Male", ("19700315", "M")),
        ("1970/03/15", "female", ("19700315", "F")),
        ("15.03.1970", "X", ("", "")),  # day first: not read as a date, a guess would be wrong half the time
        ("19700315", "O", ("19700315", "O")),  # conformant values are kept as they are
    ],
)
def test_results_are_written_with_patient_attributes_in_standard_form(
    series: tuple[Volume, list[Dataset]], tmp_path: Path, birth: str, sex: str, expected: tuple[str, str]
) -> None:
    volume, datasets = series
    sources = _messy(datasets, birth, sex)
    mask = np.zeros(volume.array.shape, dtype=np.uint8)
    mask[5:8, 100:140, 80:120] = 1
    outputs = [
        write_seg(mask, sources, ["tumour"], tmp_path / "seg.dcm"),
        write_sr([Finding("tumour", 0.9)], sources, tmp_path / "sr.dcm", "net", "1"),
        write_secondary_capture(np.zeros((32, 32, 3), np.uint8), sources[0], tmp_path / "sc.dcm"),
    ]
    for out in outputs:
        written = pydicom.dcmread(out)
        assert (written.PatientBirthDate, written.PatientSex) == expected, out.name
        assert str(written.PatientName) == "DOE^JANE"
        assert dciodvfy_errors(out) == [], out.name
    assert sources[0].PatientBirthDate == birth  # the caller's datasets are left as they were


def test_conformant_copies_leave_valid_sources_untouched(series: tuple[Volume, list[Dataset]]) -> None:
    _, datasets = series
    assert all(a is b for a, b in zip(conformant_patient_attributes(datasets), datasets, strict=True))


def test_failure_messages_quote_no_patient_attribute(series: tuple[Volume, list[Dataset]]) -> None:
    _, datasets = series
    sources = _messy(datasets[:2], "1970-03-15", "Male")
    sources[0].PatientID = "MRN4711"
    text = "Unable to convert '1970-03-15' to 'DA' object for DOE^JANE (MRN4711), value 'Male'"
    scrubbed = scrub_source_values(text, sources)
    for value in ("1970-03-15", "DOE^JANE", "MRN4711", "Male"):
        assert value not in scrubbed
    assert scrubbed.startswith("Unable to convert") and "'DA' object" in scrubbed


def test_a_seg_that_cannot_be_built_names_no_patient_value(
    series: tuple[Volume, list[Dataset]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever highdicom says when it refuses a source is passed on with the sources' patient values removed (it
    quotes the value it could not convert)."""
    import highdicom as hd

    volume, datasets = series
    sources = _messy(datasets, "19700315", "M")

    def refuse(*args: object, **kwargs: object) -> None:
        raise ValueError("Unable to convert 'DOE^JANE' born '19700315' to 'PN' object")

    monkeypatch.setattr(hd.seg, "Segmentation", refuse)
    mask = np.zeros(volume.array.shape, dtype=np.uint8)
    mask[5:8, 100:140, 80:120] = 1
    with pytest.raises(MedsightError, match="cannot build DICOM SEG") as info:
        write_seg(mask, sources, ["tumour"], tmp_path / "seg.dcm")
    assert "DOE" not in str(info.value) and "19700315" not in str(info.value)
    assert not (tmp_path / "seg.dcm").exists()
