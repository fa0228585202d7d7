"""``medsight deid`` on messy input (audit): a cut-short non-image object, input holding no DICOM at all, and
file names that are not valid UTF-8."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pydicom
import pytest

from medsight.cli import main
from medsight.errors import MedsightError
from medsight.io.dicom import read_header

KEY_HEX = "cd" * 32
CT = "pydicom_test_files/CT_small.dcm"
MR = "pydicom_test_files/MR_small.dcm"
RTPLAN = "pydicom_test_files/rtplan.dcm"
#: b"M\xfcller.dcm": "Müller.dcm" in Latin-1, as a Windows or CD export names it; not valid UTF-8.
LATIN1_NAME = os.fsdecode(b"M\xfcller.dcm")


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSIGHT_DEID_KEY", KEY_HEX)


def deid(src: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "deid",
            str(src),
            str(out),
            "--audit-log",
            str(out.parent / "audit.log"),
            "--workers",
            "1",
            "--no-progress",
            *extra,
        ]
    )


def report(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "deid_report.json").read_text())


def cut(source: Path, target: Path, fraction: float) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


# --- 1. a truncated object without pixel data --------------------------------------------------------


def test_truncated_rt_plan_is_rejected_like_info_rejects_it(shared_data: Path, tmp_path: Path) -> None:
    """An RT Plan cut to 70% has no pixel data to find short: the completeness check of the reading code
    (the one `medsight info` uses) must refuse it, with the same problem, and nothing is written for it."""
    src = tmp_path / "in"
    src.mkdir()
    cut(shared_data / "dicom_samples" / RTPLAN, src / "rtplan_cut.dcm", 0.7)
    with pytest.raises(MedsightError) as info:
        read_header(src / "rtplan_cut.dcm")
    assert "truncated" in info.value.problem
    out = tmp_path / "out"
    assert deid(src, out) == 1
    rep = report(out)
    assert rep["counts"]["rejected"] == 1 and rep["counts"]["written"] == 0
    assert [r["reason"] for r in rep["rejected"]] == [info.value.problem]
    assert not list(out.rglob("*.dcm"))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_complete_non_image_objects_are_still_written(shared_data: Path, tmp_path: Path, workers: str) -> None:
    """The check does not refuse whole files: the intact RT Plan, RT Dose and RT Struct are written beside the cut
    one, which alone is rejected (also when workers read the files)."""
    src = tmp_path / "in"
    src.mkdir()
    for name in (RTPLAN, "pydicom_test_files/rtdose.dcm", "pydicom_test_files/rtstruct.dcm"):
        shutil.copy(shared_data / "dicom_samples" / name, src / Path(name).name)
    cut(shared_data / "dicom_samples" / RTPLAN, src / "rtplan_cut.dcm", 0.7)
    out = tmp_path / "out"
    assert deid(src, out, "--workers", workers) == 1
    rep = report(out)
    names = sorted(p.name for p in src.iterdir())
    assert {names[r["index"]] for r in rep["rejected"]} == {"rtplan_cut.dcm"}
    assert rep["counts"]["written"] == 3 and len(list(out.rglob("*.dcm"))) == 3


# --- 2. input holding no DICOM object ----------------------------------------------------------------


def _empty(src: Path, shared_data: Path) -> Path:
    src.mkdir()
    return src


def _text_files(src: Path, shared_data: Path) -> Path:
    src.mkdir()
    (src / "README.txt").write_text("export notes")
    shutil.copy(shared_data / "dicom_samples" / "MD5SUMS", src / "MD5SUMS")
    return src


def _single_readme(src: Path, shared_data: Path) -> Path:
    src.mkdir()
    (src / "README").write_text("export notes")
    return src / "README"


def _dicomdir_only(src: Path, shared_data: Path) -> Path:
    """A CD folder whose images are gone: only the DICOMDIR, which is never copied, is left."""
    from pydicom.fileset import FileSet

    fs = FileSet()
    fs.add(pydicom.dcmread(shared_data / "dicom_samples" / CT))
    fs.write(src)
    for p in src.rglob("*"):
        if p.is_file() and p.name != "DICOMDIR":
            p.unlink()
    return src


@pytest.mark.parametrize(
    "make",
    [_empty, _text_files, _single_readme, _dicomdir_only],
    ids=["empty-folder", "text-files", "single-readme", "dicomdir-only"],
)
def test_input_without_dicom_is_a_one_line_error(
    shared_data: Path, tmp_path: Path, make: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make(tmp_path / "in", shared_data)
    out = tmp_path / "out"
    assert deid(src, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(src) in err[0] and "no DICOM objects" in err[0]
    assert not out.exists()  # nothing written: no report, no ledger
    assert not (tmp_path / "audit.log").exists()


def test_a_refused_run_creates_no_key_file(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The key is made on the first run that writes something: a refused run (here, input holding no DICOM) leaves
    no new secret behind in the user's home or at ``--key-file``. A run that writes makes it, 0600."""
    monkeypatch.delenv("MEDSIGHT_DEID_KEY")
    key_file = tmp_path / "secret" / "deid.key"
    src = _text_files(tmp_path / "in", shared_data)
    assert deid(src, tmp_path / "out", "--key-file", str(key_file)) == 2
    assert "no DICOM objects" in capsys.readouterr().err
    assert not key_file.exists() and not key_file.parent.exists()
    shutil.copy(shared_data / "dicom_samples" / CT, src / "ct.dcm")
    assert deid(src, tmp_path / "out", "--key-file", str(key_file)) == 0
    assert key_file.is_file() and key_file.stat().st_mode & 0o777 == 0o600
    assert len(bytes.fromhex(key_file.read_text().strip())) == 32


def test_input_with_only_unreadable_dicom_is_still_run_and_rejected(shared_data: Path, tmp_path: Path) -> None:
    """A file that claims to be DICOM is DICOM input: it is reported as rejected (status 1), not refused."""
    src = tmp_path / "in"
    src.mkdir()
    cut(shared_data / "dicom_samples" / CT, src / "ct_cut.dcm", 0.5)
    out = tmp_path / "out"
    assert deid(src, out) == 1
    assert report(out)["counts"]["rejected"] == 1


# --- 3. file names that are not valid UTF-8 ----------------------------------------------------------


def test_latin1_file_names_do_not_stop_the_report_or_audit(shared_data: Path, tmp_path: Path) -> None:
    """With ``--report`` outside OUT the report lists input paths; a name that is not UTF-8 is listed escaped
    (``M\\xfcller.dcm``) and the HTML report and audit line are still written. The report in OUT names no path."""
    src = tmp_path / "in"
    (src / "good").mkdir(parents=True)
    (src / "bad").mkdir()
    shutil.copy(shared_data / "dicom_samples" / CT, src / "good" / LATIN1_NAME)
    shutil.copy(shared_data / "dicom_samples" / MR, src / "bad" / "ok.dcm")
    cut(shared_data / "dicom_samples" / MR, src / "bad" / LATIN1_NAME, 0.5)
    out, rep_dir = tmp_path / "out", tmp_path / "rep"
    assert deid(src, out, "--report", str(rep_dir)) == 1  # the cut file is rejected
    html = (rep_dir / "deid_report.html").read_text(encoding="utf-8")
    data = report(rep_dir)
    paths = {i["path"]: i["status"] for i in data["inputs"]}
    assert paths == {"bad/M\\xfcller.dcm": "rejected", "bad/ok.dcm": "written", "good/M\\xfcller.dcm": "written"}
    assert "bad/M\\xfcller.dcm" in html
    line = json.loads((tmp_path / "audit.log").read_text().splitlines()[-1])
    assert line["written"] == 2 and line["rejected"] == 1 and "ller" not in json.dumps(line)
    # a second run into another OUT with the report there: no path at all
    out2 = tmp_path / "out2"
    assert deid(src, out2) == 1
    for name in ("deid_report.json", "deid_report.html"):
        assert "ller" not in (out2 / name).read_text(encoding="utf-8")
