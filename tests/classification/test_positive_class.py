"""The positive class: each data set declares which label is the disease, so that sensitivity means finding it.

BreastMNIST's labels are 0 = malignant, 1 = normal/benign; treating label 1 as positive made "sensitivity" the
recall of benign cases. These tests pin the meaning: sensitivity is the recall of malignant cases.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medsight.cli import main
from medsight.data import medmnist
from medsight.data.manifest import load_manifest
from medsight.errors import MedsightError
from medsight.tasks.classification.predict import ClassificationModel
from medsight.training.bundle import load_bundle

TRAIN = ["train", "--task", "classification"]


@pytest.fixture(scope="module")
def breast(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    out = tmp_path_factory.mktemp("positive") / "bundle"
    assert main([*TRAIN, "medmnist:breastmnist", "--out", str(out), "--epochs", "2", "--seed", "0"]) == 0
    return out


def _test_decisions(bundle_path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The BreastMNIST test labels and the bundle's decisions (label indices), through the deployed model."""
    model = ClassificationModel(load_bundle(bundle_path))
    data = medmnist.load("medmnist:breastmnist")
    test = data.split("test")
    probs = model.probabilities(test.images)
    names = model.label_names
    decisions = [
        names.index(model._result(Path("x.png"), i, img, p).decision)
        for i, (img, p) in enumerate(zip(test.images, probs, strict=True))
    ]
    return test.labels, np.asarray(decisions), names


def test_medmnist_declares_the_disease_as_positive(shared_data: Path) -> None:
    assert medmnist.load("medmnist:breastmnist").positive == "malignant"
    assert medmnist.load("medmnist:pneumoniamnist").positive == "pneumonia"
    for flag, label in medmnist.POSITIVE.items():  # every declared finding is one of that member's official labels
        assert label in medmnist.catalog()[flag]["labels"].values(), flag


def test_breastmnist_sensitivity_is_the_recall_of_malignant_cases(breast: Path, tmp_path: Path) -> None:
    meta = load_bundle(breast).meta
    assert meta["positive_class"] == "malignant" and meta["operating_point"]["applies_to"] == "malignant"
    out = tmp_path / "eval"
    assert main(["evaluate", str(breast), "medmnist:breastmnist", "--out", str(out), "--bootstrap", "50"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["positive_class"] == "malignant"
    labels, decisions, names = _test_decisions(breast)
    malignant = names.index("malignant")
    assert malignant == 0
    recall_malignant = np.mean(decisions[labels == malignant] == malignant)
    specificity = np.mean(decisions[labels != malignant] != malignant)
    assert metrics["metrics"]["sensitivity"]["value"] == pytest.approx(recall_malignant)
    assert metrics["metrics"]["specificity"]["value"] == pytest.approx(specificity)
    assert metrics["calibration"]["ece_kind"] == "positive-class"
    html = (out / "card.html").read_text()
    assert "Positive class: malignant" in html
    card = json.loads((out / "card.json").read_text())
    assert card["evaluation"]["positive_class"] == "malignant"


def test_evaluate_positive_overrides_the_bundle(breast: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval_benign"
    argv = ["evaluate", str(breast), "medmnist:breastmnist", "--out", str(out), "--bootstrap", "50"]
    assert main([*argv, "--positive", "normal, benign"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["positive_class"] == "normal, benign"
    labels, decisions, names = _test_decisions(breast)
    benign = names.index("normal, benign")
    # the same decisions, read for the other class: sensitivity and specificity swap roles
    assert metrics["metrics"]["sensitivity"]["value"] == pytest.approx(np.mean(decisions[labels == benign] == benign))
    assert metrics["metrics"]["specificity"]["value"] == pytest.approx(np.mean(decisions[labels != benign] != benign))


def test_unknown_positive_label_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from data.test_manifest import make_png_manifest

    csv = make_png_manifest(tmp_path / "set", n_patients=12)
    capsys.readouterr()
    assert main([*TRAIN, str(csv), "--out", str(tmp_path / "b"), "--epochs", "1", "--positive", "tumor"]) == 2
    err = capsys.readouterr().err
    assert "--positive tumor" in err and "clear, lesion" in err


def test_manifest_declares_its_positive_class_and_train_overrides_it(tmp_path: Path) -> None:
    from data.test_manifest import make_png_manifest

    csv = make_png_manifest(tmp_path / "set", n_patients=12)
    assert load_manifest(csv).positive is None  # nothing declared: the task falls back to the second label
    csv.with_suffix(".json").write_text(json.dumps({"positive": "clear"}))
    assert load_manifest(csv).positive == "clear"
    csv.with_suffix(".json").write_text(json.dumps({"positive": "tumour"}))
    with pytest.raises(MedsightError, match="tumour") as info:
        load_manifest(csv)
    assert "manifest.json" in str(info.value)
    csv.with_suffix(".json").write_text(json.dumps({"positive": "lesion"}))
    bundle = tmp_path / "bundle"
    assert main([*TRAIN, str(csv), "--out", str(bundle), "--epochs", "1", "--positive", "clear"]) == 0
    meta = load_bundle(bundle).meta
    assert meta["positive_class"] == "clear" and meta["operating_point"]["applies_to"] == "clear"
