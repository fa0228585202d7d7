"""One training engine for every task: a plain loop that fires events, and handlers that do everything else.

The loop only runs optimisation steps (with AMP and a gradient scaler on CUDA). Validation, the learning-rate
schedule, keeping the best weights, early stopping, the time budget, checkpoints and the progress bar are
handlers reacting to events, as in MONAI's/ignite's engines, so every task composes the same pieces and none
carries a loop of its own. The overhead against a bare PyTorch loop is measured in
``benchmarks/engine_overhead.py``.
"""

from __future__ import annotations

import copy
import enum
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from medsight.distributed import ddp
from medsight.errors import MedsightError, NonFiniteOutput

log = logging.getLogger("medsight.train")

#: A training step: one batch in, the loss to minimise and extra values to log out.
StepFn = Callable[[Any], tuple[torch.Tensor, dict[str, float]]]


class Event(enum.Enum):
    STARTED = "started"
    EPOCH_STARTED = "epoch_started"
    ITERATION_STARTED = "iteration_started"
    ITERATION_COMPLETED = "iteration_completed"
    EPOCH_COMPLETED = "epoch_completed"
    COMPLETED = "completed"


@dataclass
class State:
    """What handlers read and change. ``epoch`` and ``iteration`` count completed ones."""

    requested_epochs: int
    planned_epochs: int
    iterations_per_epoch: int
    epoch: int = 0
    iteration: int = 0
    started: float = 0.0
    epoch_started: float = 0.0
    entry: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    score: float | None = None
    best_score: float = -math.inf
    best_epoch: int = 0
    stop_reason: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def total_iterations(self) -> int:
        return max(1, self.planned_epochs * self.iterations_per_epoch)

    @property
    def progress(self) -> float:
        """Fraction of the planned run done, in [0, 1]: what the schedule follows."""
        return min(1.0, self.iteration / self.total_iterations)

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    @property
    def stopped_by(self) -> str:
        return self.stop_reason or "epochs"


class Handler(Protocol):
    def __call__(self, engine: Engine, event: Event) -> None: ...


class Engine:
    """Runs ``step`` over ``batches(epoch)`` for up to ``epochs`` epochs; handlers do the rest."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        step: StepFn,
        batches: Callable[[int], Iterable[Any]],
        epochs: int,
        iterations_per_epoch: int,
        handlers: Sequence[Handler] = (),
        device: str = "cpu",
        amp: bool | None = None,
        grad_clip: float | None = None,
        rank_batches: bool = False,
    ) -> None:
        """``rank_batches``: ``batches`` already gives this rank its part of each global batch
        (:class:`medsight.distributed.ddp.RankBatches`); otherwise each global batch is cut here."""
        self.rank_batches = rank_batches
        self.model = model
        self.optimizer = optimizer
        self.step = step
        self.batches = batches
        self.device = torch.device(device)
        self.amp = self.device.type == "cuda" if amp is None else bool(amp and self.device.type == "cuda")
        self.grad_clip = grad_clip
        self.handlers = list(handlers)
        self.state = State(epochs, epochs, max(1, iterations_per_epoch))

    def fire(self, event: Event) -> None:
        for handler in self.handlers:
            handler(self, event)

    def run(self) -> State:
        s = self.state
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        params = [p for p in self.model.parameters() if p.requires_grad]
        s.started = time.monotonic()
        self.model.to(self.device)
        step = ddp.wrap_step(self.model, self.step, self.device)  # the step itself unless one of several ranks
        ddp.agree(s)
        self.fire(Event.STARTED)
        try:
            while s.epoch < s.planned_epochs and s.stop_reason is None:
                s.epoch_started = time.monotonic()
                s.entry = {"epoch": float(s.epoch + 1)}
                sums: dict[str, float] = {}
                count = skipped = 0
                self.model.train()
                self.fire(Event.EPOCH_STARTED)
                for whole in self.batches(s.epoch):
                    batch = whole if self.rank_batches else ddp.shard(whole)  # this rank's part (all with one rank)
                    if batch is None:  # fewer samples than ranks: every rank skips it alike
                        continue
                    self.fire(Event.ITERATION_STARTED)
                    self.optimizer.zero_grad(set_to_none=True)
                    with torch.autocast(device_type=self.device.type, enabled=self.amp):
                        loss, logged = step(batch)
                    scaler.scale(loss).backward()  # every rank runs backward: DDP reduces the gradients there
                    value = float(loss.detach())
                    if not _finite_update(value, params, self.amp):  # a NaN step would make every weight NaN
                        s.iteration += 1
                        skipped += 1
                        continue
                    if self.grad_clip is not None:
                        scaler.unscale_(self.optimizer)
                        nn.utils.clip_grad_norm_(params, self.grad_clip)
                    scaler.step(self.optimizer)
                    scaler.update()
                    s.iteration += 1
                    count += 1
                    for k, v in {"train_loss": value, **logged}.items():
                        if math.isfinite(float(v)):
                            sums[k] = sums.get(k, 0.0) + float(v)
                    self.fire(Event.ITERATION_COMPLETED)
                if skipped:
                    _check_skipped(s, count, skipped)
                s.epoch += 1
                s.entry.update({k: v / max(count, 1) for k, v in sums.items()})
                s.entry["lr"] = float(self.optimizer.param_groups[0]["lr"])
                s.score = None
                self.fire(Event.EPOCH_COMPLETED)
                ddp.agree(s)  # rank 0's stop decision and re-planned epochs hold for every rank
                s.entry["seconds"] = s.elapsed
                s.history.append(dict(s.entry))
        finally:
            self.fire(Event.COMPLETED)
        if not finite_weights(self.model):
            raise MedsightError(f"training diverged: the weights hold NaN or infinite values; {NOT_WRITTEN}")
        return s


#: What a run that cannot give a usable model says about what to check (the bundle is then not written).
NOT_WRITTEN = (
    "no bundle was written. Check that the images are not all alike (constant) and that the labels are right, or "
    "lower --lr"
)


def _finite_update(loss: float, params: Sequence[torch.Tensor], amp: bool) -> bool:
    """Whether this step may update the weights: its loss is finite. With several DDP ranks the decision must be
    the same on every rank: every reduced gradient is finite (the same on all ranks), or, with AMP, the gradient
    scaler's own check, which skips such steps alike on every rank and lowers its scale."""
    if ddp.active():
        return amp or all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None)
    return math.isfinite(loss)


def finite_weights(model: nn.Module) -> bool:
    """Whether every floating-point weight and buffer of ``model`` is finite."""
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def _check_skipped(s: State, count: int, skipped: int) -> None:
    """Steps of NaN or infinite loss are skipped; an epoch with no other step cannot train at all and stops the run."""
    if not count:
        raise MedsightError(
            f"training diverged: every training loss of epoch {s.epoch + 1} was NaN or infinite "
            f"({skipped} step(s)); {NOT_WRITTEN}"
        )
    message = (
        f"epoch {s.epoch + 1}: {skipped} of {skipped + count} training steps had a NaN or infinite loss "
        "and were skipped"
    )
    log.warning(message)
    if not any(w.endswith("were skipped") for w in s.warnings):  # said once in the bundle, every epoch in the log
        s.warnings.append(message)


# ------------------------------------------------------------------------------------------------- handlers


class LRSchedule:
    """Linear warm-up, then cosine (or nnU-Net's poly) decay over the planned run, set every iteration.

    The schedule follows ``state.progress``, so when the time budget shortens the plan the rate still anneals.
    """

    def __init__(
        self,
        base_lr: float,
        kind: str = "cosine",
        warmup_iterations: int = 0,
        floor: float = 0.05,
        warmup_from_zero: bool = False,
    ) -> None:
        if kind not in ("cosine", "poly", "constant"):
            raise ValueError(f"unknown schedule {kind!r}")
        self.base_lr, self.kind, self.warmup, self.floor = base_lr, kind, warmup_iterations, floor
        #: Warm-up ramp i/w (the first step at the floor: the classification recipe) or (i+1)/w (nnU-Net's).
        self.offset = 0 if warmup_from_zero else 1

    def rate(self, iteration: int, total: int) -> float:
        if iteration < self.warmup:
            return self.base_lr * max((iteration + self.offset) / self.warmup, self.floor)
        progress = min(iteration / max(total, 1), 1.0)
        if self.kind == "cosine":
            return 0.5 * self.base_lr * (1 + math.cos(math.pi * progress))
        if self.kind == "poly":
            return self.base_lr * (1 - min(progress, 0.999)) ** 0.9
        return self.base_lr

    def __call__(self, engine: Engine, event: Event) -> None:
        if event is Event.ITERATION_STARTED:
            lr = self.rate(engine.state.iteration, engine.state.total_iterations)
            for group in engine.optimizer.param_groups:
                group["lr"] = lr


class Validate:
    """Scores the model every ``every`` epochs (and at the last planned one); records the best score and epoch.

    ``fn()`` returns (score to maximise, metrics to log). NaN scores count as the worst possible.
    """

    def __init__(self, fn: Callable[[], tuple[float, dict[str, float]]], every: int = 1) -> None:
        self.fn, self.every = fn, max(1, every)

    def __call__(self, engine: Engine, event: Event) -> None:
        s = engine.state
        if event is not Event.EPOCH_COMPLETED:
            return
        if s.epoch % self.every and s.epoch < s.planned_epochs:
            return
        if not finite_weights(engine.model):  # scoring NaN outputs fails deep in the metrics instead
            raise MedsightError(
                f"training diverged: the weights hold NaN or infinite values after epoch {s.epoch}; {NOT_WRITTEN}"
            )
        engine.model.eval()
        try:
            with torch.no_grad():
                score, metrics = self.fn()
        except (ValueError, NonFiniteOutput) as exc:  # finite weights, overflowing outputs: ours, or scikit-learn's
            if (
                not isinstance(exc, NonFiniteOutput)
                and "nan" not in str(exc).lower()
                and "infinity" not in str(exc).lower()
            ):
                raise
            raise MedsightError(
                f"training diverged: the validation outputs are NaN or infinite after epoch {s.epoch}; {NOT_WRITTEN}"
            ) from exc
        engine.model.train()
        score = -math.inf if score is None or math.isnan(score) else float(score)
        s.score = score
        s.entry.update({"val_score": score, **metrics})
        if score > s.best_score:
            s.best_score, s.best_epoch = score, s.epoch


class KeepBest:
    """Keeps a copy of the weights of the best validated epoch and puts them back at the end.

    ``source``: the module whose weights a best epoch keeps when it is not the trained one (the weight average, when
    validation scored it higher that epoch: :class:`AveragedWeights`); its state dict must have the same keys."""

    def __init__(self, module: nn.Module | None = None, source: Callable[[], nn.Module] | None = None) -> None:
        self.module = module
        self.source = source
        self.best: dict[str, torch.Tensor] | None = None

    def __call__(self, engine: Engine, event: Event) -> None:
        module = self.module or engine.model
        s = engine.state
        if event is Event.STARTED:
            self.best = copy.deepcopy(module.state_dict())
        elif event is Event.EPOCH_COMPLETED and s.score is not None and s.best_epoch == s.epoch:
            kept = self.source() if self.source is not None else module
            self.best = {k: v.detach().clone() for k, v in kept.state_dict().items()}
        elif event is Event.COMPLETED and self.best is not None:
            module.load_state_dict(self.best)


class AveragedWeights:
    """An exponential moving average of the weights (PyTorch's ``swa_utils.AveragedModel``, buffers included),
    updated after every optimisation step. Validation scores it beside the trained weights and the better of the two
    is that epoch's model (``better``, read by :class:`KeepBest`'s ``source``): on a few hundred images the average
    of the last steps is often steadier than the last step's weights, and where it is not, validation says so."""

    def __init__(self, model: nn.Module, decay: float, device: str = "cpu") -> None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        if not 0.0 < decay < 1.0:
            raise ValueError(f"weight-average decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.averaged = AveragedModel(
            model, device=torch.device(device), multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True
        )
        self.better = False  # the average scored above the trained weights at the last validation

    @property
    def module(self) -> nn.Module:
        """The averaged network (same class and state-dict keys as the trained one)."""
        return self.averaged.module

    def kept(self, trained: nn.Module) -> nn.Module:
        """The module whose weights the last validation preferred."""
        return self.module if self.better else trained

    def __call__(self, engine: Engine, event: Event) -> None:
        if event is Event.ITERATION_COMPLETED:
            self.averaged.update_parameters(engine.model)


def averaging_decay(iterations_per_epoch: int) -> float:
    """An average whose memory is about one epoch of steps (1 - 1/steps), within [0.9, 0.999]: short runs on small
    data (a few steps per epoch) still average over the last epoch, long ones do not lag by more than ~1,000 steps."""
    return float(min(0.999, max(0.9, 1.0 - 1.0 / max(1, iterations_per_epoch))))


class EarlyStopping:
    """Stops when validation has not improved for ``patience`` epochs."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def __call__(self, engine: Engine, event: Event) -> None:
        s = engine.state
        if event is Event.EPOCH_COMPLETED and s.best_epoch and s.epoch - s.best_epoch >= self.patience:
            s.stop("early stopping")


class TimeBudget:
    """Keeps the run inside ``seconds``: after each epoch, re-plans the epochs that fit (from the mean epoch
    time so far, so a burst of load neither over-shrinks nor over-stretches it) and stops when the next epoch
    would not fit. A run cut short says so in a warning and in ``state.warnings``."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds

    def __call__(self, engine: Engine, event: Event) -> None:
        s = engine.state
        if self.seconds is None:
            return
        if event is Event.EPOCH_COMPLETED:
            elapsed = s.elapsed
            per_epoch = elapsed / max(s.epoch, 1)
            if elapsed + per_epoch > self.seconds:
                if s.epoch < s.requested_epochs:
                    s.stop("time budget")
                return
            fits = s.epoch + int((self.seconds - elapsed) // max(per_epoch, 1e-6))
            s.planned_epochs = min(s.requested_epochs, max(s.epoch + 1, fits))
        elif event is Event.COMPLETED and s.epoch < s.requested_epochs and s.stop_reason in (None, "time budget"):
            s.stop_reason = "time budget"
            message = (
                f"the time budget ({self.seconds:.0f} s) stopped training after {s.epoch} of "
                f"{s.requested_epochs} planned epochs; the model may be under-trained (raise --time-budget)"
            )
            s.warnings.append(message)
            log.warning(message)


class Checkpoint:
    """Writes the model and optimiser state after every ``every`` epochs (atomically), to resume or inspect."""

    def __init__(self, path: Path, every: int = 1) -> None:
        self.path, self.every = Path(path), max(1, every)

    def __call__(self, engine: Engine, event: Event) -> None:
        from medsight.io.atomic import atomic_path

        s = engine.state
        if event is Event.EPOCH_COMPLETED and s.epoch % self.every == 0:
            with atomic_path(self.path) as tmp:
                torch.save(
                    {"model": engine.model.state_dict(), "optimizer": engine.optimizer.state_dict(), "epoch": s.epoch},
                    tmp,
                )


class Progress:
    """A tqdm bar over epochs, and an estimate of the run's length once the first iterations are timed."""

    def __init__(self, desc: str = "train", estimate_after: int = 5) -> None:
        self.desc, self.estimate_after = desc, estimate_after
        self.bar: tqdm | None = None
        self.t0 = 0.0

    def __call__(self, engine: Engine, event: Event) -> None:
        s = engine.state
        if event is Event.STARTED:
            self.bar = tqdm(total=s.planned_epochs, desc=self.desc, unit="epoch")
        elif event is Event.ITERATION_COMPLETED and s.iteration == 1:
            self.t0 = time.monotonic()  # the first iteration carries one-off set-up costs
        elif event is Event.ITERATION_COMPLETED and s.iteration == 1 + self.estimate_after:
            per_it = (time.monotonic() - self.t0) / self.estimate_after
            total = per_it * s.total_iterations
            budget = next((h.seconds for h in engine.handlers if isinstance(h, TimeBudget)), None)
            log.info(
                "measured %.2f iterations/s: %d epochs x %d iterations would take about %.0f min%s",
                1 / max(per_it, 1e-9),
                s.planned_epochs,
                s.iterations_per_epoch,
                total / 60,
                f" (time budget {budget / 60:.0f} min)" if budget else "",
            )
        elif event is Event.EPOCH_COMPLETED and self.bar is not None:
            self.bar.total = s.planned_epochs
            self.bar.update(1)
            post = {"loss": f"{s.entry.get('train_loss', float('nan')):.4f}"}
            if s.score is not None:
                post |= {"val": f"{s.score:.4f}", "best": f"{s.best_score:.4f}"}
            self.bar.set_postfix(post)
        elif event is Event.COMPLETED and self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------------------- data


def prefetch(batches: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """Produce ``batches`` on a background thread, ``depth`` ahead, so augmentation (NumPy/MONAI code that
    mostly releases the GIL) overlaps the optimisation step instead of sitting on its critical path."""
    q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
    done = object()
    failure: list[BaseException] = []
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in batches:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # re-raised in the consumer
            failure.append(exc)
        finally:
            q.put(done)

    thread = threading.Thread(target=produce, name="medsight-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                if failure:
                    raise failure[0]
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
