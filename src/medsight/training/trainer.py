"""Supervised training on in-memory arrays (classification, the outcome CNN), run on the one training engine."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medsight.distributed import ddp
from medsight.training.engine import EarlyStopping, Engine, KeepBest, LRSchedule, Progress, TimeBudget, Validate

log = logging.getLogger("medsight.train")


@dataclass
class TrainConfig:
    """What a user may set; everything else is derived from the data."""

    epochs: int = 40
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 12
    time_budget_s: float | None = None
    seed: int = 0
    device: str = "cpu"
    warmup_epochs: int = 1


@dataclass
class TrainResult:
    best_epoch: int
    best_score: float
    epochs_run: int
    seconds: float
    stopped_by: str
    history: list[dict[str, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class AugmentedArrays(Dataset):
    """In-memory images with a per-sample MONAI augmentation chain."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, augment: Callable | None = None) -> None:
        self.images = images
        self.targets = targets
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        if self.augment is not None:
            x = self.augment(x)
        return torch.as_tensor(np.asarray(x), dtype=torch.float32), torch.as_tensor(self.targets[i])


def predict_logits(model: nn.Module, images: np.ndarray, device: str, batch_size: int = 256) -> np.ndarray:
    """Eval-mode logits for a whole array, in batches, without gradients."""
    model.eval()
    outs = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            xb = torch.as_tensor(images[start : start + batch_size], dtype=torch.float32, device=device)
            outs.append(model(xb).float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def fit(
    model: nn.Module,
    train_set: Dataset,
    val_images: np.ndarray,
    loss: nn.Module,
    validate: Callable[[np.ndarray], tuple[float, dict[str, float]]],
    config: TrainConfig,
) -> TrainResult:
    """Train ``model`` in place on the engine and leave it holding the weights of the best validation epoch.

    ``validate(val_logits)`` returns (score to maximise, metrics to log).
    """
    device = torch.device(config.device)
    generator = torch.Generator().manual_seed(config.seed)
    sharded = ddp.active()  # one of several DDP ranks: load and augment only this rank's part of each batch
    loader = (
        DataLoader(train_set, batch_sampler=ddp.RankBatches(len(train_set), config.batch_size, generator))  # type: ignore[arg-type]
        if sharded
        else DataLoader(train_set, batch_size=config.batch_size, shuffle=True, generator=generator, drop_last=False)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    loss = loss.to(device)  # a class-balanced loss holds its weights as buffers: they go where the batches go

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        xb, yb = batch
        return loss(model(xb.to(device, non_blocking=True)), yb.to(device, non_blocking=True)), {}

    engine = Engine(
        model,
        optimizer,
        step,
        lambda epoch: loader,
        config.epochs,
        len(loader),
        handlers=[
            LRSchedule(
                config.lr, "cosine", warmup_iterations=config.warmup_epochs * len(loader), warmup_from_zero=True
            ),
            Validate(lambda: validate(predict_logits(model, val_images, str(device)))),
            KeepBest(),
            EarlyStopping(config.patience),
            TimeBudget(config.time_budget_s),
            Progress("train"),
        ],
        device=str(device),
        rank_batches=sharded,
    )
    s = engine.run()
    return TrainResult(s.best_epoch, float(s.best_score), s.epoch, s.elapsed, s.stopped_by, s.history, s.warnings)
