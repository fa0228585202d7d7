"""The GPU path's logic, exercised on the CPU (issue 14, section 3).

On an H100 classification training crashed whenever the class-balanced loss was on: the loss's class weights
stayed on the CPU while the model and batches moved to CUDA. PyTorch's ``meta`` device shows the same mismatch
without a GPU, so these tests run everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from medsight import config
from medsight.errors import MedsightError
from medsight.training import trainer


class _Captured(Exception):
    pass


def test_the_array_trainer_moves_a_weighted_loss_to_the_training_device(monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[Any] = []

    class CaptureEngine:
        def __init__(self, model: nn.Module, optimizer: Any, step: Any, *args: Any, **kwargs: Any) -> None:
            steps.append(step)

        def run(self) -> None:
            raise _Captured

    monkeypatch.setattr(trainer, "Engine", CaptureEngine)
    model = nn.Linear(3, 2)
    images = np.zeros((4, 3), dtype=np.float32)
    labels = np.array([0, 1, 1, 1])
    weighted = nn.CrossEntropyLoss(weight=torch.tensor([3.0, 1.0]))  # class-balanced: weights made on the CPU
    with pytest.raises(_Captured):
        trainer.fit(
            model,
            trainer.AugmentedArrays(images, labels, None),
            images,
            weighted,
            lambda logits: (0.0, {}),
            trainer.TrainConfig(device="meta"),
        )
    model.to("meta")  # what the engine does first
    loss, _ = steps[0]((torch.zeros(4, 3), torch.tensor([0, 1, 1, 1])))
    assert loss.device.type == "meta"


def test_asking_for_cuda_without_a_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for value, expected in (("cuda", r"MEDSIGHT_DEVICE=cuda but this machine has no CUDA GPU"),
                            ("cuda:1", r"MEDSIGHT_DEVICE=cuda:1 but this machine has no CUDA GPU"),
                            ("tpu", r"MEDSIGHT_DEVICE must be cpu, cuda or cuda:N")):
        monkeypatch.setenv("MEDSIGHT_DEVICE", value)
        config.device.cache_clear()  # the device is read once per process
        with pytest.raises(MedsightError, match=expected):
            config.device()
    monkeypatch.setenv("MEDSIGHT_DEVICE", "cpu")
    config.device.cache_clear()
    assert config.device() == "cpu"
    monkeypatch.delenv("MEDSIGHT_DEVICE")
    config.device.cache_clear()
    assert config.device() == "cpu"
    config.device.cache_clear()


def test_3d_inference_runs_on_the_gpu_when_onnx_runtime_cannot() -> None:
    """On an H100, evaluation ran on ONNX Runtime's CPU provider (2-2.5 s per Hippocampus case): with a GPU and a
    CPU-only ONNX Runtime, PyTorch on CUDA runs the model instead."""
    from medsight.tasks.segmentation.predict import inference_engine

    assert inference_engine("cuda", True, ["CPUExecutionProvider"]) == "torch"
    assert inference_engine("cuda:0", True, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == "onnx"
    assert inference_engine("cpu", True, ["CPUExecutionProvider"]) == "onnx"
    assert inference_engine("cpu", False, ["CPUExecutionProvider"]) == "torch"
