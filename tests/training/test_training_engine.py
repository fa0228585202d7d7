"""The one training engine: schedule, validation, best weights, early stopping, time budget, checkpoints, prefetch."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from medsight.training.engine import (
    AveragedWeights,
    Checkpoint,
    EarlyStopping,
    Engine,
    KeepBest,
    LRSchedule,
    Progress,
    TimeBudget,
    Validate,
    averaging_decay,
    prefetch,
)


def _problem(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    return nn.Linear(3, 1), x, y


def _engine(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, handlers: list, lr: float = 0.05
) -> Engine:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        xb, yb = batch
        return nn.functional.mse_loss(model(xb), yb), {"n": float(len(xb))}

    return Engine(model, opt, step, lambda epoch: batches, epochs, len(batches), handlers=handlers)


def test_schedule_warms_up_then_decays_to_zero() -> None:
    cosine = LRSchedule(1.0, "cosine", warmup_iterations=10)
    assert cosine.rate(0, 100) == pytest.approx(0.1)
    assert cosine.rate(9, 100) == pytest.approx(1.0)
    assert cosine.rate(50, 100) == pytest.approx(0.5)
    assert cosine.rate(100, 100) == pytest.approx(0.0, abs=1e-12)
    from_zero = LRSchedule(1.0, "cosine", warmup_iterations=10, warmup_from_zero=True)
    assert [from_zero.rate(i, 100) for i in (0, 1, 5)] == pytest.approx([0.05, 0.1, 0.5])
    poly = LRSchedule(1.0, "poly")
    assert poly.rate(0, 100) == pytest.approx(1.0)
    assert poly.rate(50, 100) == pytest.approx(0.5**0.9)
    with pytest.raises(ValueError):
        LRSchedule(1.0, "step")


def test_engine_learns_and_logs_every_epoch() -> None:
    model, x, y = _problem()
    before = float(nn.functional.mse_loss(model(x), y).detach())
    seen_lrs: list[float] = []

    def record(engine: Engine, event: object) -> None:
        if event.name == "ITERATION_COMPLETED":  # type: ignore[attr-defined]
            seen_lrs.append(engine.optimizer.param_groups[0]["lr"])

    state = _engine(model, x, y, 20, [LRSchedule(0.05, "cosine", warmup_iterations=4), record]).run()
    after = float(nn.functional.mse_loss(model(x), y).detach())
    assert after < before / 10
    assert state.epoch == 20 and state.iteration == 80 and state.stopped_by == "epochs"
    assert [h["epoch"] for h in state.history] == list(range(1, 21))
    assert all({"train_loss", "lr", "seconds", "n"} <= set(h) for h in state.history)
    assert seen_lrs[0] == pytest.approx(0.05 / 4) and seen_lrs[4] == pytest.approx(
        0.05 * 0.5 * (1 + math.cos(math.pi * 4 / 80))
    )
    assert seen_lrs[-1] < 1e-3


def test_keep_best_restores_the_best_validated_weights_and_early_stopping_stops() -> None:
    model, x, y = _problem()
    scores = iter([0.1, 0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    snapshots: dict[int, torch.Tensor] = {}

    def validate() -> tuple[float, dict[str, float]]:
        return next(scores), {}

    def snap(engine: Engine, event: object) -> None:
        if event.name == "EPOCH_COMPLETED":  # type: ignore[attr-defined]
            snapshots[engine.state.epoch] = model.weight.detach().clone()

    state = _engine(model, x, y, 8, [snap, Validate(validate), KeepBest(), EarlyStopping(3)]).run()
    assert state.best_epoch == 2 and state.best_score == pytest.approx(0.9)
    assert state.stopped_by == "early stopping" and state.epoch == 5
    assert torch.equal(model.weight, snapshots[2])
    assert not torch.equal(model.weight, snapshots[5])
    assert state.history[1]["val_score"] == pytest.approx(0.9)


def test_the_weight_average_follows_every_step_and_is_kept_when_validation_prefers_it() -> None:
    """The average is an exponential moving average of the trained weights, step by step; at a best epoch KeepBest
    keeps the average's weights when validation scored them higher, the trained ones otherwise."""
    model, x, y = _problem()
    averaged = AveragedWeights(model, decay=0.5)
    expected = model.weight.detach().clone()
    steps: list[torch.Tensor] = []

    def follow(engine: Engine, event: object) -> None:
        if event.name == "ITERATION_COMPLETED":  # type: ignore[attr-defined]
            steps.append(model.weight.detach().clone())

    prefer = iter([True, False, True, False])  # which weights validation "prefers" at epochs 1-4
    scores = iter([0.1, 0.2, 0.9, 0.3])  # epoch 3 is the best: the average's weights are kept
    snapshots: dict[int, torch.Tensor] = {}

    def validate() -> tuple[float, dict[str, float]]:
        averaged.better = next(prefer)
        snapshots[len(snapshots) + 1] = averaged.kept(model).weight.detach().clone()
        return next(scores), {}

    state = _engine(
        model, x, y, 4, [averaged, follow, Validate(validate), KeepBest(source=lambda: averaged.kept(model))]
    ).run()
    for w in steps:  # torch's EMA starts from the first step's weights, then decays
        expected = w.clone() if w is steps[0] else 0.5 * expected + 0.5 * w
    assert torch.allclose(averaged.module.weight, expected)
    assert state.best_epoch == 3
    assert torch.equal(model.weight, snapshots[3])  # the average as it was at epoch 3, not the trained weights
    assert not torch.equal(snapshots[3], steps[11])  # (which differed from it)
    assert averaging_decay(9) == pytest.approx(0.9) and averaging_decay(74) == pytest.approx(1 - 1 / 74)
    assert averaging_decay(5000) == pytest.approx(0.999)
    with pytest.raises(ValueError):
        AveragedWeights(model, decay=1.0)


def test_validation_every_n_epochs_and_at_the_last() -> None:
    model, x, y = _problem()
    calls: list[int] = []
    engine = _engine(model, x, y, 7, [])
    engine.handlers.append(Validate(lambda: (calls.append(engine.state.epoch), (0.5, {}))[1], every=3))
    engine.run()
    assert calls == [3, 6, 7]


def test_nan_score_counts_as_worst() -> None:
    model, x, y = _problem()
    scores = iter([float("nan"), 0.2, float("nan")])
    state = _engine(model, x, y, 3, [Validate(lambda: (next(scores), {}))]).run()
    assert state.best_epoch == 2 and state.history[0]["val_score"] == -math.inf


def test_time_budget_stops_early_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    model, x, y = _problem()
    engine = _engine(model, x, y, 1000, [TimeBudget(0.4), Progress("test")])
    base_step = engine.step

    def slow(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        time.sleep(0.02)
        return base_step(batch)

    engine.step = slow
    start = time.monotonic()
    with caplog.at_level("WARNING", logger="medsight.train"):
        state = engine.run()
    assert time.monotonic() - start < 1.0
    assert state.stopped_by == "time budget" and 1 <= state.epoch < 1000
    assert state.warnings and "time budget" in state.warnings[0]
    assert any("time budget" in r.message for r in caplog.records)


def test_time_budget_shortens_the_schedule_so_the_rate_anneals() -> None:
    model, x, y = _problem()
    lrs: list[float] = []
    schedule = LRSchedule(0.05, "cosine")

    def record(engine: Engine, event: object) -> None:
        if event.name == "EPOCH_COMPLETED":  # type: ignore[attr-defined]
            lrs.append(engine.optimizer.param_groups[0]["lr"])

    engine = _engine(model, x, y, 10_000, [schedule, TimeBudget(0.5), record])
    base_step = engine.step
    engine.step = lambda b: (time.sleep(0.01), base_step(b))[1]
    state = engine.run()
    assert state.planned_epochs < 10_000
    assert lrs[-1] < 0.3 * 0.05


def test_checkpoint_is_written_and_loads(tmp_path: Path) -> None:
    model, x, y = _problem()
    target = tmp_path / "ckpt" / "last.pt"
    _engine(model, x, y, 2, [Checkpoint(target)]).run()
    saved = torch.load(target, weights_only=True)
    assert saved["epoch"] == 2 and torch.equal(saved["model"]["weight"], model.weight)
    assert [p.name for p in target.parent.iterdir()] == ["last.pt"]


def test_prefetch_keeps_order_raises_and_stops() -> None:
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def broken():  # type: ignore[no-untyped-def]
        yield 1
        raise RuntimeError("bad batch")

    with pytest.raises(RuntimeError, match="bad batch"):
        list(prefetch(broken()))
    produced: list[int] = []

    def endless():  # type: ignore[no-untyped-def]
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    gen = prefetch(endless(), depth=2)
    assert [next(gen) for _ in range(3)] == [0, 1, 2]
    gen.close()
    time.sleep(0.3)
    n = len(produced)
    time.sleep(0.3)
    assert len(produced) == n <= 8
