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


def test_loader_workers_augment_differently_and_reproducibly() -> None:
    """On a GPU the augmentation runs in worker processes (it held an H100 to about 600 images/s on one core).
    Each worker must get its own random state (copies of one seeded chain would augment every worker's batches
    alike) and the same seed must give the same batches run after run."""
    from medsight.tasks.classification.steps import loader, loader_workers
    from medsight.transforms import augmentation

    assert loader_workers("cpu", 16) == 0
    assert loader_workers("cuda", 16) == 8 and loader_workers("cuda:0", 2) == 1 and loader_workers("cuda", None) == 1
    images = np.tile(np.linspace(0, 1, 28 * 28, dtype=np.float32).reshape(1, 1, 28, 28), (8, 1, 1, 1))
    labels = np.zeros(8, dtype=np.int64)

    def batches() -> list[np.ndarray]:
        chain = augmentation("xray", 2, seed=0)
        return [x.numpy() for x, _ in loader(images, labels, chain, batch_size=2, seed=0, workers=2)]

    first, again = batches(), batches()
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))  # reproducible
    # batches 0 and 1 come from workers 0 and 1 (identical inputs): a plain torch DataLoader, whose workers copy
    # one random state, makes them equal
    assert not np.array_equal(first[0], first[1])
