"""Outcome events are counted per patient as well as per image (patients have several images), and the outcome
bundle carries conformal sets and a deferral rule fitted on validation patients, applied by evaluate and predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsight import runtime, tasks
from medsight.data.clinical import load_outcome
from medsight.data.splits import recorded_split_seed
from medsight.evaluation import selective
from medsight.evaluation.conformal import SplitConformal
from medsight.tasks.outcome.data import event_counts
from medsight.tasks.outcome.plan import OutcomeOptions
from medsight.tasks.outcome.predict import OutcomeResult
from medsight.training.bundle import load_bundle


def _task_file(root: Path, images_per_patient: list[int], died: list[bool], seed: int = 0) -> Path:
    """A clinical table with several images per patient: patient i has images_per_patient[i] images, all with
    the patient's outcome."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = ["image,patient_id,died,age,sex"]
    for i, (n, d) in enumerate(zip(images_per_patient, died, strict=True)):
        age = int(rng.normal(75 if d else 55, 8))
        for j in range(n):
            pixels = rng.integers(0, 80, size=(36, 36)).astype(np.uint8)
            if d:
                pixels[8:18, 8:18] = 200
            Image.fromarray(pixels).save(root / f"p{i:02d}_{j}.png")
            rows.append(f"p{i:02d}_{j}.png,P{i:02d},{int(d)},{age},{'MF'[i % 2]}")
    (root / "clinical.csv").write_text("\n".join(rows) + "\n")
    spec = {
        "table": "clinical.csv",
        "image_column": "image",
        "patient_column": "patient_id",
        "target": {"column": "died", "positive": ["1"], "negative": ["0"], "name": "died"},
        "fields": {"age": "numeric", "sex": "categorical"},
        "attributes": ["sex", "age"],
    }
    (root / "task.json").write_text(json.dumps(spec))
    return root / "task.json"


def test_events_are_counted_per_patient_and_per_image(tmp_path: Path) -> None:
    # five patients: A 3 images died, B 2 died, C 1 alive, D 2 alive, E 1 died
    path = _task_file(tmp_path, [3, 2, 1, 2, 1], [True, True, False, False, True])
    data = load_outcome(str(path))
    counts = event_counts(data.y, data.patient_ids)
    assert counts["images"] == 9 and counts["patients"] == 5
    assert counts["images_with_event"] == 6 and counts["patients_with_event"] == 3
    assert counts["images_per_patient"] == {"mean": pytest.approx(9 / 5), "max": 3}
    # a subset (as a split would take) counts its own patients only
    sub = np.array([0, 1, 2, 5])  # A's three images and C's one
    part = event_counts(data.y[sub], [data.patient_ids[i] for i in sub])
    assert part["patients"] == 2 and part["patients_with_event"] == 1 and part["images_with_event"] == 3


def test_a_patient_with_mixed_image_labels_counts_once_as_an_event() -> None:
    counts = event_counts(np.array([0, 1, 0, 0]), ["A", "A", "B", "B"])
    assert counts["patients_with_event"] == 1 and counts["images_with_event"] == 1 and counts["patients"] == 2


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("events")
    n = [1 + (i % 3) for i in range(45)]  # 1-3 images per patient, 90 images
    path = _task_file(root / "set", n, [i % 4 == 1 for i in range(45)], seed=1)
    out = root / "bundle"
    tasks.get("outcome").train(str(path), out, OutcomeOptions(seed=0, epochs=2, image_size=32, batch_size=16))
    return path, out


def test_outcome_bundle_holds_a_rule_fitted_on_validation_patients(bundle: tuple[Path, Path]) -> None:
    path, out = bundle
    meta = load_bundle(out).meta
    sp = meta["selective_prediction"]
    data = load_outcome(str(path))
    val = data.split(recorded_split_seed(meta))["val"]  # the split the bundle recorded, whatever seed made it
    val_patients = {data.patient_ids[i] for i in val}
    assert sp["conformal"]["calibration_unit"].startswith("patient")
    assert sp["conformal"]["n_calibration"] == len(val_patients) and sp["conformal"]["fitted_on"] == "val"
    assert meta["data"]["patients_with_event"]["val"] == len({data.patient_ids[i] for i in val if data.y[i]})
    assert meta["data"]["positives"]["val"] == int(data.y[val].sum())


def test_evaluate_counts_patients_and_applies_the_stored_rule(
    bundle: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, out = bundle

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a conformal threshold or deferral rule was fitted during evaluation")

    monkeypatch.setattr(SplitConformal, "fit", refuse)
    monkeypatch.setattr(selective, "fit_deferral", refuse)
    r = tasks.get("outcome").evaluate(out, str(path), "test", tmp_path / "eval", 50)
    data = load_outcome(str(path))
    test = data.split(recorded_split_seed(load_bundle(out).meta))["test"]
    expected = event_counts(data.y[test], [data.patient_ids[i] for i in test])
    assert r["counts"] == expected
    assert r["counts"]["patients_with_event"] < r["counts"]["images_with_event"]  # several images per patient
    assert "per image" in r["metrics_unit"] and "patients" in r["ci95"]
    assert "selected_auc_per_patient" in r["metrics"]
    sp = r["selective_prediction"]
    assert sp["rule"] == load_bundle(out).meta["selective_prediction"] and sp["n"] == len(test)
    card = (tmp_path / "eval" / "card.html").read_text()
    assert "Uncertainty and deferral" in card and "alt='Risk-coverage'" in card
    assert f"{expected['patients_with_event']} patients with the outcome" in card


def test_outcome_predictions_carry_the_set_and_the_deferral(bundle: tuple[Path, Path]) -> None:
    path, out = bundle
    (r,) = runtime.load(out).predict([path.parent / "p00_0.png"])
    assert isinstance(r, OutcomeResult) and r.deferral is not None
    entry = r.to_json()
    assert set(entry["prediction_set"]) <= {"died", "not died"} and isinstance(entry["defer_to_radiologist"], bool)
    assert entry["coverage_target"] == pytest.approx(0.9)
