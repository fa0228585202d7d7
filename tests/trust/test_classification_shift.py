"""Other sites for classification bundles (issue 9, §5): the training fingerprint with class prevalences recorded at
training (or recomputed for an older bundle), and ``medsight evaluate --shift`` on a simulated other site whose
images are inverted (flagged) or come from the same generator (not flagged), with recalibration on a few of its
cases; ``--shift-only`` on unlabelled images compares the predicted class shares with the training labels'."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medsight.cli import main
from medsight.data.fingerprint_stats import Sample, case_features, distribution_fingerprint
from medsight.errors import MedsightError
from medsight.evaluation.shift import case_recalibration
from medsight.monitoring import training_fingerprint
from medsight.training.bundle import load_bundle

INTENSITY = ("intensity_mean", "intensity_p01", "intensity_p99", "intensity (raw)")


def _images(root: Path, n: int, seed: int, invert: bool = False, split: str | None = None) -> Path:
    """``n`` one-image patients: a faint square (label "square") or none ("plain") in noise; ``invert`` makes
    another 'site' (a scanner writing the grey scale the other way round)."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        kind = ("square", "plain")[i % 2]
        img = rng.normal(60, 25, (24, 24))
        if kind == "square":
            img[6:14, 6:14] += 45
        img = img.clip(0, 255)
        if invert:
            img = 255 - img
        Image.fromarray(img.astype(np.uint8)).save(root / "img" / f"{i}.png")
        rows.append(
            {"path": f"img/{i}.png", "label": kind, "patient_id": f"S{seed}P{i}"} | ({"split": split} if split else {})
        )
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cls_shift")
    csv = _images(root / "site_a", 80, seed=3)
    bundle = root / "bundle"
    args = ["train", "--task", "classification", str(csv), "--out", str(bundle), "--epochs", "2", "--batch-size", "16"]
    assert main(args) == 0
    return csv, bundle


def test_a_class_label_gives_the_prevalence_of_every_class_and_a_label_map_keeps_its_foreground_shares() -> None:
    image = np.random.default_rng(0).random((1, 8, 8)).astype(np.float32)
    names = ["normal", "benign", "malignant"]
    scalar = case_features(Sample(image, (), np.asarray(0)), names)
    assert {k: v for k, v in scalar.items() if k.startswith("prevalence_")} == {
        "prevalence_normal": 1.0,
        "prevalence_benign": 0.0,
        "prevalence_malignant": 0.0,
    }
    assert not any(k.startswith(("size_", "spacing_")) for k in scalar)  # geometry unknown: not recorded
    multi = case_features(Sample(image, (), np.asarray([1.0, 0.0, 1.0])), names)
    assert multi["prevalence_normal"] == 1.0 and multi["prevalence_benign"] == 0.0
    assert multi["prevalence_malignant"] == 1.0
    with pytest.raises(MedsightError, match="3 labels"):
        case_features(Sample(image, (), np.asarray([1.0, 0.0])), names)
    label_map = np.zeros((8, 8), np.int64)
    label_map[:2] = 2  # a quarter of the pixels
    seg = case_features(Sample(image, (1.0, 1.0), label_map), names)
    assert seg["prevalence_malignant"] == 0.25 and seg["prevalence_benign"] == 0.0
    assert "prevalence_normal" not in seg and seg["size_0"] == 8.0 and seg["spacing_1"] == 1.0
    fp = distribution_fingerprint([Sample(image, (), np.asarray(k % 3)) for k in range(6)], names, "unknown")
    assert fp["cases"]["prevalence_benign"] == [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]


def test_case_recalibration_fits_on_some_cases_and_scores_the_others() -> None:
    """Over-confident binary probabilities (logits sharpened 3x): a temperature fitted on 200 cases lowers the
    adaptive-bin ECE of the other 800."""
    rng = np.random.default_rng(4)
    logit = rng.normal(0, 1.5, 1000)
    y = (rng.random(1000) < 1 / (1 + np.exp(-logit))).astype(int)
    sharp = 1 / (1 + np.exp(-3 * logit))
    probs = np.stack([1 - sharp, sharp], axis=1)
    result = case_recalibration(probs, y, 200, "binary", positive_index=1, n_boot=50)
    assert result["n_fit"] == 200 and result["n_scored"] == 800 and 2.0 < result["temperature"] < 4.5  # true: 3
    assert result["ece_kind"] == "positive-class" and result["bins"]["strategy"] == "equal-mass"
    assert result["ece_after"] < 0.5 * result["ece_before"] and result["restores_calibration"]
    lo, hi = result["ece_before_ci95"]
    assert lo <= result["ece_before"] <= hi
    with pytest.raises(MedsightError, match="needs more than"):
        case_recalibration(probs[:5], y[:5], 5, "binary", positive_index=1)


def test_training_records_the_fingerprint_and_an_older_bundle_gets_it_recomputed(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    csv, bundle_path = trained
    meta = load_bundle(bundle_path).meta
    recorded = meta["data"]["distribution"]
    assert recorded["n_cases"] == meta["data"]["n"]["train"]
    shares = np.asarray(recorded["cases"]["prevalence_plain"]) + np.asarray(recorded["cases"]["prevalence_square"])
    assert np.all(shares == 1.0) and 0 < np.mean(recorded["cases"]["prevalence_square"]) < 1
    assert "intensity_mean" in recorded["cases"] and "size_0" not in recorded["cases"]

    older = tmp_path / "older"
    shutil.copytree(bundle_path, older)
    edited = json.loads((older / "bundle.json").read_text())
    del edited["data"]["distribution"]
    (older / "bundle.json").write_text(json.dumps(edited))
    monkeypatch.setenv("MEDSIGHT_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(MedsightError, match="training data are not found"):
        training_fingerprint(load_bundle(older))
    # evaluated on another site, the report is on by default: the evaluation stands and says why there is no report;
    # asked for with --shift, the missing fingerprint is an error
    site = _images(tmp_path / "site_e", 20, seed=14, split="test")
    args = ["evaluate", str(older), str(site), "--split", "test", "--bootstrap", "10"]
    assert main([*args, "--out", str(tmp_path / "default")]) == 0
    assert "shift: not written" in capsys.readouterr().out and (tmp_path / "default" / "metrics.json").is_file()
    assert not (tmp_path / "default" / "shift.json").exists()
    assert main([*args, "--out", str(tmp_path / "asked"), "--shift"]) == 2
    monkeypatch.setenv("MEDSIGHT_DATA", str(csv.parent.parent))  # $MEDSIGHT_DATA/<source>/manifest.csv
    assert training_fingerprint(load_bundle(older)) == recorded  # the same code on the same cases


def _flagged(out: Path) -> tuple[dict, set[str]]:
    report = json.loads((out / "shift.json").read_text())
    return report, set(report["flagged"])


def test_evaluate_on_an_inverted_site_flags_intensity_and_recalibrates(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    _, bundle_path = trained
    site = _images(tmp_path / "site_b", 60, seed=11, invert=True, split="test")
    out = tmp_path / "eval"
    # no --shift: on by default for data that are not the bundle's training data
    args = ["evaluate", str(bundle_path), str(site), "--split", "test", "--out", str(out), "--bootstrap", "30"]
    assert main([*args, "--recalibrate", "20"]) == 0
    assert (out / "card.html").is_file() and (out / "metrics.json").is_file()
    report, flagged = _flagged(out)
    assert report["current"]["n_cases"] == 60 and report["reference"]["n_cases"] > 40
    assert set(INTENSITY) <= flagged, flagged
    features = {f["feature"]: f for f in report["features"]}
    assert features["intensity_mean"]["statistic"] == "KS" and features["intensity_mean"]["p_value"] < 1e-6
    assert not features["prevalence_square"]["flagged"]  # the same class balance
    rows = {m["metric"]: m for m in report["metrics"]}
    assert rows["auc"]["external"]["ci95"] is not None and rows["auc"]["internal"]["value"] is not None
    rec = report["recalibration"]
    assert rec["n_fit"] == 20 and rec["n_scored"] == 40 and rec["temperature"] > 0
    assert rec["ece_kind"] == "positive-class" and rec["ece_before"] >= 0 and rec["ece_after"] >= 0
    html = (out / "shift.html").read_text()
    assert "Shift report" in html and "Would recalibration restore calibration?" in html
    assert "S11P" not in html and "S11P" not in (out / "shift.json").read_text()  # no patient identifier


def test_evaluate_on_a_site_like_the_training_one_flags_no_intensity(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    _, bundle_path = trained
    site = _images(tmp_path / "site_c", 60, seed=12, split="test")
    out = tmp_path / "eval"
    args = ["evaluate", str(bundle_path), str(site), "--split", "test", "--out", str(out), "--bootstrap", "30"]
    assert main([*args, "--shift"]) == 0
    report, flagged = _flagged(out)
    assert not flagged & set(INTENSITY), flagged
    assert not report["shifted"], flagged
    assert report["recalibration"] is None


def test_shift_only_compares_predicted_class_shares_on_unlabelled_images(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    _, bundle_path = trained
    site = _images(tmp_path / "site_d", 30, seed=13, invert=True)
    out = tmp_path / "shift"
    assert main(["evaluate", str(bundle_path), str(site.parent / "img"), "--shift-only", "--out", str(out)]) == 0
    report, flagged = _flagged(out)
    assert report["current"]["n_cases"] == 30
    features = {f["feature"]: f for f in report["features"]}
    assert {"predicted prevalence_plain", "predicted prevalence_square"} <= set(features)
    assert "intensity_mean" in flagged and "intensity (raw)" in flagged
    assert not any(name.startswith("prevalence_") for name in features)  # only predicted shares: no labels given


def _outcome_task(root: Path, n_patients: int, seed: int, gamma: float = 1.0) -> Path:
    """An outcome task (image + age + sex, outcome "died"), 1-2 images per patient; ``gamma`` != 1 makes another
    site (a scanner with another grey-scale curve)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    rows = ["image,patient_id,died,age,sex"]
    for i in range(n_patients):
        died = i % 4 == 1
        age = int(rng.normal(75 if died else 55, 8))
        for j in range(1 + i % 2):
            pixels = rng.integers(0, 80, size=(36, 36)).astype(np.uint8)
            if died:
                pixels[8:18, 8:18] = 200
            curved = (255 * (pixels / 255.0) ** gamma).round().astype(np.uint8)
            Image.fromarray(curved).save(root / f"p{i:02d}_{j}.png")
            rows.append(f"p{i:02d}_{j}.png,Q{seed}P{i:02d},{int(died)},{age},{'MF'[i % 2]}")
    (root / "clinical.csv").write_text("\n".join(rows) + "\n")
    spec = {
        "table": "clinical.csv",
        "image_column": "image",
        "patient_column": "patient_id",
        "target": {"column": "died", "positive": ["1"], "negative": ["0"], "name": "died"},
        "fields": {"age": "numeric", "sex": "categorical"},
    }
    (root / "task.json").write_text(json.dumps(spec))
    return root / "task.json"


def test_outcome_bundle_records_its_fingerprint_and_a_site_with_another_grey_curve_is_flagged(tmp_path: Path) -> None:
    from medsight import tasks
    from medsight.tasks.outcome.plan import OutcomeOptions

    train_spec = _outcome_task(tmp_path / "site_a", 60, seed=1)
    bundle = tmp_path / "bundle"
    tasks.get("outcome").train(str(train_spec), bundle, OutcomeOptions(seed=0, epochs=2, image_size=32, batch_size=16))
    meta = load_bundle(bundle).meta
    recorded = meta["data"]["distribution"]
    assert recorded["n_cases"] == meta["data"]["n"]["train"]
    assert np.mean(recorded["cases"]["prevalence_died"]) == pytest.approx(
        meta["data"]["positives"]["train"] / meta["data"]["n"]["train"]
    )
    other = _outcome_task(tmp_path / "site_b", 80, seed=2, gamma=0.4)
    out = tmp_path / "eval"
    args = ["evaluate", str(bundle), str(other), "--split", "test", "--out", str(out), "--bootstrap", "30"]
    assert main([*args, "--recalibrate", "6"]) == 0
    report, flagged = _flagged(out)
    assert {"intensity_mean", "intensity (raw)"} <= flagged, flagged
    rows = {m["metric"]: m for m in report["metrics"]}
    assert rows["auc_image"]["external"]["ci95"] is not None and rows["auc_image"]["internal"]["value"] is not None
    rec = report["recalibration"]
    assert rec["n_fit"] >= 6 and rec["n_scored"] == report["current"]["n_cases"] - rec["n_fit"]
    assert rec["ece_kind"] == "positive-class" and rec["temperature"] > 0
    assert "Q2P" not in (out / "shift.json").read_text() and "Q2P" not in (out / "shift.html").read_text()


def test_a_task_the_shift_report_does_not_cover_is_named_with_those_it_does(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from medsight.monitoring.site import _require_covered

    with pytest.raises(MedsightError, match="covers segmentation, classification and outcome bundles, not detection"):
        _require_covered(SimpleNamespace(task="detection", path=tmp_path))  # type: ignore[arg-type]
