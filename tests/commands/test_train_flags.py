"""``medsight train --alpha`` and ``--split-seed`` (issue 9 §1, §4): the conformal miscoverage and the split seed
reach the task, are recorded in the bundle, the card shows alpha, and evaluate scores the split the bundle recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medsight import runtime
from medsight.cli import main
from medsight.data.clinical import load_outcome
from medsight.data.splits import SPLIT_SEED, SPLIT_SEED_ENV, recorded_split_seed
from medsight.evaluation.conformal import SplitConformal, set_sizes
from medsight.tasks.classification.data import load_like
from medsight.tasks.classification.predict import decided_labels
from medsight.training.bundle import load_bundle


def _manifest(root: Path) -> Path:
    """80 one-image patients, a faint square or none, noisy enough that the prediction sets vary."""
    rng = np.random.default_rng(5)
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(80):
        kind = ("square", "plain")[i % 2]
        img = rng.normal(60, 25, (24, 24))
        if kind == "square":
            img[6:14, 6:14] += 40
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / "img" / f"{i}.png")
        rows.append({"path": f"img/{i}.png", "label": kind, "patient_id": f"P{i}"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def classification(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A bundle trained with --alpha 0.2 --split-seed 3 while $MEDSIGHT_SPLIT_SEED names another (the flag wins)."""
    root = tmp_path_factory.mktemp("flags")
    csv = _manifest(root / "set")
    out = root / "bundle"
    args = ["train", "--task", "classification", str(csv), "--out", str(out), "--epochs", "1", "--batch-size", "16"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SPLIT_SEED_ENV, "5")
        assert main([*args, "--alpha", "0.2", "--split-seed", "3"]) == 0
    return csv, out


def test_alpha_is_recorded_and_smaller_sets_follow(classification: tuple[Path, Path]) -> None:
    csv, out = classification
    bundle = load_bundle(out)
    stored = bundle.meta["selective_prediction"]["conformal"]
    assert bundle.meta["options"]["alpha"] == 0.2
    assert stored["alpha"] == 0.2 and stored["coverage_target"] == pytest.approx(0.8)
    # the same model's validation probabilities, calibrated at 0.2 (as stored) and at 0.05
    model = runtime.load(bundle)
    val = load_like(bundle, str(csv), seed=recorded_split_seed(bundle.meta)).split("val")
    probs = model.probabilities(val.images)  # type: ignore[attr-defined]
    at_02 = SplitConformal(0.2).fit(probs, val.labels)
    at_005 = SplitConformal(0.05).fit(probs, val.labels)
    assert stored["quantile"] == pytest.approx(at_02.quantile_, abs=1e-5)
    assert at_02.quantile_ <= at_005.quantile_
    assert np.all(set_sizes(at_02.predict_sets(probs)) <= set_sizes(at_005.predict_sets(probs)))
    assert decided_labels("binary", probs, bundle.meta["operating_point"]).shape == (len(val),)


def test_split_seed_flag_wins_is_recorded_and_evaluate_scores_that_test_split(
    classification: tuple[Path, Path], tmp_path: Path
) -> None:
    csv, out = classification
    meta = load_bundle(out).meta
    assert meta["data"]["split_seed"] == 3 and meta["options"]["split_seed"] == 3
    bundle = load_bundle(out)
    test_3 = load_like(bundle, str(csv), seed=3).split("test")
    test_0 = load_like(bundle, str(csv), seed=SPLIT_SEED).split("test")
    assert not np.array_equal(test_3.images, test_0.images)  # otherwise this test could not tell the seeds apart
    # evaluate rebuilds the split of seed 3: the leakage check passes and the cases scored are that test split
    args = ["evaluate", str(out), str(csv), "--split", "test", "--out", str(tmp_path / "eval"), "--bootstrap", "20"]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["leakage"]["status"].startswith("verified")
    assert metrics["leakage"]["n_checked"] == len(test_3) == metrics["n"]
    card = (tmp_path / "eval" / "card.html").read_text()
    assert "miscoverage alpha 0.2," in card and "at least 80%" in card


def test_bad_values_are_refused_with_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = _manifest(tmp_path / "set")
    base = ["train", "--task", "classification", str(csv), "--out", str(tmp_path / "b"), "--epochs", "1"]
    for flag, value, words in [
        ("--alpha", "1.5", "--alpha must lie strictly between 0 and 1"),
        ("--alpha", "0", "--alpha must lie strictly between 0 and 1"),
        ("--split-seed", "-1", "--split-seed must be an integer from 0"),
    ]:
        assert main([*base, flag, value]) != 0
        assert words in capsys.readouterr().err
        assert not (tmp_path / "b").exists()
    with pytest.raises(SystemExit) as exc:  # argparse: not a number at all
        main([*base, "--alpha", "a lot"])
    assert exc.value.code != 0 and "--alpha" in capsys.readouterr().err


def test_segmentation_refuses_the_split_seed_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Segmentation's held-out test and folds are stored (medsight_splits.json); the flag is refused, not ignored."""
    args = ["train", "--task", "segmentation", str(tmp_path), "--out", str(tmp_path / "b"), "--split-seed", "3"]
    assert main(args) != 0
    assert "does not take --split-seed" in capsys.readouterr().err


def _outcome_task(root: Path) -> Path:
    rng = np.random.default_rng(2)
    root.mkdir(parents=True)
    rows = ["image,patient_id,died,age"]
    for i in range(40):
        died = i % 4 == 1
        pixels = rng.integers(0, 80, size=(32, 32)).astype(np.uint8)
        if died:
            pixels[8:18, 8:18] = 200
        Image.fromarray(pixels).save(root / f"p{i:02d}.png")
        rows.append(f"p{i:02d}.png,P{i:02d},{int(died)},{int(rng.normal(75 if died else 55, 8))}")
    (root / "clinical.csv").write_text("\n".join(rows) + "\n")
    spec = {
        "table": "clinical.csv",
        "image_column": "image",
        "patient_column": "patient_id",
        "target": {"column": "died", "positive": ["1"], "negative": ["0"], "name": "died"},
        "fields": {"age": "numeric"},
    }
    (root / "task.json").write_text(json.dumps(spec))
    return root / "task.json"


def test_outcome_takes_both_flags(tmp_path: Path) -> None:
    task = _outcome_task(tmp_path / "set")
    out = tmp_path / "bundle"
    args = ["train", str(task), "--task", "outcome", "--out", str(out), "--epochs", "1", "--image-size", "32"]
    assert main([*args, "--alpha", "0.2", "--split-seed", "3"]) == 0
    meta = load_bundle(out).meta
    assert meta["plan"]["alpha"] == 0.2 and meta["selective_prediction"]["conformal"]["alpha"] == 0.2
    assert meta["data"]["split_seed"] == 3 and "split seed 3" in meta["plan"]["split"]
    data = load_outcome(str(task))
    val_patients = {data.patient_ids[i] for i in data.split(3)["val"]}
    assert meta["selective_prediction"]["conformal"]["n_calibration"] == len(val_patients)
    assert meta["data"]["n"]["test"] == len(data.split(3)["test"])
