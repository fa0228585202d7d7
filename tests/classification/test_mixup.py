"""Mixup (``--mixup``): each training batch blended with a shuffled copy of itself, and the loss alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medsight.cli import main
from medsight.errors import MedsightError
from medsight.tasks.classification.plan import ClassificationOptions, ClassificationPlan
from medsight.tasks.classification.steps import make_step
from medsight.training.bundle import load_bundle


class Recorder(nn.Module):
    """A linear model that keeps the batch it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.fc(x)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])


def test_mixup_blends_the_batch_and_the_loss_by_one_weight_and_repeats_with_the_seed() -> None:
    torch.manual_seed(0)
    model, loss = Recorder(), nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 3.0]))
    x, y = _batch()
    value, _ = make_step(model, loss, "cpu", mixup=0.4, seed=5)((x, y))
    # what the step must have done: one λ ~ Beta(0.4, 0.4) and one pairing, both from the seed
    lam = float(np.random.default_rng(5).beta(0.4, 0.4))
    other = torch.randperm(6, generator=torch.Generator().manual_seed(5))
    assert 0 < lam < 1 and not torch.equal(other, torch.arange(6))
    assert torch.allclose(model.seen[0], lam * x + (1 - lam) * x[other])
    out = model.fc(model.seen[0])
    assert value.item() == pytest.approx((lam * loss(out, y) + (1 - lam) * loss(out, y[other])).item(), rel=1e-6)
    again, _ = make_step(model, loss, "cpu", mixup=0.4, seed=5)((x, y))
    assert again.item() == pytest.approx(value.item())
    # off (the default), the batch goes in as it is
    plain, _ = make_step(model, loss, "cpu")((x, y))
    assert torch.equal(model.seen[-1], x) and plain.item() == pytest.approx(loss(model.fc(x), y).item())


def test_mixup_is_planned_recorded_and_checked(square_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    args = ["-q", "train", "--task", "classification", str(square_manifest), "--out", str(out), "--epochs", "1"]
    assert main([*args, "--batch-size", "16", "--mixup", "0.4", "--class-balance", "off", "--tta", "off"]) == 0
    plan = load_bundle(out).meta["plan"]
    assert plan["mixup_alpha"] == 0.4
    assert ClassificationPlan.from_json(plan).mixup_alpha == 0.4
    assert "mixup α 0.4" in ClassificationPlan.from_json(plan).summary()
    del plan["mixup_alpha"]  # bundles from before mixup trained without it
    assert ClassificationPlan.from_json(plan).mixup_alpha == 0.0
    for bad in (-0.1, 11.0):
        with pytest.raises(MedsightError, match="--mixup must be 0"):
            ClassificationOptions(mixup=bad)
