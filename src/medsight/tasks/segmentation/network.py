"""The network and loss the plan names (MONAI ``DynUNet`` and ``DiceCELoss``)."""

from __future__ import annotations

from typing import Any

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
