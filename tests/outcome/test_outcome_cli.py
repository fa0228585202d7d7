"""Outcome through the same CLI as every task, on the real COVID chest X-ray set (ICU admission): train, evaluate,
predict, the warm runtime model, and bundles that must not load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medsight import runtime, tasks
from medsight.cli import main
from medsight.data.clinical import load_outcome
from medsight.tasks.outcome.plan import OutcomePlan
from medsight.tasks.outcome.predict import OutcomeModel, OutcomeResult
from medsight.training.bundle import load_bundle


@pytest.fixture(scope="module")
def spec(shared_data: Path) -> str:
    return f"{shared_data / 'covid_cxr_lung_boxes'}#icu"


@pytest.fixture(scope="module")
def bundle(spec: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short training run (1 epoch) shared by the tests of this module."""
    out = tmp_path_factory.mktemp("outcome") / "bundle"
    assert main(["train", spec, "--task", "outcome", "--out", str(out), "--epochs", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def clinical_csv(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    table = tmp_path_factory.mktemp("inputs") / "clinical.csv"
    images = sorted((shared_data / "covid_cxr_lung_boxes" / "images_384").iterdir())
    table.write_text(f"image,age,sex,temperature\n{images[0]},71,F,\n{images[1]},,M,38.2\n")
    return table


def test_patient_level_split_has_no_shared_patient(shared_data: Path) -> None:
    for target in ("survival", "icu"):
        data = load_outcome(f"{shared_data / 'covid_cxr_lung_boxes'}#{target}")
        parts = data.split(seed=0)
        owners = {k: {data.patient_ids[i] for i in v} for k, v in parts.items()}
        assert not (owners["train"] & owners["val"]) and not (owners["train"] & owners["test"])
        assert not (owners["val"] & owners["test"])
        assert sum(len(v) for v in parts.values()) == len(data.y)
        assert data.excluded["image file absent"] == 7 and data.excluded["outcome not recorded"] > 0


def test_the_task_recognises_outcome_specs_only(shared_data: Path, spec: str) -> None:
    task = tasks.get("outcome")
    assert task.recognises(spec)
    assert not task.recognises(str(shared_data / "covid_cxr_lung_boxes"))  # no outcome named: detection's data
    assert tasks.detect(spec) == "outcome"
    assert tasks.detect(str(shared_data / "covid_cxr_lung_boxes")) == "detection"


def test_train_evaluate_predict(bundle: Path, spec: str, clinical_csv: Path, tmp_path: Path) -> None:
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["task"] == "outcome" and meta["selection"]["selected"] in (
        "image",
        "clinical",
        "fused_embedding",
        "fused_late",
    )
    assert meta["options"] == {"seed": 0, "epochs": 1} and meta["training"]["epochs_run"] == 1
    assert meta["onnx"]["outputs"]["logits"] == [0, 2]
    ev = tmp_path / "eval"
    assert main(["evaluate", str(bundle), spec, "--out", str(ev), "--bootstrap", "20"]) == 0
    m = json.loads((ev / "metrics.json").read_text())
    assert {"auc_image", "auc_clinical", "auc_fused_embedding", "auc_fused_late"} <= set(m["metrics"])
    assert set(m["subgroups"]) == {"sex", "age"}
    assert "(image)" in m["importance"]["fields"] and "age" in m["importance"]["fields"]
    html = (ev / "card.html").read_text()
    assert "Models side by side" in html and "Subgroups" in html and "Grad-CAM" in html
    pred = tmp_path / "pred"
    assert main(["predict", str(bundle), str(clinical_csv), "--out", str(pred), "--explain"]) == 0
    out = json.loads((pred / "predictions.json").read_text())["predictions"][0]
    assert "temperature" in out["missing_fields"] and "age" not in out["missing_fields"]
    assert out["summary"].startswith("p(went to ICU)") and (pred / out["heatmap"]["image"]).is_file()
    assert (pred / out["heatmap"]["array"]).is_file() and out["heatmap"]["method"] == "Grad-CAM"
    assert out["decision"] in ("went to ICU", "not went to ICU") and set(out["probabilities"]) == {
        "image",
        "clinical",
        "fused_embedding",
        "fused_late",
    }
    assert "/" not in out["input"]  # the file name, never its folder


def test_typed_plan_round_trips_through_bundle_json(bundle: Path) -> None:
    loaded = load_bundle(bundle)
    plan = loaded.plan(OutcomePlan)
    assert isinstance(plan, OutcomePlan) and plan.epochs == 1 and plan.image_size == 128
    assert plan.to_json() == loaded.meta["plan"]
    assert loaded.meta["input"]["spatial_size"] == [plan.image_size] * 2
    assert loaded.meta["network"]["kwargs"] == plan.network


def test_runtime_results_equal_what_predict_writes(bundle: Path, clinical_csv: Path, tmp_path: Path) -> None:
    model = runtime.load(bundle)
    assert isinstance(model, OutcomeModel)
    results = model.predict([clinical_csv])
    assert len(results) == 2 and all(isinstance(r, OutcomeResult) for r in results)
    first = results[0]
    assert isinstance(first, OutcomeResult)
    assert first.probability == first.probabilities[first.model]
    assert first.positive == (first.probability >= first.threshold)
    missing = ["offset", "temperature", "pO2_saturation", "leukocyte_count", "neutrophil_count", "lymphocyte_count"]
    assert first.missing_fields == missing
    assert not list(tmp_path.iterdir())  # predict writes nothing
    pred = tmp_path / "pred"
    assert main(["predict", str(bundle), str(clinical_csv), "--out", str(pred)]) == 0
    written = json.loads((pred / "predictions.json").read_text())
    assert written["task"] == "outcome"
    assert written["predictions"] == json.loads(json.dumps([r.to_json() for r in model.predict([clinical_csv])]))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["input"].update(spatial_size="128"), "at input/spatial_size"),
        (lambda m: m.pop("selection"), "'selection' is a required property"),
        (lambda m: m["plan"].pop("image_size"), "OutcomePlan: missing ['image_size']"),
        (lambda m: m.update(format="medsight-bundle/9"), "newer medsight"),
    ],
)
def test_a_hand_edited_bundle_fails_to_load_with_one_line(
    bundle: Path, clinical_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: object, message: str
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    meta = json.loads((broken / "bundle.json").read_text())
    assert callable(edit)
    edit(meta)
    (broken / "bundle.json").write_text(json.dumps(meta))
    assert main(["predict", str(broken), str(clinical_csv), "--out", str(tmp_path / "pred")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and "bundle.json" in err
    assert not (tmp_path / "pred").exists()


def test_a_dicom_input_gets_an_sr(bundle: Path, shared_data: Path, tmp_path: Path) -> None:
    dcm = shared_data / "dicom_samples" / "pydicom_data" / "RG3_J2KR.dcm"
    pred = tmp_path / "pred"
    assert main(["predict", str(bundle), str(dcm), "--out", str(pred)]) == 0
    out = json.loads((pred / "predictions.json").read_text())["predictions"][0]
    assert out["input"] == "RG3_J2KR.dcm" and len(out["missing_fields"]) == 8
    assert (pred / out["dicom"]["sr"]).is_file()
