"""``benchmarks/busi_seed_spread.py`` sets another seed's folds beside the run of record's and reports the gaps
between the seeds on validation (before the unsure-lesion gate) and on test, fold by fold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _fold(fold: int, val: float, test: float) -> dict[str, Any]:
    return {
        "fold": fold,
        "dice": {"value": test, "ci95": [test - 0.05, test + 0.05]},
        "val_dice_before_gate": val,
        "val_dice": val + 0.03,
    }


def test_the_seed_gaps_are_reported_per_fold_and_the_largest_validation_gap_named(tmp_path: Path) -> None:
    reference = tmp_path / "busi.json"
    reference.write_text(
        json.dumps({"provenance": {"seeds": [0]}, "segmentation": {"folds": [_fold(k, 0.6, 0.7) for k in range(5)]}})
    )
    other = tmp_path / "seed1.json"
    other.write_text(
        json.dumps(
            {
                "provenance": {"command": "busi.py --seed 1", "seeds": [1]},
                "segmentation": {"folds": [_fold(1, 0.65, 0.69), _fold(0, 0.58, 0.72)]},
            }
        )
    )
    out = tmp_path / "spread.json"
    script = [sys.executable, "benchmarks/busi_seed_spread.py"]
    subprocess.run(
        [*script, "--runs", str(other), "--reference", str(reference), "--results", str(out)],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    result = json.loads(out.read_text())
    assert [r["fold"] for r in result["folds"]] == [0, 1] and {r["seed"] for r in result["folds"]} == {1}
    gaps = {r["fold"]: (round(r["val_gap"], 6), round(r["test_gap"], 6)) for r in result["folds"]}
    assert gaps == {0: (0.02, 0.02), 1: (0.05, 0.01)}
    assert abs(result["largest_val_gap"] - 0.05) < 1e-9
    assert result["folds"][1]["val_dice_before_gate"] == {"seed_0": 0.6, "other_seed": 0.65}
