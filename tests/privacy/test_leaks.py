"""Leaks outside Table E.1-1 found by an adversarial review (issue 10), each shown on the shared samples.

Burned-in text, overlays, dates and UIDs the table does not list, names and dates in free text, paths in
the report, lost or silent inputs, exit statuses, DICOMDIR and the issuer rule.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from medsight.cli import main
from medsight.io.dicom import is_dicom_file
from medsight.privacy.pseudonyms import Pseudonymizer, shift_date

KEY_HEX = "ab" * 32
KEY = bytes.fromhex(KEY_HEX)
CT = "pydicom_test_files/CT_small.dcm"
MR = "pydicom_test_files/MR_small.dcm"
US = "pydicom_data/US1_J2KR.dcm"
OVERLAY = "pydicom_test_files/examples_overlay.dcm"


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSIGHT_DEID_KEY", KEY_HEX)


def sample(shared_data: Path, name: str) -> Dataset:
    return pydicom.dcmread(shared_data / "dicom_samples" / name)


def deid(src: Path, out: Path, *extra: str) -> int:
    return main(["deid", str(src), str(out), "--audit-log", str(out.parent / "audit.log"), "--workers", "1",
                 "--no-progress", *extra])


def report(out: Path) -> dict[str, Any]:
    return json.loads((out / "deid_report.json").read_text())


def outputs(out: Path) -> list[Dataset]:
    return [pydicom.dcmread(p) for p in sorted(out.rglob("*.dcm"))]


# --- 1. burned-in text ---------------------------------------------------------------------------


def test_burned_in_file_without_a_cleaning_rule_is_quarantined(shared_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(shared_data / "dicom_samples" / US, src / "us.dcm")  # ultrasound, no pixel rule matches
    mr = sample(shared_data, MR)
    mr.BurnedInAnnotation = "YES"
    mr.save_as(src / "mr_burned.dcm")
    shutil.copy(shared_data / "dicom_samples" / CT, src / "ct.dcm")
    out = tmp_path / "out"
    assert deid(src, out) == 3  # quarantined files: a status of their own
    written = outputs(out)
    assert [d.Modality for d in written] == ["CT"]
    rep = report(out)
    assert rep["counts"]["quarantined"] == 2 and rep["counts"]["written"] == 1
    reasons = " ".join(q["reason"] for q in rep["quarantined"])
    assert "Burned In Annotation is YES" in reasons and "ultrasound" in reasons
    # the user may accept the risk explicitly: then the files are written and listed for review
    out2 = tmp_path / "out2"
    assert deid(src, out2, "--accept-burned-in-risk") == 0
    assert len(outputs(out2)) == 3 and report(out2)["counts"]["needs_review"] == 2


# --- 2. overlays ---------------------------------------------------------------------------------


def _overlay_object(shared_data: Path, with_data: bool) -> Dataset:
    ds = sample(shared_data, OVERLAY)
    name = str(ds.PatientName)
    for elem in [e for e in ds if e.tag.group == 0x6000]:  # a second overlay plane, every repeating group
        ds.add_new((0x6002 << 16) | elem.tag.element, elem.VR, elem.value)
    for group in (0x6000, 0x6002):
        ds.add_new((group << 16) | 0x0022, "LO", f"{name} 2020-01-15")  # Overlay Description
        ds.add_new((group << 16) | 0x1500, "LO", f"{name}")  # Overlay Label
        ds.add_new((group << 16) | 0x4000, "LT", f"{name} comment")  # Overlay Comments
        if not with_data:
            del ds[(group << 16) | 0x3000]
    return ds


@pytest.mark.parametrize("with_data", [True, False], ids=["with-data", "no-data"])
def test_overlay_text_never_survives(shared_data: Path, tmp_path: Path, with_data: bool) -> None:
    from medsight.privacy.engine import Deidentifier

    original = _overlay_object(shared_data, with_data)
    name = str(original.PatientName)
    basic = _overlay_object(shared_data, with_data)
    Deidentifier(KEY).apply(basic)
    assert not [e.tag for e in basic if 0x6000 <= e.tag.group <= 0x601E]
    graphics = _overlay_object(shared_data, with_data)
    Deidentifier(KEY, ["clean_graphics"]).apply(graphics)
    for group in (0x6000, 0x6002):
        for elem in (0x0022, 0x1500, 0x4000):
            value = str(graphics.get((group << 16) | elem, Dataset()).value if (group << 16) | elem in graphics
                        else "")
            assert name not in value and "2020-01-15" not in value, hex((group << 16) | elem)


# --- 3. dates and UIDs the table does not list ---------------------------------------------------


def test_unlisted_dates_and_uids_are_treated_by_vr(shared_data: Path) -> None:
    from medsight.privacy.engine import Deidentifier

    def planted() -> Dataset:
        ds = sample(shared_data, CT)
        ds.StudyDate = "20200110"
        ds.add_new(0x0008041F, "DT", "20200115103000")  # Study Update DateTime: not in Table E.1-1
        ds.add_new(0x00200242, "UI", "1.2.826.0.1.3680043.2.20200115.7")  # SOP Instance UID of Concat. Source
        ds.add_new(0x00081167, "UI", "1.2.826.0.1.3680043.2.20200115.8")  # Multi-frame Source SOP Instance UID
        return ds

    basic = planted()
    Deidentifier(KEY).apply(basic)
    assert str(basic.get((0x0008, 0x041F), Dataset()).value if (0x0008, 0x041F) in basic else "") in (
        "", "19000101000000")
    pseudo = Pseudonymizer(KEY)
    assert basic[0x00200242].value == pseudo.uid("1.2.826.0.1.3680043.2.20200115.7")
    assert basic[0x00081167].value == pseudo.uid("1.2.826.0.1.3680043.2.20200115.8")
    assert basic.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # a standard UID is kept
    shifted = planted()
    Deidentifier(KEY, ["retain_modified_dates"]).apply(shifted)
    days = int((__import__("datetime").date(2020, 1, 10) - __import__("datetime").datetime.strptime(
        shifted.StudyDate, "%Y%m%d").date()).days)
    assert shifted[0x0008041F].value == shift_date("20200115103000", -days)


# --- 4. names, dates and IDs in free text ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "pid", "text", "gone"),
    [
        ("Ng^Bo", "1CT1", "Bo Ng knee, NG BO", ["Bo", "Ng", "NG", "BO"]),
        ("Li", "1CT1", "Li knee", ["Li "]),
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", "1CT1", "山田太郎 やまだ たろう knee",
         ["山田", "太郎", "やまだ", "たろう"]),
        ("Doe^Jane", "P12345", "knee 15 Jan 2020 March 3rd 1980 Jan. 4, 2019 id P-12-345 ref AB-1234-56",
         ["15 Jan 2020", "March 3rd 1980", "Jan. 4, 2019", "P-12-345", "AB-1234-56"]),
    ],
    ids=["short-parts", "two-letters", "ideographic", "dates-ids"],
)
def test_free_text_loses_every_form_of_the_identifiers(shared_data: Path, name: str, pid: str, text: str,
                                                       gone: list[str]) -> None:
    from medsight.privacy.engine import Deidentifier

    ds = sample(shared_data, CT)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = name
    ds.PatientID = pid
    fields = ["ImageComments"] + (["SeriesDescription"] if len(text) <= 64 else [])
    for kw in fields:
        setattr(ds, kw, text)
    Deidentifier(KEY, ["clean_descriptors"]).apply(ds)
    for kw in fields:
        value = str(ds.get(kw, "")) + " "
        assert "knee" in value, value
        for g in gone:
            assert g not in value, (kw, g, value)


# --- 5. the report and logs ----------------------------------------------------------------------


def test_report_names_inputs_by_keyed_hash_not_path(shared_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    folder = src / "DOE_JOHN_19710203"
    folder.mkdir(parents=True)
    data = (shared_data / "dicom_samples" / CT).read_bytes()
    (folder / "ct.dcm").write_bytes(data)
    (folder / "cut.dcm").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert deid(src, out) == 1
    for f in ("deid_report.json", "deid_report.html"):
        assert "DOE_JOHN" not in (out / f).read_text(), f
    assert "DOE_JOHN" not in (tmp_path / "audit.log").read_text()
    rejected = report(out)["rejected"]
    assert len(rejected) == 1 and set(rejected[0]) >= {"index", "id", "reason"} and "input" not in rejected[0]
    # a report folder outside OUT that the user names may hold the paths
    elsewhere = tmp_path / "private_reports"
    out2 = tmp_path / "out2"
    assert deid(src, out2, "--report", str(elsewhere)) == 1
    assert "DOE_JOHN_19710203/cut.dcm" in (elsewhere / "deid_report.json").read_text()
    # neither the report nor the audit log may go inside IN
    assert deid(src, tmp_path / "out3", "--report", str(src / "r")) == 2
    assert main(["deid", str(src), str(tmp_path / "out4"), "--audit-log", str(src / "a.log"), "--no-progress"]) == 2
    assert not (src / "r").exists() and not (src / "a.log").exists()


# --- 6. every input accounted for ------------------------------------------------------------------


def test_duplicates_hidden_files_and_linked_folders_are_accounted_for(shared_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    a = sample(shared_data, CT)
    a.SeriesDescription = "first"
    a.save_as(src / "a.dcm")
    a.SeriesDescription = "second"  # same SOP Instance UID, different content
    a.save_as(src / "b.dcm")
    shutil.copy(shared_data / "dicom_samples" / MR, src / ".hidden.dcm")
    linked = tmp_path / "elsewhere"
    linked.mkdir()
    emri = sample(shared_data, "pydicom_data/emri_small.dcm")
    emri.save_as(linked / "emri.dcm")
    os.symlink(linked, src / "linked")
    out = tmp_path / "out"
    assert deid(src, out) == 0
    rep = report(out)
    assert rep["counts"]["files_seen"] == 4
    assert sorted(i["status"] for i in rep["inputs"]) == ["written"] * 4
    assert len(list(out.rglob("*.dcm"))) == 4  # both duplicates kept
    assert rep["counts"]["duplicates"] == 1 and len(rep["duplicates"][0]["inputs"]) == 2
    # or the user chooses: keep the first
    out2 = tmp_path / "out2"
    assert deid(src, out2, "--on-duplicate", "first") == 0
    rep2 = report(out2)
    assert len(list(out2.rglob("*.dcm"))) == 3
    assert sorted(i["status"] for i in rep2["inputs"]) == ["skipped", "written", "written", "written"]


# --- 7. exit statuses, errors, DICOMDIR ------------------------------------------------------------


def test_non_dicom_is_skipped_and_exit_is_zero(shared_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(shared_data / "dicom_samples" / CT, src / "ct.dcm")
    shutil.copy(shared_data / "dicom_samples" / "MD5SUMS", src / "MD5SUMS")
    (src / "README.txt").write_text("scans of DOE^JOHN")
    (src / "empty").write_bytes(b"")
    out = tmp_path / "out"
    assert deid(src, out) == 0
    rep = report(out)
    assert rep["counts"]["skipped"] == 3 and rep["counts"]["written"] == 1 and rep["counts"]["rejected"] == 0
    assert sorted(p.name for p in out.rglob("*") if p.is_file() and p.suffix != ".dcm") == [
        ".medsight-ledger.json", "deid_report.html", "deid_report.json"]  # ledger: keyed hashes, what a re-run skips
    assert "ct.dcm" not in (out / ".medsight-ledger.json").read_text()
    # one notion of "is this DICOM": the reading code's
    statuses = {i["index"]: i for i in rep["inputs"]}
    names = sorted(p.name for p in src.iterdir())
    for index, name in enumerate(names):
        skipped_as_not_dicom = statuses[index]["status"] == "skipped" and "not DICOM" in statuses[index]["reason"]
        assert skipped_as_not_dicom == (not is_dicom_file(src / name)), name


def test_out_that_is_a_file_is_a_one_line_error(shared_data: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out.dcm"
    target.write_text("x")
    assert deid(shared_data / "dicom_samples" / CT, target) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a folder" in err[0]


def test_dicomdir_is_dropped_and_reported(shared_data: Path, tmp_path: Path) -> None:
    from pydicom.fileset import FileSet

    media = tmp_path / "media"
    fs = FileSet()
    fs.add(sample(shared_data, CT))
    fs.add(sample(shared_data, MR))
    fs.write(media)
    out = tmp_path / "out"
    assert deid(media, out) == 0
    rep = report(out)
    dicomdir = [i for i in rep["inputs"] if "DICOMDIR" in (i.get("reason") or "")]
    assert len(dicomdir) == 1 and dicomdir[0]["status"] == "skipped"
    assert rep["counts"]["written"] == 2


# --- 8. the issuer rule ------------------------------------------------------------------------------


def test_same_patient_id_with_and_without_issuer(shared_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    a = sample(shared_data, CT)
    a.save_as(src / "a.dcm")
    b = sample(shared_data, MR)
    b.PatientID, b.IssuerOfPatientID = a.PatientID, "HOSPITAL-A"
    b.save_as(src / "b.dcm")
    out = tmp_path / "out"
    assert deid(src, out) == 0
    assert len({d.PatientID for d in outputs(out)}) == 2  # default: the issuer is part of the identity
    out2 = tmp_path / "out2"
    assert deid(src, out2, "--patient-key", "id") == 0
    assert len({d.PatientID for d in outputs(out2)}) == 1


# --- Ctrl-C ----------------------------------------------------------------------------------------

GATED_RUN = """
import faulthandler, os, signal, sys, time
import medsight.privacy.run as run
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks for every thread's stack if the run hangs
original = run.process_file
gate = os.environ["MEDSIGHT_TEST_GATE"]
def gated(path, rel, index, *args, **kwargs):
    # Files in the second half of the run never finish: each worker says it has reached them, then waits to be
    # stopped. The first half is done and reported by then, whatever the machine's speed or load.
    if index >= 44:
        open(os.path.join(gate, str(os.getpid())), "w").close()
        while True:
            time.sleep(0.05)
    return original(path, rel, index, *args, **kwargs)
run.process_file = gated
from medsight.cli import main
sys.exit(main(sys.argv[1:]))
"""

#: tgkill(2) by machine: Python can signal only its own threads (signal.pthread_kill)
TGKILL = {"x86_64": 234, "aarch64": 131}


def _signal_thread(pid: int, tid: int, signum: int) -> None:
    """Send ``signum`` to one thread of another process, as the kernel does when it picks that thread for a
    process-directed signal."""
    import ctypes
    import platform

    number = TGKILL.get(platform.machine())
    assert number is not None, f"no tgkill number known for {platform.machine()}"
    if ctypes.CDLL(None, use_errno=True).syscall(number, pid, tid, signum) != 0:
        raise OSError(ctypes.get_errno(), f"tgkill({pid}, {tid}) failed")


@pytest.mark.parametrize("target", ["process group", "helper thread 1", "helper thread 2", "helper thread 3"])
def test_ctrl_c_stops_workers_and_writes_a_report(shared_data: Path, tmp_path: Path, target: str) -> None:
    """Ctrl-C stops a run whichever thread of the parent the kernel hands the SIGINT to: its other threads (the pool's
    handler threads, tqdm's monitor; the first three by thread id) sleep in system calls too, and a parent that waited
    on the pool with no timeout never woke (a hang that showed only under load, when the kernel picked one of them)."""
    src = shared_data / "udacity_brain_mr_dicom"
    out, gate = tmp_path / "out", tmp_path / "gate"
    gate.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", GATED_RUN, "deid", str(src), str(out), "--workers", "2", "--no-progress",
         "--audit-log", str(tmp_path / "audit.log")],
        env={**os.environ, "MEDSIGHT_TEST_GATE": str(gate)},
        start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    # Interrupt once both workers are held at the gate: every chunk before it has been handed back, none after.
    while time.monotonic() < deadline and len(list(gate.iterdir())) < 2 and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it was interrupted"
    assert len(list(gate.iterdir())) == 2, "the workers never reached the gate"
    time.sleep(0.5)  # the parent collects the last chunk handed back
    if target == "process group":
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    else:
        helpers = sorted(int(t) for t in os.listdir(f"/proc/{proc.pid}/task") if int(t) != proc.pid)
        assert len(helpers) >= 3, f"expected the pool's handler threads, found {helpers}"
        _signal_thread(proc.pid, helpers[int(target.split()[-1]) - 1], signal.SIGINT)
    stopped = time.monotonic()
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGUSR1)  # every thread's stack to stderr (faulthandler), for the failure message
        time.sleep(1)
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"the interrupted run did not stop within 30 s; its threads:\n{err[-6000:]}")
    assert time.monotonic() - stopped < 10
    assert proc.returncode == 130, err
    assert "interrupted" in err
    rep = report(out)
    assert rep["interrupted"] is True
    counts = rep["counts"]
    # inputs 0-43 (42 DICOM files and 2 stray non-DICOM files) are done and reported; the other 46 are not
    assert (counts["written"], counts["skipped"], counts["not_processed"]) == (42, 2, 46)
    assert not [p for p in out.rglob("*.tmp")]
    if target != "process group":
        time.sleep(1)  # the workers ignore SIGINT; the parent's pool.terminate() stops them
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # no worker left behind
