"""Numbers a command cannot use are refused by argparse, naming the flag, before anything runs.

Before: ``evaluate --bootstrap -3`` wrote a report whose every CI was null, ``train/predict --workers 0`` ran on one
worker, and ``users token --expires-days -1`` made a token that had expired when it was printed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from medsight.cli import main


@pytest.mark.parametrize(
    ("args", "flag", "words"),
    [
        (["evaluate", "B", "D", "--out", "O", "--bootstrap", "-3"], "--bootstrap", "must be at least 10 (got -3)"),
        (["evaluate", "B", "D", "--out", "O", "--bootstrap", "0"], "--bootstrap", "must be at least 10 (got 0)"),
        (["compare", "N", "O", "D", "--bootstrap", "5"], "--bootstrap", "must be at least 10 (got 5)"),
        (["evaluate", "B", "D", "--out", "O", "--recalibrate", "-1"], "--recalibrate", "must be at least 0 (got -1)"),
        (["train", "D", "--out", "O", "--workers", "0"], "--workers", "must be at least 1 (got 0)"),
        (["predict", "B", "F", "--out", "O", "--workers", "0"], "--workers", "must be at least 1 (got 0)"),
        (["stream", "B", "S", "--out", "O", "--max-frames", "0"], "--max-frames", "must be at least 1 (got 0)"),
        (["users", "token", "ana", "--expires-days", "-1"], "--expires-days", "must be positive (got -1.0)"),
        (["users", "token", "ana", "--expires-days", "nan"], "--expires-days", "must be positive (got nan)"),
        (["serve", "--grace", "-5"], "--grace", "must be at least 0 (got -5.0)"),
        (["evaluate", "B", "D", "--out", "O", "--bootstrap", "1e3"], "--bootstrap", "not a whole number: '1e3'"),
    ],
)
def test_out_of_range_numbers_are_refused_by_flag(
    args: list[str], flag: str, words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(args)
    err = capsys.readouterr().err
    assert done.value.code == 2 and f"argument {flag}: {words}" in err, err


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--task", "classification", "D"],
        ["evaluate", "B", "D"],
        ["predict", "B", "F"],
        ["stream", "B", "S"],
        ["compare", "N", "O", "D"],
        ["feedback", "export", "--model", "chest"],
    ],
)
def test_an_output_that_is_a_file_is_refused_before_anything_runs_and_the_file_survives(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``train --out notes.txt`` used to train, then replace the user's file with the bundle folder."""
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    with pytest.raises(SystemExit) as done:
        main([*args, "--out", str(existing)])
    err = capsys.readouterr().err
    assert done.value.code == 2 and f"argument --out: {existing}: exists and is not a folder" in err, err
    assert existing.read_text() == "mine"


def test_the_atomic_writer_never_replaces_a_file_with_a_folder(tmp_path: Path) -> None:
    from medsight.errors import MedsightError
    from medsight.io.atomic import atomic_dir

    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    with pytest.raises(MedsightError, match="exists and is not a folder"), atomic_dir(existing) as tmp:
        (tmp / "bundle.json").write_text("{}")
    assert existing.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
