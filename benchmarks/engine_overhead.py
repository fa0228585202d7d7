"""Overhead of the training engine against a bare PyTorch loop: same model, same data, same optimiser (goal ≤ 1.1×).

Run: ``MEDSIGHT_DATA=../shared/data .venv/bin/python benchmarks/engine_overhead.py [--repeats 5] [--epochs 2]``

The model is the classification task's planned network for PneumoniaMNIST (MONAI ResNet, width 16, 28 px), the
data its real training images (4,708), batch 128, AdamW. The bare loop sets the learning rate by hand each step
(warm-up + cosine), as the engine's schedule does; the engine adds every handler a classification run uses
except validation (LRSchedule, KeepBest bookkeeping, EarlyStopping, TimeBudget, Progress). The two are timed in
alternation, ``--repeats`` times each, and the ratio of medians is reported with the per-repeat ratios' range.
Results: ``benchmarks/results/engine_overhead.json``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from support.provenance import provenance
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medsight.data.sources import load_classification
from medsight.io.atomic import write_json
from medsight.tasks.classification.network import build_network, plan_network
from medsight.training.engine import EarlyStopping, Engine, KeepBest, LRSchedule, Progress, TimeBudget

RESULTS = Path(__file__).resolve().parent / "results" / "engine_overhead.json"


def bare(model: nn.Module, loader: DataLoader, epochs: int, lr: float) -> float:
    """The loop a user would write by hand: returns seconds."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    total, warm, it = epochs * len(loader), len(loader), 0
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for xb, yb in loader:
            rate = lr * max((it + 1) / warm, 0.05) if it < warm else 0.5 * lr * (1 + math.cos(math.pi * it / total))
            for g in opt.param_groups:
                g["lr"] = rate
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            float(loss.detach())  # the engine logs the loss every step; so does any real loop
            it += 1
    return time.perf_counter() - start


def engine(model: nn.Module, loader: DataLoader, epochs: int, lr: float) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        xb, yb = batch
        return loss_fn(model(xb), yb), {}

    e = Engine(
        model,
        opt,
        step,
        lambda epoch: loader,
        epochs,
        len(loader),
        handlers=[
            LRSchedule(lr, "cosine", warmup_iterations=len(loader)),
            KeepBest(),
            EarlyStopping(12),
            TimeBudget(None),
            Progress("engine"),
        ],
    )
    start = time.perf_counter()
    e.run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    prov = provenance("engine_overhead.py", ("src/medsight/training",), repeats=args.repeats, epochs=args.epochs)
    torch.set_num_threads(2)
    data = load_classification("medmnist:pneumoniamnist", seed=0)
    train = data.split("train")
    x = torch.as_tensor(train.images, dtype=torch.float32)
    y = torch.as_tensor(np.asarray(train.labels), dtype=torch.long)
    kwargs = plan_network(2, [28, 28], 1, 2, 16)
    times: dict[str, list[float]] = {"bare": [], "engine": []}
    for r in range(args.repeats):
        for name, fn in (("bare", bare), ("engine", engine)) if r % 2 == 0 else (("engine", engine), ("bare", bare)):
            torch.manual_seed(r)
            model = build_network(kwargs)
            loader = DataLoader(
                TensorDataset(x, y), batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(r)
            )
            times[name].append(fn(model, loader, args.epochs, 2e-3))
            print(f"repeat {r} {name}: {times[name][-1]:.2f} s", flush=True)
    ratios = [e / b for e, b in zip(times["engine"], times["bare"], strict=True)]
    med = {k: statistics.median(v) for k, v in times.items()}
    result: dict[str, Any] = {
        "what": "seconds per run of --epochs epochs of PneumoniaMNIST (4708 images, batch 128) on the classification "
        "ResNet (width 16), bare PyTorch loop vs the medsight engine with its handlers",
        "seconds": times,
        "median_seconds": med,
        "ratio_of_medians": med["engine"] / med["bare"],
        "ratio_per_repeat": ratios,
        "ratio_range": [min(ratios), max(ratios)],
        "goal": "<= 1.1",
        "provenance": prov,
    }
    write_json(args.results, result)
    print(
        f"engine / bare: {result['ratio_of_medians']:.3f} (per repeat {min(ratios):.3f}-{max(ratios):.3f}); "
        f"bare {med['bare']:.2f} s, engine {med['engine']:.2f} s; results: {args.results}"
    )


if __name__ == "__main__":
    main()
