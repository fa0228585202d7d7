"""Conformal sets and deferral in classification: fitted on validation at training, stored in the bundle, only
applied by evaluate (never refitted on test) and predict, and written to metrics.json, the card and
predictions.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medsight import runtime
from medsight.cli import main
from medsight.data.splits import recorded_split_seed
from medsight.evaluation import conformal, selective
from medsight.evaluation.conformal import SplitConformal
from medsight.evaluation.selective import REASON_AMBIGUOUS, SelectivePrediction
from medsight.tasks.classification.data import load_like
from medsight.tasks.classification.predict import ClassificationResult, decided_labels
from medsight.training.bundle import load_bundle


def _binary_manifest(root: Path) -> Path:
    """80 one-image patients: a faint square (label "square") or none ("plain"), noisy enough to leave doubt."""
    rng = np.random.default_rng(3)
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(80):
        kind = ("square", "plain")[i % 2]
        img = rng.normal(60, 25, (24, 24))
        if kind == "square":
            img[6:14, 6:14] += 45
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / "img" / f"{i}.png")
        rows.append({"path": f"img/{i}.png", "label": kind, "patient_id": f"P{i}"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("deferral")
    csv = _binary_manifest(root / "set")
    bundle = root / "bundle"
    args = ["train", "--task", "classification", str(csv), "--out", str(bundle), "--epochs", "2", "--batch-size", "16"]
    assert main(args) == 0
    return csv, bundle


def _val_probs(bundle_path: Path, csv: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    bundle = load_bundle(bundle_path)
    model = runtime.load(bundle)
    data = load_like(bundle, str(csv), seed=recorded_split_seed(bundle.meta))  # the split the bundle recorded
    val = data.split("val")
    probs = model.probabilities(val.images)  # type: ignore[attr-defined]
    return probs, val.labels, decided_labels("binary", probs, bundle.meta["operating_point"])


def test_the_stored_threshold_is_the_validation_one(trained: tuple[Path, Path]) -> None:
    csv, bundle_path = trained
    stored = load_bundle(bundle_path).meta["selective_prediction"]
    assert stored["conformal"]["fitted_on"] == "val" and stored["deferral"]["chosen_on"] == "val"
    assert stored["conformal"]["alpha"] == 0.1 and stored["conformal"]["score"] == "lac"
    probs, labels, decided = _val_probs(bundle_path, csv)
    assert stored["conformal"]["n_calibration"] == len(labels)
    refit = SelectivePrediction.fit(probs, labels, decided, alpha=0.1)
    assert stored["conformal"]["quantile"] == pytest.approx(refit.conformal.quantile_, abs=1e-5)
    assert stored["deferral"]["confidence_threshold"] == pytest.approx(refit.deferral.confidence_threshold, abs=1e-5)


def test_evaluate_applies_the_stored_rule_without_refitting(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv, bundle_path = trained

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a conformal threshold or deferral rule was fitted during evaluation")

    monkeypatch.setattr(SplitConformal, "fit", refuse)
    monkeypatch.setattr(selective, "fit_deferral", refuse)
    monkeypatch.setattr(conformal, "conformal_quantile", refuse)
    out = tmp_path / "eval"
    args = ["evaluate", str(bundle_path), str(csv), "--split", "test", "--out", str(out), "--bootstrap", "50"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    sp = metrics["selective_prediction"]
    assert sp["rule"] == load_bundle(bundle_path).meta["selective_prediction"]
    m = sp["metrics"]
    for key in ("coverage", "mean_set_size", "share_deferred", "error_kept", "error_deferred", "error_all"):
        assert key in m
    assert 0 <= m["coverage"]["value"] <= 1 and 0 <= m["share_deferred"]["value"] <= 1
    lo, hi = m["coverage"]["ci95"]
    assert lo <= m["coverage"]["value"] <= hi
    assert sp["n"] == metrics["n"] and sum(sp["set_size_counts"].values()) == metrics["n"]
    rc = sp["risk_coverage"]
    assert rc["coverage"][-1] == 1.0 and np.all(np.diff(rc["coverage"]) > 0)
    assert rc["risk"][-1] == pytest.approx(m["error_all"]["value"])
    card = (out / "card.html").read_text()
    assert "Uncertainty and deferral" in card and "AURC" in card and "alt='Risk-coverage'" in card
    assert (out / "figures" / "risk_coverage.png").is_file()


def test_predict_writes_the_set_and_defers_ambiguous_cases(trained: tuple[Path, Path], tmp_path: Path) -> None:
    csv, bundle_path = trained
    image = csv.parent / "img" / "0.png"
    assert main(["predict", str(bundle_path), str(image), "--out", str(tmp_path / "p")]) == 0
    entry = json.loads((tmp_path / "p" / "predictions.json").read_text())["predictions"][0]
    assert isinstance(entry["defer_to_radiologist"], bool) and entry["coverage_target"] == pytest.approx(0.9)
    assert set(entry["prediction_set"]) <= {"plain", "square"}
    assert (entry["defer_reason"] is None) == (not entry["defer_to_radiologist"])

    # a rule whose sets hold every label: every case is ambiguous and goes to the radiologist
    edited = tmp_path / "edited"
    edited.mkdir()
    for f in bundle_path.iterdir():
        (edited / f.name).write_bytes(f.read_bytes())
    meta = json.loads((edited / "bundle.json").read_text())
    meta["selective_prediction"]["conformal"]["quantile"] = 1.0
    (edited / "bundle.json").write_text(json.dumps(meta))
    (r,) = runtime.load(edited).predict([image])
    assert isinstance(r, ClassificationResult) and r.deferral is not None
    assert r.deferral.defer_to_radiologist and REASON_AMBIGUOUS in r.deferral.reasons
    assert sorted(r.deferral.prediction_set) == ["plain", "square"]
    assert r.to_json()["defer_reason"].startswith(REASON_AMBIGUOUS) and "defer to radiologist" in r.summary()

    # a bundle from before conformal prediction says so instead of claiming a case is safe
    del meta["selective_prediction"]
    (edited / "bundle.json").write_text(json.dumps(meta))
    entry = runtime.load(edited).predict([image])[0].to_json()
    assert entry["prediction_set"] is None and entry["defer_to_radiologist"] is None
    assert "no deferral rule" in entry["defer_reason"]
