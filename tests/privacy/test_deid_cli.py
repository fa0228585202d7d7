"""``medsight deid``: the brain MR study end to end, bad files, path rules, keys, pixels, reports."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medsight.cli import main
from medsight.privacy.pseudonyms import Pseudonymizer

GEOMETRY = ("Rows", "Columns", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient",
            "SliceThickness", "SpacingBetweenSlices")


def md5_tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("MEDSIGHT_DEID_KEY", raising=False)
    return tmp_path / "secrets" / "deid.key"


def test_brain_mr_study(shared_data: Path, tmp_path: Path, key_file: Path) -> None:
    src = shared_data / "udacity_brain_mr_dicom"
    before = md5_tree(src)
    out, audit, reid = tmp_path / "out", tmp_path / "logs" / "audit.log", tmp_path / "secrets" / "reid.csv"
    rc = main(["deid", str(src), str(out), "--key-file", str(key_file), "--audit-log", str(audit),
               "--reid-table", str(reid), "--workers", "2", "--no-progress"])
    assert rc == 0  # MD5SUMS and SOURCE.md are not DICOM: reported as skipped; the status stays 0
    assert md5_tree(src) == before
    report = json.loads((out / "deid_report.json").read_text())
    assert report["counts"]["written"] == 88 and report["counts"]["skipped"] == 2
    assert [r["reason"] for r in report["skipped"]] == ["not DICOM", "not DICOM"]
    assert (out / "deid_report.html").read_text().startswith("<!doctype html>")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(reid.stat().st_mode) == 0o600 and "PGBM-003" in reid.read_text()
    line = json.loads(audit.read_text().splitlines()[-1])
    assert line["written"] == 88 and line["skipped"] == 2
    for text in (audit.read_text(), (out / "deid_report.json").read_text()):
        assert "PGBM" not in text and "Dumbledore" not in text and "Albus" not in text
    # pixel data and geometry unchanged, one output per input, found by the keyed UID
    pseudo = Pseudonymizer(bytes.fromhex(key_file.read_text().strip()))
    outputs = {p.stem: p for p in out.rglob("*.dcm")}
    assert len(outputs) == 88
    for f in sorted(src.rglob("*.dcm"))[::7]:
        a = pydicom.dcmread(f)
        b = pydicom.dcmread(outputs[pseudo.uid(a.SOPInstanceUID)])
        assert a.PixelData == b.PixelData
        assert [a.get(k) for k in GEOMETRY] == [b.get(k) for k in GEOMETRY]
        assert b.PatientName != a.PatientName and b.PatientIdentityRemoved == "YES"
        assert b.SeriesInstanceUID == pseudo.uid(a.SeriesInstanceUID)
    # same key, second run: the same names (consistent across runs)
    out2 = tmp_path / "out2"
    main(["deid", str(src / "Study3" / "11-T1post-18670"), str(out2), "--key-file", str(key_file),
          "--audit-log", str(audit), "--workers", "1", "--no-progress"])
    assert {p.stem for p in out2.rglob("*.dcm")} <= set(outputs)


def test_medsight_info_shows_the_same_geometry(shared_data: Path, tmp_path: Path, key_file: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    series = shared_data / "udacity_brain_mr_dicom" / "Study3" / "11-T1post-18670"
    out = tmp_path / "out"
    assert main(["deid", str(series), str(out), "--key-file", str(key_file), "--audit-log",
                 str(tmp_path / "a.log"), "--workers", "1", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["info", str(series)]) == 0
    before = capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    after = capsys.readouterr().out

    def geometry(text: str) -> list[str]:
        return [line.strip() for line in text.splitlines() if line.strip().startswith(("size:", "spacing:", "orient"))]

    # the source's geometry is what we know it to be, and the de-identified copy shows exactly the same lines
    assert geometry(before) == [
        "size: 280 x 320 x 22 (columns x rows x slices)",
        "spacing: 0.6875 x 0.6875 x 6.5 mm (slice spacing from positions)",
        "orientation: LPS (oblique axial); origin LPS: [-97.1782, -83.1735, -11.4223]",
    ]
    assert geometry(after) == geometry(before)


def test_bad_files_are_reported_and_skipped(shared_data: Path, tmp_path: Path, key_file: Path) -> None:
    good = sorted((shared_data / "udacity_brain_mr_dicom" / "Study3" / "11-T1post-18670").glob("*.dcm"))[0]
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(good, src / "good.dcm")
    data = good.read_bytes()
    (src / "truncated.dcm").write_bytes(data[: len(data) // 2])
    (src / "notes.txt").write_text("not dicom")
    ds = pydicom.dcmread(good)
    del ds.PixelData
    ds.save_as(src / "nopixels.dcm")
    out = tmp_path / "out"
    rc = main(["deid", str(src), str(out), "--key-file", str(key_file), "--audit-log",
               str(tmp_path / "a.log"), "--workers", "1", "--no-progress"])
    assert rc == 1
    report = json.loads((out / "deid_report.json").read_text())
    names = sorted(p.name for p in src.iterdir())  # inputs are numbered in sorted order
    rejected = {names[r["index"]]: r["reason"] for r in report["rejected"]}
    assert rejected == {"truncated.dcm": "pixel data truncated", "nopixels.dcm": "no pixel data in an image object"}
    assert {names[r["index"]]: r["reason"] for r in report["skipped"]} == {"notes.txt": "not DICOM"}
    assert len(list(out.rglob("*.dcm"))) == 1


def test_paths_that_would_mix_input_output_or_secrets_are_refused(
        shared_data: Path, tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    shutil.copytree(shared_data / "udacity_brain_mr_dicom" / "Study3" / "11-T1post-18670", src)
    common = ["--key-file", str(key_file), "--audit-log", str(tmp_path / "a.log"), "--no-progress"]
    assert main(["deid", str(src), str(src / "out"), *common]) == 2
    assert main(["deid", str(src), str(tmp_path / "out"), "--reid-table", str(tmp_path / "out" / "r.csv"),
                 *common]) == 2
    assert main(["deid", str(src), str(tmp_path / "out"), "--retain-full-dates", "--retain-modified-dates",
                 *common]) == 2
    err = capsys.readouterr().err
    assert "outside the input" in err and "kept apart" in err
    assert not (src / "out").exists()


def test_key_from_environment_and_different_keys_differ(shared_data: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    src = sorted((shared_data / "udacity_brain_mr_dicom" / "Study3" / "11-T1post-18670").glob("*.dcm"))[0]
    names = []
    for i, key in enumerate(("11" * 32, "22" * 32)):
        monkeypatch.setenv("MEDSIGHT_DEID_KEY", key)
        out = tmp_path / f"out{i}"
        assert main(["deid", str(src), str(out), "--audit-log", str(tmp_path / "a.log"), "--no-progress"]) == 0
        names.append({p.name for p in out.rglob("*.dcm")})
    assert names[0] != names[1]


def test_clean_pixels_blanks_ruled_regions_and_flags_the_rest(shared_data: Path, tmp_path: Path,
                                                             key_file: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for name in ("pydicom_data/OBXXXX1A_rle.dcm", "pydicom_data/US1_J2KR.dcm", "pydicom_test_files/CT_small.dcm"):
        shutil.copy(shared_data / "dicom_samples" / name, src / Path(name).name)
    out = tmp_path / "out"
    common = ["--clean-pixels", "--key-file", str(key_file), "--audit-log", str(tmp_path / "a.log"), "--workers",
              "1", "--no-progress"]
    # by default the ultrasound no rule cleans is quarantined (status 3); the one the rule cleaned is written
    assert main(["deid", str(src), str(tmp_path / "default"), *common]) == 3
    default = json.loads((tmp_path / "default" / "deid_report.json").read_text())
    assert default["counts"]["quarantined"] == 1 and default["counts"]["written"] == 2
    assert main(["deid", str(src), str(out), "--accept-burned-in-risk", *common]) == 0
    report = json.loads((out / "deid_report.json").read_text())
    flagged = {f["modality"] + str(bool(f["cleaned_by_rule"])): f for f in report["flagged"]}
    assert set(flagged) == {"USTrue", "USFalse"}  # CT not flagged
    assert flagged["USFalse"]["needs_review"] and not flagged["USTrue"]["needs_review"]
    cleaned = pydicom.dcmread(out / flagged["USTrue"]["output"])
    original = pydicom.dcmread(src / "OBXXXX1A_rle.dcm")
    a, b = original.pixel_array, cleaned.pixel_array
    assert not b[:60].any() and a[:60].any()
    assert np.array_equal(a[60:], b[60:])
    assert "113101" in [i.CodeValue for i in cleaned.DeidentificationMethodCodeSequence]


def test_rejected_and_quarantined_files_are_both_told(shared_data: Path, tmp_path: Path, key_file: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A run with a broken file and an ultrasound no rule cleans: status 1 (rejected wins), and the summary still
    says that a file was quarantined (before, that line was never printed when a file was also rejected)."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(shared_data / "dicom_samples" / "pydicom_data" / "US1_J2KR.dcm", src / "us.dcm")
    good = sorted((shared_data / "udacity_brain_mr_dicom" / "Study3" / "11-T1post-18670").glob("*.dcm"))[0]
    (src / "truncated.dcm").write_bytes(good.read_bytes()[:4000])
    rc = main(["deid", str(src), str(tmp_path / "out"), "--key-file", str(key_file), "--audit-log",
               str(tmp_path / "a.log"), "--workers", "1", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "1 DICOM files rejected" in out and "1 files quarantined" in out
