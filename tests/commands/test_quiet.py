"""``--quiet`` means "only print errors and results": progress bars (reading the data, the epochs) were still drawn,
since call sites ask tqdm for a bar explicitly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medsight.cli import main


def _manifest(root: Path) -> Path:
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(40):
        img = rng.normal(60, 10, (16, 16))
        if i % 2:
            img[4:10, 4:10] += 120
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / "img" / f"{i}.png")
        rows.append({"path": f"img/{i}.png", "label": "square" if i % 2 else "clear", "patient_id": f"P{i}"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def test_quiet_draws_no_progress_bar_and_bars_come_back_after(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tqdm import tqdm

    manifest = _manifest(tmp_path / "set")
    capsys.readouterr()
    assert main(["-q", "train", str(manifest), "--out", str(tmp_path / "b"), "--epochs", "1"]) == 0
    quiet = capsys.readouterr()
    assert "%|" not in quiet.err and "epoch/s" not in quiet.err and "bundle:" in quiet.out
    assert main(["train", str(manifest), "--out", str(tmp_path / "c"), "--epochs", "1"]) == 0
    assert "%|" in capsys.readouterr().err  # without -q the bars are drawn
    with tqdm(total=1, disable=False) as bar:  # and tqdm is itself again after a quiet run
        assert not bar.disable
