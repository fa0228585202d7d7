"""The training step and batches, shared by training and by the planner's speed measurement.

The planner times a few iterations of exactly what training will run (same network, batch size, loss,
augmentation and device), so the epochs it plans and the time it announces come from this machine as it is now.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from medsight.distributed import ddp
from medsight.training.engine import prefetch
from medsight.training.trainer import AugmentedArrays, predict_logits

Batch = tuple[torch.Tensor, torch.Tensor]

#: Batch size of validation and prediction passes (memory only; results do not depend on it).
EVAL_BATCH = 256


def make_step(
    model: nn.Module, loss: nn.Module, device: str, mixup: float = 0.0, seed: int = 0
) -> Callable[[Batch], tuple[torch.Tensor, dict[str, float]]]:
    """One optimisation step's forward pass: batch in, loss out (the engine does backward and the update).

    With ``mixup`` (the Beta parameter α > 0; Zhang et al., ICLR 2018) each batch is blended with a shuffled copy
    of itself by one λ ~ Beta(α, α), and the loss is the same blend of the losses against both sets of labels, which
    holds for every loss here (cross-entropy, class-balanced, soft ordinal, BCE). Written here rather than taken
    from MONAI: ``monai.transforms.MixUp`` (1.6) blends only image-shaped labels (class labels raise "Unexpected
    number of dimensions") and needs every batch the same size (an epoch's last, smaller batch raises).
    """
    loss = loss.to(device)
    rng = np.random.default_rng(seed)  # λ and the pairing repeat with the seed
    pairing = torch.Generator().manual_seed(seed)

    def step(batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        xb, yb = batch
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        if mixup <= 0:
            return loss(model(xb), yb), {}
        lam = float(rng.beta(mixup, mixup))
        other = torch.randperm(len(xb), generator=pairing).to(xb.device)
        out = model(lam * xb + (1 - lam) * xb[other])
        return lam * loss(out, yb) + (1 - lam) * loss(out, yb[other]), {}

    return step


def loader_workers(device: str, cpus: int | None) -> int:
    """Processes that augment batches beside training: none on the CPU (they would take the cores the model
    trains on), and on a GPU all but one core, at most 8.

    Measured on an H100 with augmentation in the training process: PneumoniaMNIST trained at about 600 images/s
    (7.9 s per epoch), with the GPU waiting on per-image augmentation on one CPU core.
    """
    if not device.startswith("cuda"):
        return 0
    return max(1, min(8, (cpus or 1) - 1))


def loader(
    images: np.ndarray,
    labels: np.ndarray,
    augment: Callable | None,
    batch_size: int,
    seed: int,
    device: str = "cpu",
    workers: int | None = None,
) -> DataLoader:
    """Shuffled, augmented batches; the generator is seeded so the same seed gives the same batches.

    With worker processes (``workers``, default :func:`loader_workers`) MONAI's DataLoader gives each worker its
    own random state for the augmentation, derived from the seeded generator: batches differ between workers and
    are the same from run to run. On CUDA, batches come in pinned memory for asynchronous copies.
    """
    from monai.data import DataLoader as MonaiDataLoader

    n_workers = loader_workers(device, os.cpu_count()) if workers is None else workers
    generator = torch.Generator().manual_seed(seed)
    data = AugmentedArrays(images, labels, augment)
    # one of several DDP ranks: each loads and augments only its part of every global batch
    batching: dict[str, Any] = (
        {"batch_sampler": ddp.RankBatches(len(data), batch_size, generator)}
        if ddp.active()
        else {"batch_size": batch_size, "shuffle": True, "generator": generator}
    )
    if n_workers == 0:
        return DataLoader(data, **batching)
    return MonaiDataLoader(
        data,
        **batching,
        num_workers=n_workers,
        pin_memory=device.startswith("cuda"),
        persistent_workers=True,
    )


def epoch_batches(batches: DataLoader) -> Callable[[int], Iterator[Batch]]:
    """Each epoch's batches, produced on a background thread so augmentation overlaps the optimisation step."""
    return lambda epoch: prefetch(iter(batches))


@dataclass
class Speed:
    """What the planner measured: seconds per training iteration and per validation pass."""

    seconds_per_iteration: float
    validation_seconds: float
    iterations_timed: int


def measure_speed(
    model: nn.Module,
    loss: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    augment: Callable | None,
    val_images: np.ndarray,
    batch_size: int,
    lr: float,
    device: str,
    max_iterations: int = 3,
    max_seconds: float = 20.0,
) -> Speed:
    """Time training iterations (after one untimed warm-up) on a throw-away copy of ``model``, and one
    validation pass scaled from a sample. Times at least one iteration, at most ``max_iterations``, and no
    more once another would take the timing past ``max_seconds``."""
    model = copy.deepcopy(model).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    step = make_step(model, loss, device)
    amp = device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    n = min(len(images), batch_size * (max_iterations + 1))
    batches = iter(loader(images[:n], labels[:n], augment, batch_size, seed=0, device=device))

    def one() -> bool:
        batch = next(batches, None)
        if batch is None:
            return False
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=torch.device(device).type, enabled=amp):
            value, _ = step(batch)
        scaler.scale(value).backward()
        scaler.step(optimizer)
        scaler.update()
        if amp:
            torch.cuda.synchronize()
        return True

    one()  # warm-up: one-off allocation and kernel selection costs
    timed, started = 0, time.monotonic()
    while timed < max_iterations and one():
        timed += 1
        spent = time.monotonic() - started
        if spent + spent / timed > max_seconds:  # the next iteration would overrun the measuring time
            break
    per_iteration = (time.monotonic() - started) / max(timed, 1)
    if timed == 0:  # fewer than two batches of training data: the warm-up is the only measure
        started = time.monotonic()
        batches = iter(loader(images[:n], labels[:n], augment, batch_size, seed=0, device=device))
        one()
        per_iteration = time.monotonic() - started
    sample = val_images[: min(len(val_images), 64)]
    started = time.monotonic()
    predict_logits(model, sample, device, EVAL_BATCH)
    val_seconds = (time.monotonic() - started) * len(val_images) / max(len(sample), 1)
    return Speed(per_iteration, val_seconds, max(timed, 1))
