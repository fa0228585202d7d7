"""What the training engine does when it runs as one of several PyTorch DDP ranks (under Ray Train).

The engine stays one loop. When a process group of more than one rank is up (Ray Train's ``TorchTrainer`` starts
it: gloo on CPU, NCCL on GPU), the engine asks this module to

- run each step through :class:`torch.nn.parallel.DistributedDataParallel`, so gradients are averaged across
  ranks by DDP itself (bucketed all-reduce, overlapped with backward) and rank 0's initial weights are broadcast;
- give each rank its own slice of every global batch (every rank draws the same seeded batches, as one worker
  would, and rank r trains on the r-th part): the averaged gradient is that of the whole batch, so N workers train
  the model one worker would, within floating-point and batch-norm statistics differences;
- agree on the run's length: rank 0's planned epochs and stop decision (time budget, early stopping) are
  broadcast, so no rank waits forever in an all-reduce that the others have left.

Without a process group every function here is a no-op, so single-process training never touches it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import Sampler


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when it is not part of a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def active() -> bool:
    """True when this process is one of several DDP ranks."""
    return world()[1] > 1


class _StepModule(nn.Module):
    """The engine's step as a module over the model's parameters, so DDP can wrap the step as it stands."""

    def __init__(self, model: nn.Module, step: Callable[[Any], tuple[torch.Tensor, dict[str, float]]]) -> None:
        super().__init__()
        self.model = model
        self.step = step

    def forward(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return self.step(batch)


def wrap_step(
    model: nn.Module, step: Callable[[Any], tuple[torch.Tensor, dict[str, float]]], device: torch.device
) -> Callable[[Any], tuple[torch.Tensor, dict[str, float]]]:
    """``step`` run through DDP over ``model``'s parameters (``step`` itself when there is one rank)."""
    if not active():
        return step
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    ddp = DistributedDataParallel(_StepModule(model, step), device_ids=ids)

    def run(batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return ddp(batch)

    return run


def shard(batch: Any) -> Any:
    """This rank's part of a global batch: tensors (and tuples, lists, dicts of them) split on the first axis.

    None when the batch has fewer samples than there are ranks (a short last batch): every rank sees the same
    global batch, so all skip it alike, and no rank averages in the NaN gradient of an empty slice.
    """
    rank, size = world()
    if size == 1:
        return batch
    if _samples(batch) < size:
        return None
    return _split(batch, rank, size)


def part(length: int, rank: int, size: int) -> tuple[int, int]:
    """[start, end) of rank ``rank``'s part of ``length`` samples: ``torch.tensor_split``'s partition."""
    q, r = divmod(length, size)
    start = rank * q + min(rank, r)
    return start, start + q + (1 if rank < r else 0)


class RankBatches(Sampler[list[int]]):
    """The shuffled global batches one worker would draw (the same seeded generator), each cut to this rank's part
    before any sample is loaded, so a rank reads and augments only its own samples.

    ``shard`` cuts a batch already built: every rank would then augment the whole batch and keep 1/N of it, which
    made two ranks slower than one process when augmentation sets the pace. A batch with fewer samples than ranks
    is skipped by every rank alike, as ``shard`` skips it. With one rank this is the usual shuffled batching.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        rank, size = world()
        order = torch.randperm(self.n, generator=self.generator).tolist()  # what RandomSampler draws
        for first in range(0, self.n, self.batch_size):
            batch = order[first : first + self.batch_size]
            if len(batch) < size:
                continue
            start, end = part(len(batch), rank, size)
            yield batch[start:end]


def _samples(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1 << 30
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (tuple, list)) else ()
    return min((_samples(b) for b in items), default=1 << 30)


def _split(batch: Any, rank: int, size: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return torch.tensor_split(batch, size)[rank] if batch.dim() else batch
    if isinstance(batch, tuple):
        return tuple(_split(b, rank, size) for b in batch)
    if isinstance(batch, list):
        return [_split(b, rank, size) for b in batch]
    if isinstance(batch, dict):
        return {k: _split(v, rank, size) for k, v in batch.items()}
    return batch


def broadcast(values: list[Any]) -> list[Any]:
    """Rank 0's ``values`` on every rank (picklable objects)."""
    if not active():
        return values
    import torch.distributed as dist

    out = list(values)
    dist.broadcast_object_list(out, src=0)
    return out


def agree(state: Any) -> None:
    """Make every rank run rank 0's number of epochs and stop when rank 0 stops (engine ``State``)."""
    if not active():
        return
    state.requested_epochs, state.planned_epochs, state.stop_reason = broadcast(
        [state.requested_epochs, state.planned_epochs, state.stop_reason]
    )
