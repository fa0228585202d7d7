"""``benchmarks/busi_whole_image.py`` decides from validation figures alone: the screen's better setting goes on only
when it beats the run of record's fold 0, and replaces the run of record only when its five-fold mean validation
Dice (before the unsure-lesion gate) beats the run of record's; test figures are copied, never compared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _fold(fold: int, val: float, test: float, pixels: int | None = None) -> dict[str, Any]:
    return {
        "fold": fold,
        "image_pixels": pixels,
        "dice": {"value": test, "ci95": [test - 0.05, test + 0.05]},
        "dice_lesion_images": {"value": test, "ci95": [test - 0.05, test + 0.05], "n": 100},
        "val_dice": val + 0.05,
        "postprocessing": {"unsure_trials": {"1": {"dice_before": val, "dice_after": val + 0.05}}},
        "ablation_without_unsure_gate": {"dice": test - 0.05},
    }


def _write(path: Path, folds: list[dict[str, Any]], command: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "provenance": {"command": command, "commit": "c"},
                "segmentation": {"folds": folds},
                "classification": {"folds": [{"fold": 0, "auc": 0.9}]},
            }
        )
    )
    return path


def _run(tmp: Path, *args: str) -> dict[str, Any]:
    out = tmp / "decision.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "busi_whole_image.py"), *args, "--results", str(out)],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    return json.loads(out.read_text())


def test_the_better_setting_on_validation_goes_on_and_replaces_the_record_on_a_five_fold_win(tmp_path: Path) -> None:
    reference = _write(tmp_path / "busi.json", [_fold(k, 0.5, 0.6) for k in range(5)], "old")
    # setting a has the better TEST figure, b the better VALIDATION figure: b must go on
    a = _write(tmp_path / "a.json", [_fold(0, 0.55, 0.9, 65536)], "a")
    b = _write(tmp_path / "b.json", [_fold(0, 0.60, 0.7, 20480)], "b")
    rest = _write(tmp_path / "c.json", [_fold(k, 0.58, 0.65, 20480) for k in (1, 2, 3, 4)], "c")
    record = _run(
        tmp_path, "--screen", str(a), str(b), "--folds", str(rest), "--reference", str(reference), "--replace"
    )
    assert record["screen"]["best_image_pixels"] == 20480 and record["screen"]["goes_on"] is True
    five = record["five_folds"]
    assert five["adopted"] is True and abs(five["val_dice_before_gate_mean"] - (0.60 + 4 * 0.58) / 5) < 1e-9
    assert abs(five["test_across_folds"]["dice"]["mean"] - (0.7 + 4 * 0.65) / 5) < 1e-9
    replaced = json.loads(reference.read_text())
    assert [f["provenance"]["command"] for f in replaced["segmentation"]["folds"]] == ["b", "c", "c", "c", "c"]
    assert replaced["previous"]["provenance"]["command"] == "old"
    assert replaced["classification"]["folds"] == [{"fold": 0, "auc": 0.9}]  # the classifier folds stay


def test_nothing_changes_when_validation_does_not_beat_the_run_of_record(tmp_path: Path) -> None:
    reference = _write(tmp_path / "busi.json", [_fold(k, 0.5, 0.6) for k in range(5)], "old")
    before = reference.read_text()
    # fold 0 wins on validation, the five-fold mean does not: the record stays, whatever the test figures say
    b = _write(tmp_path / "b.json", [_fold(0, 0.52, 0.9, 20480)], "b")
    rest = _write(tmp_path / "c.json", [_fold(k, 0.45, 0.9, 20480) for k in (1, 2, 3, 4)], "c")
    record = _run(tmp_path, "--screen", str(b), "--folds", str(rest), "--reference", str(reference), "--replace")
    assert record["screen"]["goes_on"] is True and record["five_folds"]["adopted"] is False
    assert reference.read_text() == before
    # a screen that does not beat fold 0 stops there
    worse = _write(tmp_path / "w.json", [_fold(0, 0.49, 0.99, 20480)], "w")
    record = _run(tmp_path, "--screen", str(worse), "--folds", str(rest), "--reference", str(reference))
    assert record["screen"]["goes_on"] is False and "five_folds" not in record


def test_a_replaced_record_keeps_every_earlier_record_under_previous(tmp_path: Path) -> None:
    older = {"segmentation": {"folds": []}, "provenance": {"command": "oldest"}}
    reference = _write(tmp_path / "busi.json", [_fold(k, 0.5, 0.6) for k in range(5)], "old")
    reference.write_text(json.dumps({**json.loads(reference.read_text()), "previous": older}))
    b = _write(tmp_path / "b.json", [_fold(0, 0.60, 0.7, 12288)], "b")
    rest = _write(tmp_path / "c.json", [_fold(k, 0.58, 0.65, 12288) for k in (1, 2, 3, 4)], "c")
    record = _run(
        tmp_path,
        "--screen",
        str(b),
        "--folds",
        str(rest),
        "--reference",
        str(reference),
        "--replace",
        "--rule",
        "smaller",
    )
    assert record["five_folds"]["adopted"] is True and "before the runs" in record["rule"]
    replaced = json.loads(reference.read_text())
    assert replaced["previous"]["provenance"]["command"] == "old"
    assert replaced["previous"]["previous"] == older  # the record before the one replaced is not dropped


def test_folds_run_beside_a_screen_that_stops_are_reported_and_decide_nothing(tmp_path: Path) -> None:
    reference = _write(tmp_path / "busi.json", [_fold(k, 0.5, 0.6) for k in range(5)], "old")
    before = reference.read_text()
    screen = _write(tmp_path / "s.json", [_fold(0, 0.49, 0.7, 8192)], "s")
    beside = _write(tmp_path / "f1.json", [_fold(1, 0.9, 0.9, 8192)], "f1")  # a fine fold 1 cannot rescue the screen
    record = _run(tmp_path, "--screen", str(screen), "--folds", str(beside), "--reference", str(reference), "--replace")
    assert record["screen"]["goes_on"] is False and "five_folds" not in record
    assert [(f["fold"], f["val_dice_before_gate"]) for f in record["folds_not_counted"]] == [(1, 0.9)]
    assert record["folds_not_counted"][0]["test_dice"]["value"] == 0.9  # reported as the rule says
    assert reference.read_text() == before
