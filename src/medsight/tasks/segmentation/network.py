"""The network and loss the plan names (MONAI ``DynUNet`` and ``DiceCELoss``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medsight.tasks.registry import build_network
from medsight.tasks.segmentation.plan import NETWORK, SegmentationPlan


def network_spec(plan: SegmentationPlan) -> dict[str, Any]:
    """What ``bundle.json["network"]`` records, so :meth:`Bundle.network` can rebuild it."""
    return {"name": NETWORK, "kwargs": plan.network.kwargs()}


def build(plan: SegmentationPlan) -> nn.Module:
    return build_network(network_spec(plan))


def loss_function() -> nn.Module:
    """Dice (foreground classes, batch Dice) + cross-entropy, as nnU-Net."""
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)


#: The ensemble of segmentation networks (:class:`ProbabilityAverage`), as bundle.json names it.
PROBABILITY_AVERAGE = "medsight.tasks.segmentation.network.ProbabilityAverage"


class ProbabilityAverage(nn.Module):
    """Several trained ``DynUNet``s as one network: the mean of their softmax probabilities, returned as its log.

    nnU-Net averages the probabilities of its models, not their logits; returning ``log(mean p)`` keeps the
    predictor contract (logits in, softmax applied by the caller), since ``softmax(log p) = p`` when ``p`` sums to
    one. One module, so the bundle, ONNX export and every predictor treat the ensemble like any network.
    """

    def __init__(self, members: list[dict[str, Any]]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, not {len(members)}")
        self.members = nn.ModuleList([build_network({"name": NETWORK, "kwargs": kw}) for kw in members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.stack([torch.softmax(m(x), dim=1) for m in self.members]).mean(dim=0)
        return torch.log(mean.clamp_min(1e-12))
