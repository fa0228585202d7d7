"""medsight's DICOM writer (raw elements copied, the file meta encoded directly) writes pydicom's bytes."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pydicom
import pytest

from medsight.io.dicom_write import ensure_file_meta, save
from medsight.privacy.engine import Deidentifier
from medsight.privacy.run import problem

KEY = bytes(range(32))


def _samples(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "dicom_samples").rglob("*.dcm"))


@pytest.mark.parametrize("options", [(), ("retain_safe_private", "clean_descriptors", "retain_uids")],
                         ids=["basic", "options"])
def test_written_bytes_are_pydicoms_for_every_sample(shared_data: Path, tmp_path: Path,
                                                     options: tuple[str, ...]) -> None:
    compared = 0
    for path in _samples(shared_data):
        try:
            ds = pydicom.dcmread(path)
        except Exception:
            continue  # the deliberately damaged samples: test_deid_cli covers how they are reported
        if problem(ds) is not None:
            continue
        Deidentifier(KEY, options).apply(ds)
        ensure_file_meta(ds)
        expected = io.BytesIO()
        copy.deepcopy(ds).save_as(expected, enforce_file_format=True)
        out = tmp_path / f"{path.stem}.dcm"
        save(ds, out)
        assert out.read_bytes() == expected.getvalue(), path.name
        compared += 1
    assert compared >= 15
