"""Archive mode over what real archives and real runs hold: files that are cut short, links that loop, a folder that
vanishes mid-walk, a disk that fills up, a run interrupted and rerun, a rerun with another model or over changed
files, two runs into one folder. Each input is named with its reason (never by a patient's file name), nothing is
written twice or reused stale, and one bad file never ends the batch. No Ray cluster: the local path runs the same
worker code the Ray actors run."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from medsight.cli import main
from medsight.distributed import ledger as ledger_module
from medsight.distributed.ledger import FOLDER, key
from medsight.distributed.predict import iter_files, predict_archive
from medsight.errors import MedsightError

NAME = "Zzyzx_Quintella"


def _png(path: Path, square: bool, value: int = 60) -> None:
    from PIL import Image

    img = np.full((24, 24), value, np.uint8)
    if square:
        img[4:12, 4:12] = 250
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def _archive(root: Path, n: int = 4) -> Path:
    archive = root / "archive"
    for i in range(n):
        _png(archive / f"case{i}.png", square=bool(i % 2))
    return archive


def _by_rel(report: dict, *rels: str) -> dict[str, dict]:
    records = {r["key"]: r for r in report["files"]}
    return {rel: records[key(rel)] for rel in rels}


def _predictions(out: Path, rel: str) -> dict:
    return json.loads((out / "results" / key(rel) / "predictions.json").read_text())["predictions"][0]


def test_damaged_and_odd_files_are_named_and_never_end_the_batch(
    tiny_bundle: Path, shared_data: Path, tmp_path: Path
) -> None:
    """A link that loops once ended the whole batch (RuntimeError from resolve), a DICOM file cut short (a copy
    still running) was skipped as "an object without an image", a reader's message put the patient's file name in
    the report, and a linked folder or a hidden file were left out without a word."""
    archive = _archive(tmp_path, 2)
    dicom = (shared_data / "dicom_samples" / "pydicom_data" / "RG3_J2KR.dcm").read_bytes()
    (archive / "cut.dcm").write_bytes(dicom[: len(dicom) // 2])
    (archive / "header_only").write_bytes(dicom[:400])
    (archive / f"{NAME}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    os.symlink(archive / "loop.png", archive / "loop.png")
    os.symlink(archive / "gone.png", archive / "dangling.png")
    os.mkfifo(archive / "pipe.png")
    (archive / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "elsewhere").mkdir()
    _png(tmp_path / "elsewhere" / "other.png", square=True)
    os.symlink(tmp_path / "elsewhere", archive / "linked")
    out = tmp_path / "out"

    report = predict_archive(tiny_bundle, archive, out, progress=False, any_modality=True)

    files = _by_rel(
        report, "case0.png", "cut.dcm", "header_only", f"{NAME}.png", "loop.png", "dangling.png", "pipe.png",
        ".DS_Store", "linked/",
    )  # fmt: skip
    assert files["case0.png"]["status"] == "written"
    assert report["counts"] == {"written": 2, "failed": 5, "skipped": 3}, report["counts"]
    assert files["cut.dcm"]["status"] == files["header_only"]["status"] == "failed"
    assert files["cut.dcm"]["reason"].startswith("truncated DICOM file")
    assert files[f"{NAME}.png"]["status"] == "failed" and "<file>" in files[f"{NAME}.png"]["reason"]
    assert files["loop.png"] == {"key": key("loop.png"), "status": "failed", "reason": files["loop.png"]["reason"]}
    assert "symbolic links" in files["loop.png"]["reason"]
    assert files["dangling.png"]["status"] == "failed"
    assert files["pipe.png"] == {"key": key("pipe.png"), "status": "skipped", "reason": files["pipe.png"]["reason"]}
    assert files["pipe.png"]["reason"].startswith("not a regular file")
    assert files[".DS_Store"]["status"] == files["linked/"]["status"] == "skipped"
    assert "link to a folder" in files["linked/"]["reason"]
    text = (out / "report.json").read_text()
    assert NAME not in text and str(tmp_path) not in text.replace(str(out.resolve()), "").replace(str(tiny_bundle), "")
    # a failure is tried again by a re-run: the file the dangling link names has come back
    _png(archive / "gone.png", square=True)
    again = predict_archive(tiny_bundle, archive, out, progress=False, any_modality=True)
    assert _by_rel(again, "dangling.png")["dangling.png"]["status"] == "written"
    assert again["finished_earlier"] == 3  # the two images and the pipe; not the failures


def test_a_folder_that_vanishes_while_the_archive_is_walked_is_named(tmp_path: Path) -> None:
    """os.walk drops a folder it cannot list without a word: its files were neither done nor reported."""
    archive = tmp_path / "archive"
    _png(archive / "a" / "x.png", square=False)
    _png(archive / "b" / "y.png", square=True)
    walk = iter_files(archive)
    assert next(walk)[1] == "a/x.png"
    shutil.rmtree(archive / "b")  # listed by its parent, gone before it is walked
    rest = list(walk)
    assert [entry[1] for entry in rest] == ["b/"]
    assert rest[0].verdict is not None and rest[0].verdict[0] == "failed"
    assert "could not be listed" in rest[0].verdict[1]


def test_reruns_redo_what_another_model_or_a_changed_file_made_stale(tiny_bundle: Path, tmp_path: Path) -> None:
    """Marks were keyed by the file's path only: a rerun with a recalibrated model, over a file rewritten in place,
    or over another archive with the same file names reused the old results and called them done."""
    archive = _archive(tmp_path)
    out = tmp_path / "out"
    first = predict_archive(tiny_bundle, archive, out, progress=False, any_modality=True)
    assert first["counts"] == {"written": 4}
    same = predict_archive(tiny_bundle, archive, out, progress=False, any_modality=True)
    assert same["processed_this_run"] == 0 and same["finished_earlier"] == 4
    # a file rewritten in place (the clear case now shows the square): that one, and only it, is redone
    before = _predictions(out, "case0.png")["probabilities"]
    _png(archive / "case0.png", square=True)  # now the same image as case1
    changed = predict_archive(tiny_bundle, archive, out, progress=False, any_modality=True)
    assert changed["processed_this_run"] == 1 and changed["finished_earlier"] == 3
    assert _predictions(out, "case0.png")["probabilities"] == _predictions(out, "case1.png")["probabilities"] != before
    # a file gone from the archive is no longer reported as part of it
    (archive / "case3.png").unlink()
    fewer = predict_archive(tiny_bundle, archive, out, progress=False, any_modality=True)
    assert fewer["files_seen"] == 3 and fewer["counts"] == {"written": 3} and fewer["processed_this_run"] == 0
    # another model (the same network, recalibrated: another operating point): everything is redone with it
    other = tmp_path / "recalibrated"
    shutil.copytree(tiny_bundle, other)
    meta = json.loads((other / "bundle.json").read_text())
    meta["operating_point"]["threshold"] = 0.125
    (other / "bundle.json").write_text(json.dumps(meta))
    redone = predict_archive(other, archive, out, progress=False, any_modality=True)
    assert redone["processed_this_run"] == 3
    assert {_predictions(out, f"case{i}.png")["operating_point"]["threshold"] for i in range(3)} == {0.125}
    # another archive whose files bear the same names
    second = tmp_path / "second"
    shutil.copytree(archive, second)
    assert predict_archive(other, second, out, progress=False, any_modality=True)["processed_this_run"] == 3


def test_an_interrupted_run_is_resumed_by_the_same_command(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C before the end left marks and results but no report.json, so the rerun was refused as "a folder that
    holds no predictions.json or report.json": the interrupted batch could not be resumed from the command line."""
    archive = _archive(tmp_path, 6)
    out = tmp_path / "out"
    argv = ["predict", str(tiny_bundle), str(archive), "--out", str(out), "--workers", "1", "--any-modality"]
    original = ledger_module.Ledger.mark
    marked: list[str] = []

    def mark_then_stop(self: ledger_module.Ledger, name: str, record: dict) -> None:
        if len(marked) == 3:
            raise KeyboardInterrupt
        marked.append(name)
        original(self, name, record)

    monkeypatch.setattr(ledger_module.Ledger, "mark", mark_then_stop)
    assert main(argv) == 130
    monkeypatch.undo()
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] and report["counts"] == {"written": 6}
    assert report["finished_earlier"] == 3 and report["processed_this_run"] == 3
    folders = sorted((out / "results").iterdir())
    assert len(folders) == 6 and all((f / "predictions.json").is_file() for f in folders)  # each once, whole


def test_a_full_disk_stops_with_one_line_and_the_rerun_goes_on(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC came out as a bare OSError traceback; it is one line (exit 2), and the rerun keeps what finished."""
    from medsight import runtime

    archive = _archive(tmp_path, 6)
    out = tmp_path / "out"
    original = runtime.write_predictions
    written: list[Path] = []

    def fill_up(model: object, results: object, target: Path) -> Path:
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(target)
        return original(model, results, target)  # type: ignore[arg-type]

    monkeypatch.setattr(runtime, "write_predictions", fill_up)
    with pytest.raises(MedsightError, match="no space left") as raised:
        predict_archive(tiny_bundle, archive, out, progress=False, any_modality=True)
    assert "\n" not in str(raised.value)
    monkeypatch.undo()
    report = predict_archive(tiny_bundle, archive, out, progress=False, any_modality=True)
    assert report["counts"] == {"written": 6}  # no input was failed for the disk's sake
    assert report["finished_earlier"] == 2 and report["processed_this_run"] == 4


def test_a_second_run_into_the_same_folder_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    """Two runs into one folder removed each other's half-written results as leftovers and marked over each other."""
    archive = _archive(tmp_path, 1)
    out = tmp_path / "out"
    (out / FOLDER).mkdir(parents=True)
    fd = os.open(out / FOLDER / "lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running batch holds
        with pytest.raises(MedsightError, match="another medsight batch is writing into this folder"):
            predict_archive(tiny_bundle, archive, out, progress=False, any_modality=True)
        assert not (out / "results").exists()
    finally:
        os.close(fd)
    assert predict_archive(tiny_bundle, archive, out, progress=False, any_modality=True)["counts"] == {"written": 1}
