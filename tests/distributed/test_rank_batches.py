"""Each DDP rank loads only its part of every global batch, and the parts make up what one worker would draw."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsight.distributed import ddp
from medsight.tasks.classification.steps import loader


def _draw(n: int, batch: int, rank: int, size: int, monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    monkeypatch.setattr(ddp, "world", lambda: (rank, size))
    return list(ddp.RankBatches(n, batch, torch.Generator().manual_seed(7)))


@pytest.mark.parametrize(("n", "batch"), [(103, 32), (64, 32), (65, 32), (5, 4)])
def test_the_ranks_parts_make_up_the_single_workers_batches(n: int, batch: int,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    single = list(torch.utils.data.BatchSampler(
        torch.utils.data.RandomSampler(range(n), generator=torch.Generator().manual_seed(7)), batch, False))
    assert _draw(n, batch, 0, 1, monkeypatch) == single  # one rank: the usual shuffled batches
    parts = [_draw(n, batch, r, 2, monkeypatch) for r in (0, 1)]
    kept = [b for b in single if len(b) >= 2]  # a batch smaller than the ranks is skipped by all alike
    assert len(parts[0]) == len(parts[1]) == len(kept)
    for whole, a, b in zip(kept, parts[0], parts[1], strict=True):
        assert a + b == whole  # together the whole batch, in order; apart, no overlap
        assert a == list(torch.tensor_split(torch.tensor(whole), 2)[0])  # the same cut as ddp.shard


def test_a_rank_augments_only_its_part(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    def augment(x: np.ndarray) -> np.ndarray:
        seen.append(int(x.reshape(-1)[0]))
        return x

    images = np.arange(40, dtype=np.float32).reshape(40, 1, 1, 1) * np.ones((1, 1, 2, 2), np.float32)
    labels = np.zeros(40, dtype=np.int64)
    monkeypatch.setattr(ddp, "world", lambda: (1, 2))
    batches = list(loader(images, labels, augment, batch_size=8, seed=0, workers=0))
    assert len(batches) == 5 and all(len(xb) == 4 for xb, _ in batches)
    assert len(seen) == 20  # half the epoch, not all of it
    monkeypatch.setattr(ddp, "world", lambda: (0, 2))
    other = [int(v) for xb, _ in loader(images, labels, augment, batch_size=8, seed=0, workers=0)
             for v in xb[:, 0, 0, 0]]
    mine = [int(v) for xb, _ in batches for v in xb[:, 0, 0, 0]]
    assert sorted(mine + other) == list(range(40))
