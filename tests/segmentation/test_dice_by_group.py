"""Segmentation evaluate audits Dice by group when the data carry group columns (attributes.csv at the root)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from medsight.cli import main


def test_evaluate_reports_dice_by_group(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drive = (shared_data / "drive").resolve()
    root = tmp_path / "drive_subset"
    for split, ids, folders in (
        ("training", ["21", "22", "23"], ["images", "1st_manual", "mask"]),
        ("test", ["01", "02", "03"], ["images", "1st_manual", "mask"]),
    ):
        for folder in folders:
            (root / split / folder).mkdir(parents=True)
            for f in sorted((drive / split / folder).iterdir()):
                if f.name.split("_")[0] in ids:
                    (root / split / folder / f.name).symlink_to(f)
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "patch_size": [96, 96],
                "batch_size": 2,
                "iterations_per_epoch": 2,
                "optimizer": {"warmup_iterations": 1},
                "test_time_flips": False,
                "validate_every": 0,
                "network": {"filters": [8, 16, 32, 64, 64]},
            }
        )
    )
    monkeypatch.setenv("MEDSIGHT_SEG_PLAN", str(plan))
    bundle, evaluation = tmp_path / "B", tmp_path / "E"
    assert main(["train", str(root), "--out", str(bundle), "--epochs", "1"]) == 0
    argv = ["evaluate", str(bundle), str(root), "--out", str(evaluation), "--bootstrap", "20", "--no-shift"]
    assert main(argv) == 0
    assert "subgroups" not in json.loads((evaluation / "metrics.json").read_text())  # no group columns: no audit
    ids = [c["id"] for c in json.loads((evaluation / "metrics.json").read_text())["per_case"]]
    cameras = {ids[0]: "camera A", ids[1]: "camera B", ids[2]: "camera A"}
    pd.DataFrame({"case_id": list(cameras), "camera": list(cameras.values())}).to_csv(
        root / "attributes.csv", index=False
    )
    assert main(argv) == 0
    result = json.loads((evaluation / "metrics.json").read_text())
    foreground = result["labels"][1]
    dice = {c["id"]: c[foreground]["dice"] for c in result["per_case"]}
    groups = result["subgroups"]["camera"]["groups"]
    assert groups["camera A"]["n"] == 2 and groups["camera B"]["n"] == 1
    assert groups["camera A"]["dice"]["value"] == pytest.approx((dice[ids[0]] + dice[ids[2]]) / 2)
    assert groups["camera B"]["dice"]["value"] == pytest.approx(dice[ids[1]])
    assert result["subgroups"]["camera"]["gaps"] == {}  # groups under 10 cases are reported, not compared
    assert "Subgroups" in (evaluation / "card.html").read_text()
