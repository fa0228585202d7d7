"""Training speed of segmentation on MSD Hippocampus: iterations/s of the engine with the default CPU plan, before
(fp32, full augmentation built on the critical path, all cores, as the old loop did) and after (bf16 autocast where
the CPU computes it natively, CPU augmentation produced on a prefetch thread, the thread count tuned to the load),
measured in the same run, alternating. The first 2 iterations of each run are not timed.

Run: ``MEDSIGHT_DATA=../shared/data .venv/bin/python benchmarks/seg_iterations.py --iterations 40 --repeats 2``
Writes ``benchmarks/results/seg_iterations.json``. The machine's load average is recorded with the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch
from support import seg_record

from medsight import config
from medsight.tasks.segmentation import network
from medsight.tasks.segmentation.augment import PatchSampler
from medsight.tasks.segmentation.data import fingerprint, folds_for, open_dataset, read_cases, training_items
from medsight.tasks.segmentation.plan import SegmentationPlan, make_plan
from medsight.tasks.segmentation.threads import ThreadTuner
from medsight.training.engine import Engine, Event, prefetch
from medsight.training.seed import seed_everything


class _Clock:
    """Times iterations after the first ``skip`` (one-off set-up costs)."""

    def __init__(self, skip: int = 2) -> None:
        self.skip, self.t0, self.t1, self.n = skip, 0.0, 0.0, 0

    def __call__(self, engine: Engine, event: Event) -> None:
        if event is Event.ITERATION_COMPLETED:
            if engine.state.iteration == self.skip:
                self.t0 = time.monotonic()
            self.t1, self.n = time.monotonic(), engine.state.iteration - self.skip


def measure(plan: SegmentationPlan, items: list[Any], iterations: int, threaded: bool) -> float:
    """Iterations/s of the engine; ``threaded``: batches on the prefetch thread and the thread-count tuner."""
    seed_everything(0)
    model = network.build(plan)
    loss_fn = network.loss_function()
    sampler = PatchSampler(items, plan, 0)

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = batch
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=plan.cpu_bf16):
            logits = model(x)
        return loss_fn(logits.float(), y), {}

    def batches(epoch: int) -> Any:
        source = sampler.epoch(iterations)
        return prefetch(source, depth=3) if threaded else source

    clock = _Clock()
    cores = config.num_threads()
    torch.set_num_threads(cores)
    handlers: list[Any] = [clock]
    if threaded and cores > 1:
        handlers.insert(0, ThreadTuner([cores, 1], every=10_000))
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.optimizer.lr)
    Engine(model, optimizer, step, batches, 1, iterations, handlers, grad_clip=12.0).run()
    return clock.n / max(clock.t1 - clock.t0, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=config.data_root() / "msd_hippocampus")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(config.num_threads())
    ds = open_dataset(str(args.data))
    train_ids, val_ids = folds_for(ds).train_val(0)
    cases = read_cases(ds, train_ids + val_ids)
    fp = fingerprint(ds, [cases[i] for i in train_ids + val_ids])
    after = make_plan(fp, "cpu")
    before = dataclasses.replace(after, cpu_bf16=False, augmentation="cuda")
    items, _ = training_items(ds, cases, train_ids, fp, after)
    from monai.data import set_track_meta

    set_track_meta(False)
    runs: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(args.repeats):
        runs["before"].append(measure(before, items, args.iterations, threaded=False))
        runs["after"].append(measure(after, items, args.iterations, threaded=True))
        print({k: [round(v, 3) for v in vs] for k, vs in runs.items()}, flush=True)
    best = {k: max(v) for k, v in runs.items()}
    print(
        f"iterations/s (batch {after.batch_size} x {after.patch_size}): before {best['before']:.2f}, "
        f"after {best['after']:.2f} ({best['after'] / best['before']:.2f}x)"
    )
    seg_record.write(
        "seg_iterations",
        {
            "data": ds.name,
            "plan": {"patch_size": after.patch_size, "batch_size": after.batch_size, "filters": after.network.filters},
            "iterations_per_run": args.iterations,
            "before": {
                "what": "fp32, full (nnU-Net-like) augmentation built on the critical path (the old loop)",
                "iterations_per_s": runs["before"],
            },
            "after": {
                "what": f"{'bf16 autocast, ' if after.cpu_bf16 else 'fp32, '}CPU augmentation (no blur) on a prefetch "
                "thread, thread count tuned (the default plan and handlers)",
                "iterations_per_s": runs["after"],
            },
            "speed_up_best": round(best["after"] / best["before"], 2),
        },
    )


if __name__ == "__main__":
    main()
