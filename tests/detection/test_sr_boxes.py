"""Predicting on a real DICOM radiograph writes an SR whose finding boxes are the boxes of predictions.json."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from detection.test_detection_cli import coco_subset  # noqa: F401  (pytest fixture: 20 real COVID CXRs)
from medsight import runtime
from medsight.serving.dicom_objects import read_sr
from medsight.tasks.detection import TASK, DetectionOptions
from serving.test_dicom_objects import dciodvfy_errors


@pytest.mark.slow
def test_dicom_predict_writes_sr_with_the_predicted_boxes(
    coco_subset: Path,  # noqa: F811
    shared_data: Path,
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "bundle"
    TASK.train(str(coco_subset), bundle, DetectionOptions(epochs=1, image_size=64, batch_size=8))  # tiny model
    meta_path = bundle / "bundle.json"
    meta = json.loads(meta_path.read_text())
    meta["operating_point"]["threshold"] = 0.0  # keep every detection so the SR surely holds boxes
    meta_path.write_text(json.dumps(meta))

    dicom = shared_data / "dicom_samples" / "pydicom_data" / "RG3_J2KR.dcm"
    out = tmp_path / "pred"
    model = runtime.load(bundle)
    runtime.write_predictions(model, model.predict([dicom]), out)
    entry = json.loads((out / "predictions.json").read_text())["predictions"][0]
    header = pydicom.dcmread(dicom, stop_before_pixels=True)
    assert entry["image_size"] == [int(header.Columns), int(header.Rows)]  # boxes are in the stored pixels
    assert entry["findings"], "no detections at threshold 0"

    sr_path = out / entry["dicom"]["sr"]
    assert dciodvfy_errors(sr_path) == []
    back = read_sr(sr_path)
    assert len(back) == len(entry["findings"])
    for f, expected in zip(back, entry["findings"], strict=True):
        assert f.label == expected["label"]
        assert f.probability == pytest.approx(expected["score"], abs=1e-6)
        assert f.box == pytest.approx(expected["box"], abs=1e-3)
        assert f.referenced_sop_instance_uids == (str(header.SOPInstanceUID),)
