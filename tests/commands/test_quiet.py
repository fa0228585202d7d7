"""``--quiet`` means "only print errors and results": progress bars (reading the data, the epochs) were still drawn,
since call sites ask tqdm for a bar explicitly."""

from __future__ import annotations

from pathlib import Path

import pytest

from medsight.cli import main
from tiny_bundle import write_tiny_manifest


def test_quiet_draws_no_progress_bar_and_bars_come_back_after(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tqdm import tqdm

    manifest = write_tiny_manifest(tmp_path / "set")
    capsys.readouterr()
    assert main(["-q", "train", str(manifest), "--out", str(tmp_path / "b"), "--epochs", "1"]) == 0
    quiet = capsys.readouterr()
    assert "%|" not in quiet.err and "epoch/s" not in quiet.err and "bundle:" in quiet.out
    assert main(["train", str(manifest), "--out", str(tmp_path / "c"), "--epochs", "1"]) == 0
    assert "%|" in capsys.readouterr().err  # without -q the bars are drawn
    with tqdm(total=1, disable=False) as bar:  # and tqdm is itself again after a quiet run
        assert not bar.disable
