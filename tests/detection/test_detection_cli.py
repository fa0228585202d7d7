"""Detection through the same CLI as every task: train → evaluate → predict, on a small real COCO subset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsight.cli import main
from medsight.pipelines import detect_task


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


def test_train_evaluate_predict(coco_subset: Path, tmp_path: Path) -> None:
    assert detect_task(str(coco_subset)) == "detection"
    bundle = tmp_path / "bundle"
    assert main(["train", str(coco_subset), "--out", str(bundle), "--epochs", "1"]) == 0
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["task"] == "detection" and meta["label_names"] == ["Right Lung", "Left Lung"]
    assert meta["network"]["name"] == "medsight.tasks.detection.retinanet"
    ev = tmp_path / "eval"
    assert main(["evaluate", str(bundle), str(coco_subset), "--out", str(ev), "--bootstrap", "20"]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert {"ap50_right_lung", "ap50_left_lung", "map50", "image_auc"} <= set(metrics["metrics"])
    assert "ci95" in metrics["metrics"]["map50"] and (ev / "card.html").is_file()
    image = Path(json.loads((coco_subset / "annotations.json").read_text())["images"][0]["file_name"])
    pred = tmp_path / "pred"
    assert main(["predict", str(bundle), str(image), "--out", str(pred)]) == 0
    out = json.loads((pred / "predictions.json").read_text())["predictions"][0]
    assert out["summary"] and out["image_size"][1] == 384
