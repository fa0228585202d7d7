"""Segmentation's ONNX Runtime predictor runs with the worker threads not spinning between calls (measured faster on
the streaming path: benchmarks/ort_spinning.py); the other tasks keep ONNX Runtime's default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from medsight.runtime import onnx_export
from medsight.runtime.onnx_export import OnnxPredictor
from medsight.tasks.segmentation.inference import onnx_predictor

SPINNING = "session.intra_op.allow_spinning"


def _identity_model(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1, 4, 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _spinning_entry(predictor: OnnxPredictor) -> str:
    options = predictor.session.get_session_options()
    try:
        return str(options.get_session_config_entry(SPINNING))
    except RuntimeError:  # not set: ONNX Runtime's default (spinning)
        return "default"


def test_onnx_predictor_spins_by_default_and_not_when_asked(tmp_path: Path) -> None:
    model = _identity_model(tmp_path / "identity.onnx")
    assert _spinning_entry(OnnxPredictor(model)) == "default"
    quiet = OnnxPredictor(model, spinning=False)
    assert _spinning_entry(quiet) == "0"
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    assert np.array_equal(quiet.run(x), x)  # the session still runs


def test_segmentation_predictor_does_not_spin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[OnnxPredictor] = []

    class Recording(OnnxPredictor):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    monkeypatch.setattr(onnx_export, "OnnxPredictor", Recording)
    run = onnx_predictor(_identity_model(tmp_path / "identity.onnx"), threads=1)
    x = torch.ones(2, 1, 4, 4)
    assert torch.equal(run(x), x)
    assert len(made) == 1 and _spinning_entry(made[0]) == "0"
