"""Atomic writes: what a process killed mid-write leaves behind, and its removal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from medsight.io.atomic import atomic_dir, remove_leftovers

KILLED_MID_WRITE = """
import sys, time
from pathlib import Path
from medsight.io.atomic import atomic_dir
with atomic_dir(Path(sys.argv[1]) / "case") as tmp:
    (tmp / "predictions.json").write_text("{}")
    print("writing", flush=True)
    time.sleep(60)
"""


def test_a_writer_killed_mid_write_leaves_a_temporary_folder_that_remove_leftovers_removes(tmp_path: Path) -> None:
    """``kill -9`` inside ``atomic_dir`` leaves ``.case.<random>.tmp`` (no finally runs); the finished results beside
    it stay, and ``remove_leftovers`` removes only the leftover (what predict_archive does after a killed worker)."""
    results = tmp_path / "results"
    with atomic_dir(results / "done") as tmp:
        (tmp / "predictions.json").write_text("{}")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_MID_WRITE, str(results)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    leftovers = [p.name for p in results.iterdir() if p.name.startswith(".case.")]
    assert len(leftovers) == 1 and leftovers[0].endswith(".tmp")
    (results / ".done.old").mkdir()  # what a kill between atomic_dir's two renames leaves
    assert remove_leftovers(results) == 2
    assert sorted(p.name for p in results.iterdir()) == ["done"]
    assert (results / "done" / "predictions.json").read_text() == "{}"
    assert remove_leftovers(tmp_path / "absent") == 0


def test_a_stop_between_the_two_renames_puts_the_earlier_output_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C or SIGTERM after the earlier output was set aside (``.NAME.old``) and before the new one took its
    place left nothing at ``--out``: the earlier result was lost to the user, against "nothing already written is
    lost". It is now put back, and a run killed outright there gets it back on the next run."""
    import medsight.io.atomic as atomic

    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "report.json").write_text("first")
    real_replace, calls = os.replace, []

    def interrupted(src: object, dst: object) -> None:
        calls.append(dst)
        if len(calls) == 2:  # the new folder's rename: the stop arrives just before it
            raise KeyboardInterrupt
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(atomic.os, "replace", interrupted)
    try:
        with atomic_dir(out) as tmp:
            (tmp / "report.json").write_text("second")
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert (out / "report.json").read_text() == "first" and not (tmp_path / ".out.old").exists()
    # killed outright between the renames (no finally ran): the next run finds the earlier output set aside
    os.replace(out, tmp_path / ".out.old")
    with atomic_dir(out, written=("report.json",)) as tmp:
        assert (out / "report.json").read_text() == "first"  # back in place while the new one is written
        (tmp / "report.json").write_text("third")
    assert (out / "report.json").read_text() == "third" and not (tmp_path / ".out.old").exists()
