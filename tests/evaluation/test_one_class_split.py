"""Evaluation on a test split that holds one class only (another site's confirmed lesions): the metrics that need
both classes are undefined and the card says so; it once crashed drawing the ROC's operating point (``1 - None``)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest

from medsight.cli import main


def test_an_all_positive_test_split_is_evaluated_and_carded(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np
    from PIL import Image

    (tmp_path / "img").mkdir()
    rng = np.random.default_rng(7)
    rows = []
    for i in range(8):  # another site's confirmed lesions: new images, every one positive
        img = rng.normal(60, 10, (24, 24))
        img[6:14, 8:16] += 120
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"path": f"img/{i}.png", "label": "square", "patient_id": f"S{i}", "split": "test"})
    rows = pd.DataFrame(rows)
    site = tmp_path / "site.csv"
    rows.to_csv(site, index=False)
    out = tmp_path / "ev"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no legend warnings from empty plots either
        assert (
            main(["evaluate", str(tiny_bundle), str(site), "--split", "test", "--bootstrap", "10", "--out", str(out)])
            == 0
        )
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["specificity"]["value"] is None and metrics["sensitivity"]["value"] is not None
    assert (out / "card.html").stat().st_size > 0
