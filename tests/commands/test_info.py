"""``medsight info``: summary of a real study, no identifiers unless asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from medsight.cli import main

PHI = ["Albus", "Dumbledore", "PGBM-003", "3083564386975476", "1.3.6.1.4.1.14519.5.2.1"]


@pytest.fixture(scope="module")
def study(shared_data: Path) -> Path:
    return shared_data / "udacity_brain_mr_dicom"


def test_info_summarises_without_identifiers(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(study)]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "88 DICOM files in 1 study, 2 other files skipped" in out
    for description in ["T1post", "T1pre_reg", "FLAIR_reg", "T2_reg"]:
        assert description in out
    assert out.count("[MR]") == 4
    assert out.count("size: 280 x 320 x 22") == 4
    assert "spacing: 0.6875 x 0.6875 x 6.5 mm" in out
    assert "oblique axial" in out
    for value in PHI:
        assert value not in out + captured.err


def test_info_shows_identifiers_when_asked(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(study), "--show-phi"]) == 0
    out = capsys.readouterr().out
    assert "patient_name: Albus^Dumbledore" in out
    assert "patient_id: PGBM-003" in out
    assert "1.3.6.1.4.1.14519.5.2.1" in out


def test_info_json(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(study / "Study3" / "11-T1post-18670"), "--json"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out)
    series = summary["studies"][0]["series"][0]
    assert series["modality"] == "MR" and series["size"] == [280, 320, 22]
    assert series["geometry"]["spacing_mm"] == pytest.approx([0.6875, 0.6875, 6.5], abs=1e-4)
    assert all(value not in out for value in PHI)


def test_info_on_mixed_samples_explains_what_has_no_geometry(
    shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", str(shared_data / "dicom_samples" / "pydicom_data")]) == 0
    out = capsys.readouterr().out
    assert "geometry: none" in out  # ultrasound, radiograph, emri_small
    assert "duplicate files ignored: 1" in out  # 693_J2KR and 693_UNCR are one SOP instance
    assert "Citizen" not in out and "CQ500" not in out


def test_info_bad_input_is_one_line_and_exit_2(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no such file" in err
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["info", str(tmp_path)]) == 2
    assert "no DICOM objects found" in capsys.readouterr().err
    ds = pydicom.dcmread(shared_data / "udacity_brain_mr_dicom" / "Study3" / "11-T1post-18670" / "000000.dcm")
    broken = tmp_path / "broken.dcm"
    ds.save_as(broken)
    broken.write_bytes(broken.read_bytes()[:-1000])
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "broken.dcm" in err and "truncated" in err
    assert all(value not in err for value in PHI)


def test_info_on_a_folder_reports_unreadable_files_beside_the_readable_ones(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One broken file in a folder must not hide the rest: the summary is printed, each unreadable file is named
    with its problem, and the exit status (1) says that not everything could be read."""
    source = shared_data / "udacity_brain_mr_dicom" / "Study3" / "11-T1post-18670"
    good = tmp_path / "good.dcm"
    good.write_bytes((source / "000000.dcm").read_bytes())
    broken = tmp_path / "broken.dcm"
    broken.write_bytes((source / "000001.dcm").read_bytes()[:-1000])
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["info", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "1 DICOM files in 1 study, 1 other files skipped, 1 unreadable" in captured.out
    assert "[MR]" in captured.out and "size: 280 x 320 x 1" in captured.out
    assert "broken.dcm: truncated DICOM file" in captured.out
    assert all(value not in captured.out + captured.err for value in PHI)
    assert main(["info", str(tmp_path), "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["dicom_files"] == 1 and summary["skipped_files"] == 1
    assert [u["file"] for u in summary["unreadable_files"]] == [str(broken)]
    assert "truncated" in summary["unreadable_files"][0]["problem"]


def test_a_truncated_file_is_one_line_without_the_librarys_warning(shared_data: Path, tmp_path: Path) -> None:
    """pydicom warns ("UserWarning: End of file reached before delimiter ...", with a line of its source) before
    medsight names the problem; the user sees medsight's line only (``--debug`` keeps everything)."""
    import subprocess
    import sys

    sample = shared_data / "dicom_samples" / "pydicom_data" / "US1_J2KR.dcm"
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(sample.read_bytes()[:3000])
    run = subprocess.run(
        [sys.executable, "-m", "medsight.cli", "info", str(cut)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2
    assert "UserWarning" not in run.stderr and "warn_and_log" not in run.stderr
    assert run.stderr.strip().splitlines() == [
        f"medsight info: error: {cut}: corrupt or truncated DICOM file: no SOP Class/Instance UID"
    ]


def test_a_folder_where_nothing_reads_names_each_file_and_its_problem(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = shared_data / "dicom_samples" / "pydicom_test_files" / "CT_small.dcm"
    data = source.read_bytes()
    for name, cut in (("a.dcm", 0.5), ("b.dcm", 0.9)):
        (tmp_path / name).write_bytes(data[: int(len(data) * cut)])
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no DICOM objects found (0 other files, 2 unreadable DICOM files)" in err
    for name in ("a.dcm", "b.dcm"):  # once only a count: which files, and why, stayed unsaid
        line = next(line for line in err.splitlines() if name in line)
        assert "truncated DICOM file" in line


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    env.pop("PYTHONIOENCODING", None)
    return subprocess.run(
        [sys.executable, "-m", "medsight.cli", *args], capture_output=True, text=True, env=env, **kwargs
    )  # type: ignore[call-overload]


def test_a_file_name_that_is_not_utf8_is_printed_not_a_crash(shared_data: Path, tmp_path: Path) -> None:
    """Latin-1 names (``Müller.dcm`` from a Windows or CD export) once ended info with a UnicodeEncodeError traceback
    under a UTF-8 locale, whose stdout is strict."""
    source = shared_data / "dicom_samples" / "pydicom_test_files" / "CT_small.dcm"
    data = source.read_bytes()
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "ok.dcm").write_bytes(data)
    with open(os.path.join(os.fsencode(folder), b"M\xfcller.dcm"), "wb") as fh:
        fh.write(data[: len(data) // 2])
    run = _run(["info", str(folder)])
    assert "Traceback" not in run.stderr and run.returncode == 1, run.stderr  # 1: one file could not be read
    assert "M\\udcfcller.dcm: truncated DICOM file" in run.stdout


def test_a_closed_pipe_stops_quietly(shared_data: Path) -> None:
    """``medsight info DIR | head`` once dumped a BrokenPipeError traceback."""
    env = {**os.environ}
    proc = subprocess.Popen(
        [sys.executable, "-m", "medsight.cli", "info", str(shared_data / "dicom_samples")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader goes away before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err
