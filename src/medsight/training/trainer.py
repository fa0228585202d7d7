"""The supervised training loop: cosine schedule, time budget, early stopping on validation, best weights kept."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

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
    """Train ``model`` in place and leave it holding the weights of the best validation epoch.

    ``validate(val_logits)`` returns (score to maximise, metrics to log).
    """
    device = torch.device(config.device)
    model.to(device)
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, generator=generator, drop_last=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    planned = config.epochs
    best_score, best_epoch, best_state = -math.inf, -1, copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    start = time.monotonic()
    stopped_by = "epochs"
    steps_per_epoch = max(1, len(loader))
    bar = tqdm(total=planned, desc="train", unit="epoch")
    epoch = -1
    while epoch + 1 < planned:
        epoch += 1
        model.train()
        epoch_start = time.monotonic()
        total, count = 0.0, 0
        for step, (xb, yb) in enumerate(loader):
            progress = (epoch + step / steps_per_epoch) / planned
            for group in optimizer.param_groups:
                group["lr"] = _lr(config, progress, epoch + step / steps_per_epoch)
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, enabled=use_amp):
                batch_loss = loss(model(xb), yb)
            scaler.scale(batch_loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += float(batch_loss.detach()) * len(xb)
            count += len(xb)
        score, metrics = validate(predict_logits(model, val_images, str(device)))
        entry = {
            "epoch": epoch + 1,
            "train_loss": total / max(count, 1),
            "val_score": score,
            **metrics,
            "seconds": time.monotonic() - start,
        }
        history.append(entry)
        if score > best_score:
            best_score, best_epoch, best_state = score, epoch + 1, copy.deepcopy(model.state_dict())
        bar.update(1)
        bar.set_postfix(loss=f"{entry['train_loss']:.4f}", val=f"{score:.4f}", best=f"{best_score:.4f}")

        elapsed = time.monotonic() - start
        if epoch + 1 - best_epoch >= config.patience:
            stopped_by = "early stopping"
            break
        if config.time_budget_s is not None:
            last_epoch = time.monotonic() - epoch_start
            if elapsed + last_epoch > config.time_budget_s:
                stopped_by = "time budget"
                break
            # Fit the schedule to the budget so the learning rate still anneals: from the mean epoch time so
            # far, so that a burst of load on a shared machine neither over-shrinks nor over-stretches it.
            per_epoch = elapsed / (epoch + 1)
            fits = epoch + 1 + int((config.time_budget_s - elapsed) // max(per_epoch, 1e-6))
            planned = min(config.epochs, max(epoch + 2, fits))
            bar.total = planned
    bar.close()
    model.load_state_dict(best_state)
    return TrainResult(best_epoch, float(best_score), len(history), time.monotonic() - start, stopped_by, history)


def _lr(config: TrainConfig, progress: float, epoch_float: float) -> float:
    """Linear warm-up, then cosine decay to zero over the planned run."""
    if epoch_float < config.warmup_epochs:
        return config.lr * max(epoch_float / config.warmup_epochs, 0.05)
    return 0.5 * config.lr * (1 + math.cos(math.pi * min(progress, 1.0)))
