"""Detection through the same CLI as every task: train → evaluate → predict, on a small real COCO subset; the
contract around it (options, typed plan, warm runtime, schema-checked bundle.json)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medsight import runtime, tasks
from medsight.cli import main
from medsight.errors import MedsightError
from medsight.io.images import read_image
from medsight.tasks.detection import DetectionOptions, DetectionPlan
from medsight.tasks.detection.data import prepare
from medsight.tasks.detection.predict import BoxFinding, DetectionResult
from medsight.training.bundle import load_bundle


@pytest.fixture(scope="module")
def coco_subset(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """20 COVID images of 20 different patients, as a COCO folder whose file names point at the staged JPEGs."""
    src = shared_data / "covid_cxr_lung_boxes"
    coco = json.loads((src / "annotations.json").read_text())
    staged = {}
    for line in (src / "resize_manifest.csv").read_text().splitlines()[1:]:
        name, stage = line.split(",")[:2]
        staged[name] = stage
    images, seen = [], set()
    for img in coco["images"]:
        pid = img["metadata"]["patientid"]
        if pid in seen or img["file_name"] not in staged or not (src / staged[img["file_name"]]).is_file():
            continue
        seen.add(pid)
        images.append({**img, "file_name": str(src / staged[img["file_name"]])})
        if len(images) == 20:
            break
    ids = {i["id"] for i in images}
    sub = {**coco, "images": images, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}
    folder = tmp_path_factory.mktemp("coco")
    (folder / "annotations.json").write_text(json.dumps(sub))
    return folder


@pytest.fixture(scope="module")
def bundle(coco_subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch bundle trained through the CLI."""
    out = tmp_path_factory.mktemp("det") / "bundle"
    assert main(["train", str(coco_subset), "--task", "detection", "--out", str(out), "--epochs", "1"]) == 0
    return out


def _first_image(coco_subset: Path) -> Path:
    return Path(json.loads((coco_subset / "annotations.json").read_text())["images"][0]["file_name"])


def test_train_evaluate_predict(coco_subset: Path, bundle: Path, tmp_path: Path) -> None:
    # ``medsight train`` without --task picks detection for COCO data (segmentation, asked first, does not claim it).
    assert tasks.detect(str(coco_subset)) == "detection"
    assert tasks.get("detection").recognises(str(coco_subset))
    assert not tasks.get("detection").recognises(str(coco_subset) + "#outcome")
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["task"] == "detection" and meta["label_names"] == ["Right Lung", "Left Lung"]
    assert meta["network"]["name"] == "medsight.tasks.detection.network.retinanet"
    assert meta["options"] == {"seed": 0, "epochs": 1} and meta["training"]["epochs_run"] == 1
    ev = tmp_path / "eval"
    assert main(["evaluate", str(bundle), str(coco_subset), "--out", str(ev), "--bootstrap", "20"]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert {"ap50_right_lung", "ap50_left_lung", "map50", "image_auc"} <= set(metrics["metrics"])
    assert "ci95" in metrics["metrics"]["map50"] and (ev / "card.html").is_file()
    assert metrics["inference_engine"] == "onnxruntime"
    pred = tmp_path / "pred"
    assert main(["predict", str(bundle), str(_first_image(coco_subset)), "--out", str(pred)]) == 0
    out = json.loads((pred / "predictions.json").read_text())["predictions"][0]
    assert out["summary"] and out["image_size"][1] == 384
    assert (pred / out["files"]["overlay"]).is_file()


def test_an_option_detection_does_not_take_is_rejected_by_name(
    coco_subset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(MedsightError, match="--fold"):
        DetectionOptions.from_mapping({"fold": 1}, "detection")
    args = ["train", str(coco_subset), "--task", "detection", "--out", str(tmp_path / "b"), "--class-balance", "on"]
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--class-balance" in err[0], err
    assert not (tmp_path / "b").exists()


def test_the_typed_plan_round_trips_through_bundle_json(bundle: Path) -> None:
    meta = json.loads((bundle / "bundle.json").read_text())
    plan = load_bundle(bundle).plan(DetectionPlan)
    assert isinstance(plan, DetectionPlan) and plan.to_json() == meta["plan"]
    assert DetectionPlan.from_json(plan.to_json()) == plan
    assert plan.kind == "objects" and plan.selection == "map50" and not plan.flip
    assert plan.epochs == 1 and plan.image_size == 256 and plan.network.num_classes == 2
    assert plan.network.to_json() == meta["network"]["kwargs"] and len(plan.anchor_shapes) == 3


def test_the_warm_runtime_returns_what_predict_writes(coco_subset: Path, bundle: Path, tmp_path: Path) -> None:
    images = [_first_image(coco_subset), _first_image(coco_subset)]
    model = runtime.load(bundle)
    results = model.predict(images)
    assert [type(r) for r in results] == [DetectionResult, DetectionResult]
    assert all(isinstance(f, BoxFinding) for r in results for f in r.findings)  # type: ignore[attr-defined]
    assert not list(tmp_path.iterdir())  # predict writes nothing
    again = model.predict(images)  # the same warm model, run twice, gives the same results
    assert [r.to_json() for r in again] == [r.to_json() for r in results]
    pred = tmp_path / "pred"
    assert main(["predict", str(bundle), *map(str, images), "--out", str(pred)]) == 0
    written = json.loads((pred / "predictions.json").read_text())["predictions"]
    runtime.write_predictions(model, results, tmp_path / "mine")  # fills the files names as the CLI does
    assert [r.to_json() for r in results] == written
    assert written[0]["files"]["overlay"] != written[1]["files"]["overlay"]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda m: m["input"].update(spatial_size="256"), "at input/spatial_size"),
        (lambda m: m.pop("operating_point"), "'operating_point' is a required property"),
        (lambda m: m["plan"].update(anchors=[1]), "DetectionPlan: unknown key(s) ['anchors']"),
        (lambda m: m.update(format="medsight-bundle/9"), "written by a newer medsight"),
    ],
)
def test_a_hand_edited_bundle_fails_to_load_with_one_clear_line(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], edit, expected: str
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    meta = json.loads((broken / "bundle.json").read_text())
    edit(meta)
    (broken / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(MedsightError) as info:
        runtime.load(broken)
    assert expected in str(info.value)
    assert main(["predict", str(broken), str(bundle / "bundle.json"), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_without_onnx_the_model_runs_the_pytorch_network_alike(coco_subset: Path, bundle: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(bundle, plain)
    for f in plain.glob("model.onnx*"):
        f.unlink()
    meta = json.loads((plain / "bundle.json").read_text())
    meta["onnx"] = {"file": None, "error": "removed for the test"}
    (plain / "bundle.json").write_text(json.dumps(meta))
    images = [_first_image(coco_subset)]
    ort_model, torch_model = runtime.load(bundle), runtime.load(plain)
    assert (ort_model.engine, torch_model.engine) == ("onnxruntime", "pytorch")  # type: ignore[attr-defined]
    a, b = ort_model.predict(images)[0], torch_model.predict(images)[0]
    assert isinstance(a, DetectionResult) and isinstance(b, DetectionResult)
    assert (a.image_size, a.threshold) == (b.image_size, b.threshold)
    prepared, scale = prepare(read_image(images[0]), 256)
    da = ort_model.detect(prepared[None], [scale])[0]  # type: ignore[attr-defined]
    db = torch_model.detect(prepared[None], [scale])[0]  # type: ignore[attr-defined]
    assert len(da.scores) > 0 and len(da.scores) == len(db.scores)  # every box above the 0.02 pre-filter
    assert np.allclose(da.scores[:5], db.scores[:5], atol=1e-3) and np.allclose(da.boxes[:5], db.boxes[:5], atol=0.05)


def test_predict_prints_no_library_chatter(coco_subset: Path, bundle: Path, tmp_path: Path) -> None:
    """MONAI's detector logs "Running ATSS Matching ..." and "Sampling hard negatives ..." on the root logger at
    INFO each time one is built; `medsight predict` must print its findings and nothing of that."""
    import subprocess
    import sys

    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "medsight.cli",
            "predict",
            str(bundle),
            str(_first_image(coco_subset)),
            "--out",
            str(tmp_path / "p"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "finding" in run.stdout
    for chatter in ("Running ATSS Matching", "Sampling hard negatives"):
        assert chatter not in run.stderr and chatter not in run.stdout
