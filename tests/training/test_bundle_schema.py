"""bundle.json follows a versioned schema: checked when written and when loaded, with one clear error."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from medsight.errors import MedsightError
from medsight.training.bundle import FORMAT, load_bundle, schema, validate_meta, write_bundle_json


def _meta(task: str = "classification") -> dict[str, Any]:
    meta: dict[str, Any] = {
        "format": FORMAT,
        "task": task,
        "task_type": "binary",
        "label_names": ["normal", "pneumonia"],
        "input": {
            "spatial_dims": 2,
            "spatial_size": [28, 28],
            "n_channels": 1,
            "layout": "N,C,H,W",
            "dtype": "float32",
        },
        "plan": {"width": 16},
        "network": {"name": "monai.networks.nets.ResNet", "kwargs": {}, "parameters": 10},
        "data": {"source": "medmnist:pneumoniamnist"},
        "training": {"seed": 0, "epochs_run": 3, "stopped_by": "epochs", "seconds": 1.5},
        "calibration": {"temperature": 1.2},
        "operating_point": {"threshold": 0.4},
        "metrics": {"val": {"auc": 0.9}},
        "versions": {"medsight": "0.1.0", "torch": "2.14.1"},
        "created": "2026-11-26T00:00:00+00:00",
        "onnx": {"file": "model.onnx"},
    }
    return meta


def _bundle(tmp_path: Path, meta: dict[str, Any]) -> Path:
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "bundle.json").write_text(json.dumps(meta))
    (folder / "model.pt").write_bytes(b"weights")
    return folder


def test_schema_is_versioned_and_a_valid_bundle_loads(tmp_path: Path) -> None:
    assert schema()["$id"] == FORMAT == "medsight-bundle/2"
    bundle = load_bundle(_bundle(tmp_path, _meta()))
    assert bundle.task == "classification" and bundle.label_names == ["normal", "pneumonia"]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda m: m.update(format="medsight-bundle/3"), "newer medsight"),
        (lambda m: m.update(format="medsight-bundle/1"), "older medsight"),
        (lambda m: m.update(format="something-else"), "not a medsight bundle format"),
        (lambda m: m["input"].update(spatial_dims="2"), "at input/spatial_dims"),
        (lambda m: m.pop("label_names"), "'label_names' is a required property"),
        (lambda m: m.update(task="registration"), "at task"),
        (lambda m: m["calibration"].pop("temperature"), "'temperature' is a required property"),
        (lambda m: m.pop("operating_point"), "'operating_point' is a required property"),
        (lambda m: m["network"].update(name="os.system"), "at network/name"),
        (lambda m: m["training"].update(seconds=-1), "at training/seconds"),
    ],
)
def test_hand_edited_or_foreign_bundles_give_one_clear_error(tmp_path: Path, edit: Any, expected: str) -> None:
    meta = copy.deepcopy(_meta())
    edit(meta)
    folder = _bundle(tmp_path, meta)
    with pytest.raises(MedsightError) as info:
        load_bundle(folder)
    assert expected in str(info.value)
    assert str(folder / "bundle.json") in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("task", ["segmentation", "detection", "outcome"])
def test_each_task_has_its_own_required_keys(task: str) -> None:
    meta = _meta(task)
    meta.pop("plan")
    meta.pop("operating_point")
    with pytest.raises(MedsightError, match="required property"):
        validate_meta(meta)


def test_writing_validates_before_anything_is_written(tmp_path: Path) -> None:
    meta = _meta()
    meta["training"]["epochs_run"] = "three"
    with pytest.raises(MedsightError, match="training/epochs_run"):
        write_bundle_json(tmp_path, meta)
    assert not (tmp_path / "bundle.json").exists()
    good = _meta()
    write_bundle_json(tmp_path, good)
    assert json.loads((tmp_path / "bundle.json").read_text()) == good


def test_not_json_and_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(MedsightError, match=r"no bundle\.json"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text("{not json")
    with pytest.raises(MedsightError, match="not valid JSON"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text("[1, 2]")
    with pytest.raises(MedsightError, match="JSON object"):
        load_bundle(tmp_path)
