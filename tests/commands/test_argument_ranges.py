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
