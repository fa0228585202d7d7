"""dciodvfy finds no error in the de-identified real files that it did not find in the originals."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from medsight.privacy.pseudonyms import Pseudonymizer
from medsight.privacy.run import deidentify

KEY = bytes(range(32))
SAMPLES = ["pydicom_test_files/CT_small.dcm", "pydicom_test_files/MR_small.dcm",
           "pydicom_test_files/examples_overlay.dcm", "pydicom_test_files/examples_palette.dcm",
           "pydicom_test_files/examples_ybr_color.dcm", "pydicom_test_files/liver_1frame.dcm",
           "pydicom_test_files/reportsi.dcm", "pydicom_test_files/rtstruct.dcm",
           "pydicom_data/693_UNCR.dcm", "pydicom_data/MR2_J2KR.dcm", "pydicom_data/RG3_J2KR.dcm",
           "pydicom_data/US1_J2KR.dcm", "pydicom_data/OBXXXX1A_rle.dcm", "pydicom_data/emri_small.dcm"]


def dciodvfy() -> str:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.fail("dciodvfy not found: apt-get install dicom3tools")
    return exe


def errors(exe: str, path: Path) -> set[str]:
    """Error lines, with values (UIDs, numbers) blanked so that renamed UIDs compare equal."""
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    return {re.sub(r"<[^>]*>|[0-9][0-9.]*", "#", line.strip()) for line in lines if line.startswith("Error")}


@pytest.mark.parametrize("options", [(), ("retain_modified_dates", "retain_patient_characteristics",
                                          "clean_descriptors", "clean_structured_content", "clean_graphics",
                                          "retain_device_identity", "retain_safe_private")],
                         ids=["basic", "options"])
def test_no_new_dciodvfy_errors(shared_data: Path, tmp_path: Path, options: tuple[str, ...]) -> None:
    exe = dciodvfy()
    folder = tmp_path / "in"
    folder.mkdir()
    sources = [shared_data / "dicom_samples" / s for s in SAMPLES]
    for series in sorted((shared_data / "udacity_brain_mr_dicom" / "Study3").iterdir()):
        sources.append(sorted(series.glob("*.dcm"))[0])
    for i, s in enumerate(sources):
        shutil.copy(s, folder / f"{i:02d}_{s.name}")
    out = tmp_path / "out"
    # the samples include US and CR: accepted here, since this test is about the header's validity
    result = deidentify(folder, out, key=KEY, options=options, audit_log=None, progress=False,
                        accept_burned_in=True)
    assert result.ok, result.report.rejected
    by_input = {r.input: r.output for r in result.results}
    problems = {}
    for i, s in enumerate(sources):
        output = by_input[f"{i:02d}_{s.name}"]
        assert output is not None
        new = errors(exe, out / output) - errors(exe, s)
        if new:
            problems[s.name] = sorted(new)
    assert not problems
    assert Pseudonymizer(KEY).uid("x") != "x"
