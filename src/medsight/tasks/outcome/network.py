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
from torch import nn

from medsight.tasks.classification.network import plan_network

N_LOGITS = 2


def plan_resnet(image_size: int, width: int = 16) -> dict[str, Any]:
    """The classification task's ResNet sizing for a one-channel square image with two outputs."""
    return plan_network(2, [image_size, image_size], 1, N_LOGITS, width)


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
