"""``benchmarks/busi.py`` as a smoke run (4 images per fold, one epoch): segmentation Dice and classification AUC with
CIs on the test fold of a fold view, the split it used, and the provenance every results file carries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_busi_benchmark_smoke_run_records_dice_and_auc_with_cis(shared_data: Path, tmp_path: Path) -> None:
    results = tmp_path / "busi.json"
    plan = tmp_path / "tiny.json"
    plan.write_text(
        json.dumps(
            {
                "preset": "fast",
                "patch_size": [64, 64],
                "iterations_per_epoch": 2,
                "validate_every": 0,
                "optimizer": {"warmup_iterations": 1},
            }
        )
    )
    env = {
        **os.environ,
        "MEDSIGHT_DATA": str(shared_data.resolve()),
        "MEDSIGHT_THREADS": "1",
        "MEDSIGHT_SEG_PLAN": str(plan),
    }
    run = subprocess.run(
        [
            sys.executable,
            "benchmarks/busi.py",
            "--folds",
            "1",
            "--limit",
            "4",
            "--seg-epochs",
            "1",
            "--cls-epochs",
            "1",
            "--bootstrap",
            "20",
            "--out",
            str(tmp_path / "out"),
            "--results",
            str(results),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads(results.read_text())
    seg, cls = doc["segmentation"]["folds"][0], doc["classification"]["folds"][0]
    assert seg["fold"] == 1 and seg["n_test"] == 4 and len(seg["dice"]["ci95"]) == 2
    assert 0.0 <= seg["dice"]["value"] <= 1.0
    assert cls["n_test"] == 4 and set(cls["metrics"]["auc"]) == {"value", "ci95"}
    assert "BUSI CV fold 1" in cls["split_method"]
    assert doc["split"]["file"] == "src/medsight/data/busi_folds.json" and doc["split"]["folds_tested"] == [1]
    assert {"command", "commit", "date", "load_average_1min"} <= set(doc["provenance"])
