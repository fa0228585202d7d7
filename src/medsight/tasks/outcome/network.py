"""The image branch: a small MONAI ResNet on the chest X-ray, and the export wrapper that also yields its embedding.

The fusion models need the CNN's penultimate features as well as its logits, so the ONNX model the runtime runs is
:class:`WithEmbedding`: one output whose first two columns are the logits and whose remaining columns are the
embedding (the input of the ResNet's final ``fc`` layer).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from monai.networks.nets import ResNet
from torch import nn

NETWORK = "monai.networks.nets.ResNet"
N_LOGITS = 2


def plan_resnet(image_size: int, width: int = 16) -> dict[str, Any]:
    """ResNet-18-shaped kwargs for a one-channel square image with two outputs (the classification task's sizing:
    standard 7x7/2 stem with max-pool from 64 px up, a CIFAR-style stem below; width 16 for CPU training)."""
    small = image_size < 64
    return {
        "block": "basic",
        "layers": [2, 2, 2, 2],
        "block_inplanes": [width, 2 * width, 4 * width, 8 * width],
        "spatial_dims": 2,
        "n_input_channels": 1,
        "conv1_t_size": 3 if small else 7,
        "conv1_t_stride": 1 if small else 2,
        "no_max_pool": small,
        "num_classes": N_LOGITS,
    }


def build_network(kwargs: dict[str, Any]) -> nn.Module:
    """Instantiate the planned MONAI ResNet."""
    return ResNet(**kwargs)


def gradcam_layer(model: nn.Module) -> nn.Module:
    """The last convolutional stage: where Grad-CAM looks."""
    return model.get_submodule("layer4")


class WithEmbedding(nn.Module):
    """``[logits | embedding]`` in one tensor, so one ONNX output carries both (a copy; the ResNet is unchanged)."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        self.body = copy.deepcopy(resnet)
        self.fc: nn.Module = self.body.get_submodule("fc")
        self.body.fc = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.body(x)
        return torch.cat([self.fc(emb), emb], dim=1)


def split_outputs(joined: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, 2), embedding (N, F)) from :class:`WithEmbedding`'s output."""
    joined = np.asarray(joined, np.float32)
    return joined[:, :N_LOGITS], joined[:, N_LOGITS:]


def image_outputs(model: nn.Module, images: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(logits, embedding) of a trained ResNet in PyTorch (training uses this before the ONNX model exists)."""
    joined = WithEmbedding(model).eval()
    outs = []
    with torch.no_grad():
        for s in range(0, len(images), batch):
            outs.append(joined(torch.as_tensor(images[s : s + batch], dtype=torch.float32)).cpu().numpy())
    return split_outputs(np.concatenate(outs) if outs else np.zeros((0, N_LOGITS), np.float32))
