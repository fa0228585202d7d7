"""Detection: a small RetinaNet (MONAI) with ATSS matching, hard-negative sampling and sliding-window inference.

Boxes outside this module are ``[x1, y1, x2, y2]`` (x = column, y = row, 2D) or ``[x1, y1, z1, x2, y2, z2]``
(3D, x/y/z along the last/second-last/third-last array axes) in continuous pixel coordinates where pixel
``(row r, col c)`` covers ``[c, c+1) x [r, r+1)``. MONAI orders box coordinates along the array axes instead
(its "x" is the first spatial axis, i.e. the row for a 2D image), so :func:`to_monai` / :func:`from_monai`
swap the axes at the model boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.networks.blocks.backbone_fpn_utils import BackboneWithFPN
from monai.networks.nets import resnet
from torch import nn

#: bundle.json records this builder; ``medsight.tasks.registry`` rebuilds the network from it.
NETWORK = "medsight.tasks.detection.retinanet"


def retinanet(
    spatial_dims: int = 2,
    n_input_channels: int = 1,
    num_classes: int = 1,
    num_anchors: int = 3,
    block_inplanes: Sequence[int] = (16, 32, 64, 128),
    layers: Sequence[int] = (1, 1, 1, 1),
    conv1_t_stride: int = 2,
    returned_layers: Sequence[int] = (1, 2, 3),
    fpn_channels: int = 64,
    size_divisible: int = 32,
) -> RetinaNet:
    """MONAI's RetinaNet on a ResNet-FPN feature extractor sized for CPU training (FPN width ``fpn_channels``)."""
    backbone = resnet.ResNet(
        block="basic",
        layers=list(layers),
        block_inplanes=list(block_inplanes),
        spatial_dims=spatial_dims,
        n_input_channels=n_input_channels,
        conv1_t_stride=conv1_t_stride,
        conv1_t_size=7,
    )
    return_layers = {f"layer{k}": str(v) for v, k in enumerate(returned_layers)}
    in_channels = [int(block_inplanes[k - 1]) for k in returned_layers]
    extractor = BackboneWithFPN(backbone, return_layers, in_channels, fpn_channels, spatial_dims=spatial_dims)
    return RetinaNet(
        spatial_dims=spatial_dims,
        num_classes=num_classes,
        num_anchors=num_anchors,
        feature_extractor=extractor,
        size_divisible=size_divisible,
    )


def feature_map_scales(plan: dict[str, Any]) -> list[int]:
    """Stride of each FPN level relative to the first one (the FPN adds one max-pooled level on top)."""
    n = len(plan["returned_layers"]) + 1
    return [2**i for i in range(n)]


def first_level_stride(plan: dict[str, Any]) -> int:
    """Input pixels per first-level feature pixel: conv1 stride x max-pool (2) x layer strides before it."""
    return int(plan["conv1_t_stride"]) * 2 * 2 ** (min(plan["returned_layers"]) - 1)


def plan_network(
    spatial_dims: int, n_classes: int, box_sizes: np.ndarray, image_size: Sequence[int]
) -> tuple[dict[str, Any], list[list[float]]]:
    """Network keyword arguments and base anchor shapes derived from the training boxes (nnU-Net style).

    ``box_sizes`` is (N, spatial_dims) in array-axis order (rows, cols[, ...]) at the training resolution. Three
    base anchor shapes are taken from the 25th/50th/75th percentile of box size, scaled so that the
    middle pyramid level matches them; the other levels cover 0.5x and 2x and beyond.
    """
    plan = {
        "spatial_dims": spatial_dims,
        "n_input_channels": 1,
        "num_classes": n_classes,
        "num_anchors": 3,
        "block_inplanes": [16, 32, 64, 128],
        "layers": [1, 1, 1, 1],
        "conv1_t_stride": 2,
        "returned_layers": [1, 2, 3],
        "fpn_channels": 64,
        "size_divisible": 32,
    }
    sizes = np.asarray(box_sizes, float).reshape(-1, spatial_dims)
    if len(sizes) == 0:
        sizes = np.full((1, spatial_dims), min(image_size) / 8.0)
    scales = feature_map_scales(plan)
    mid = scales[len(scales) // 2]
    shapes = [np.maximum(np.percentile(sizes, q, axis=0) / mid, 2.0).round(1).tolist() for q in (25, 50, 75)]
    return plan, shapes


def build_detector(network: nn.Module, plan: dict[str, Any], anchor_shapes: list[list[float]]) -> RetinaNetDetector:
    """Wrap the network in MONAI's RetinaNetDetector with ATSS matching and hard-negative sampling."""
    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=feature_map_scales(plan), base_anchor_shapes=[tuple(s) for s in anchor_shapes]
    )
    detector = RetinaNetDetector(network=network, anchor_generator=anchors)
    detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
    detector.set_hard_negative_sampler(batch_size_per_image=64, positive_fraction=0.3, pool_size=20, min_neg=16)
    detector.set_target_keys(box_key="boxes", label_key="labels")
    detector.set_box_selector_parameters(
        score_thresh=0.02, topk_candidates_per_level=1000, nms_thresh=0.22, detections_per_img=50
    )
    return detector


def set_inference(detector: RetinaNetDetector, roi_size: Sequence[int]) -> None:
    """Sliding-window inference over windows of the training size (whole image when it fits)."""
    detector.set_sliding_window_inferer(roi_size=list(roi_size), sw_batch_size=1, overlap=0.25, mode="constant")


def to_monai(boxes: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Our ``[x1, y1, (z1,) x2, y2, (z2)]`` (x = last array axis) → MONAI's array-axis order."""
    b = torch.as_tensor(np.asarray(boxes, np.float32)).reshape(-1, np.asarray(boxes).shape[-1] if len(boxes) else 4)
    d = b.shape[1] // 2
    return torch.cat([b[:, :d].flip(1), b[:, d:].flip(1)], dim=1)


def from_monai(boxes: torch.Tensor) -> np.ndarray:
    """MONAI's array-axis-order boxes → our ``[x1, y1, (z1,) x2, y2, (z2)]``."""
    b = boxes.detach().cpu().float()
    d = b.shape[1] // 2
    return torch.cat([b[:, :d].flip(1), b[:, d:].flip(1)], dim=1).numpy()


def detection_loss(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """Focal-free RetinaNet objective as MONAI computes it: classification BCE + box regression smooth-L1."""
    return sum(losses.values(), torch.zeros(()))
