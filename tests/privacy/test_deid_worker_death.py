"""A deid worker process that dies (killed by the system for memory, a crash in a pixel decoder) once made
``medsight deid --workers N`` wait forever: ``multiprocessing.Pool`` replaced the process but never answered for its
chunk, and a lock it held could block the pool's queues. Now the file that kills its worker is rejected with the
reason, every other file is written, and a worker killed from outside costs nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

#: The CLI with ``process_file`` made to kill its own worker on input 30 (as a decoder crash would).
POISONED_RUN = """
import os, signal, sys
import medsight.privacy.run as run
original = run.process_file
def poisoned(path, rel, index, *args, **kwargs):
    if index == 30:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(path, rel, index, *args, **kwargs)
run.process_file = poisoned
from medsight.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _deid(tmp_path: Path, src: Path, code: str | None) -> subprocess.Popen[str]:
    argv = ["-c", code] if code else ["-m", "medsight"]
    return subprocess.Popen(
        [sys.executable, *argv, "deid", str(src), str(tmp_path / "out"), "--workers", "2", "--no-progress",
         "--audit-log", str(tmp_path / "audit.log"), "--key-file", str(tmp_path / "key")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError("deid waited forever for a dead worker") from None
    return proc.returncode, err


def test_a_file_that_kills_its_worker_is_rejected_and_the_rest_written(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "udacity_brain_mr_dicom"
    code, err = _finish(_deid(tmp_path, src, POISONED_RUN))
    assert code == 1, err  # some DICOM files rejected
    report = json.loads((tmp_path / "out" / "deid_report.json").read_text())
    rejected = report["rejected"]
    assert len(rejected) == 1 and rejected[0]["index"] == 30
    assert "worker process de-identifying it died" in rejected[0]["reason"]
    assert report["counts"]["written"] == report["counts"]["files_seen"] - report["counts"]["skipped"] - 1
    assert not (tmp_path / "out" / ".medsight-staging").exists()


def test_a_worker_killed_from_outside_costs_nothing(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "udacity_brain_mr_dicom"
    proc = _deid(tmp_path, src, None)
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if len(children) >= 2 and list((tmp_path / "out").rglob("*.dcm")):
            killed = int(children[0])
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    code, err = _finish(proc)
    assert killed is not None, "the run ended before a worker could be killed: the test proved nothing"
    report = json.loads((tmp_path / "out" / "deid_report.json").read_text())
    assert code == 0, err
    assert report["counts"]["written"] == report["counts"]["files_seen"] - report["counts"]["skipped"]
