"""The detector: a small RetinaNet (MONAI) with ATSS matching, hard-negative sampling and sliding-window inference.

Boxes outside this module are ``[x1, y1, x2, y2]`` (x = column, y = row, 2D) in continuous pixel coordinates where
pixel ``(row r, col c)`` covers ``[c, c+1) x [r, r+1)``. MONAI orders box coordinates along the array axes instead
(its "x" is the first spatial axis, i.e. the row for a 2D image), so :func:`to_monai` / :func:`from_monai` swap
the axes at the model boundary. Only the network's head maps are exported to ONNX; anchors, box decoding and NMS
stay in MONAI, so PyTorch and ONNX Runtime share one post-processing path (:class:`OrtHeads`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.networks.blocks.backbone_fpn_utils import BackboneWithFPN
from monai.networks.nets import resnet
from torch import nn

from medsight.tasks.detection.plan import DetectionPlan, NetworkPlan

log = logging.getLogger("medsight")

#: bundle.json records this builder; ``medsight.tasks.registry`` rebuilds the network from it.
NETWORK = "medsight.tasks.detection.network.retinanet"


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
    """MONAI's RetinaNet on a ResNet-FPN feature extractor sized for CPU training (FPN width ``fpn_channels``).

    Keyword arguments are those of :class:`~medsight.tasks.detection.plan.NetworkPlan`, so a bundle rebuilds the
    network from its recorded kwargs.
    """
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


def build_network(plan: NetworkPlan) -> RetinaNet:
    return retinanet(**plan.to_json())


def build_detector(network: nn.Module, plan: DetectionPlan) -> RetinaNetDetector:
    """Wrap ``network`` (the RetinaNet, or :class:`OrtHeads`) in MONAI's RetinaNetDetector as the plan says."""
    d = plan.detector
    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=plan.feature_map_scales, base_anchor_shapes=[tuple(s) for s in plan.anchor_shapes]
    )
    detector = RetinaNetDetector(network=network, anchor_generator=anchors)
    detector.set_atss_matcher(num_candidates=d.atss_candidates, center_in_gt=False)
    detector.set_hard_negative_sampler(
        batch_size_per_image=d.sampled_anchors_per_image,
        positive_fraction=d.positive_fraction,
        pool_size=d.hard_negative_pool,
        min_neg=d.min_negatives,
    )
    detector.set_target_keys(box_key="boxes", label_key="labels")
    detector.set_box_selector_parameters(
        score_thresh=d.score_threshold,
        topk_candidates_per_level=d.topk_candidates_per_level,
        nms_thresh=d.nms_threshold,
        detections_per_img=d.detections_per_image,
    )
    # Sliding-window inference over windows of the training size (the whole image when it fits).
    detector.set_sliding_window_inferer(
        roi_size=[plan.image_size, plan.image_size], sw_batch_size=1, overlap=d.window_overlap, mode="constant"
    )
    return detector


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
    """The RetinaNet objective as MONAI computes it: classification BCE + box regression smooth-L1."""
    return sum(losses.values(), torch.zeros((), device=next(iter(losses.values())).device))


@dataclass
class Detections:
    """One image's detections: boxes ``[x1, y1, x2, y2]`` in the pixels of the image read, scores, class indices."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def detect(
    detector: RetinaNetDetector, images: np.ndarray, scales: Sequence[tuple[float, float]], batch: int = 4
) -> list[Detections]:
    """Boxes (mapped back to the pixels of each image read), scores and labels for every prepared image."""
    device = next((p.device for p in detector.parameters()), torch.device("cpu"))
    out: list[Detections] = []
    detector.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for start in range(0, len(images), batch):
            xb = torch.as_tensor(images[start : start + batch], device=device)
            for k, d in enumerate(detector(xb, use_inferer=True)):
                sx, sy = scales[start + k]
                out.append(
                    Detections(
                        boxes=from_monai(d["boxes"]).reshape(-1, 4) / np.array([sx, sy, sx, sy]),
                        scores=d["labels_scores"].detach().cpu().numpy().astype(np.float64),
                        labels=d["labels"].detach().cpu().numpy().astype(int),
                    )
                )
    return out


# ----------------------------------------------------------------------------------------------------- ONNX


class Heads(nn.Module):
    """The RetinaNet's raw head maps as a flat tuple (classification levels, then box-regression levels)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.network(x)
        return (*out["classification"], *out["box_regression"])


class OrtHeads(nn.Module):
    """The exported head maps run by ONNX Runtime, shaped like the RetinaNet's output so MONAI's detector decodes
    them exactly as it decodes PyTorch's (the export has a fixed batch of one, so images run one at a time)."""

    def __init__(self, onnx_path: Path, plan: DetectionPlan) -> None:
        from medsight.runtime.onnx_export import OnnxPredictor

        super().__init__()
        self.predictor = OnnxPredictor(onnx_path)
        net = plan.network
        self.spatial_dims = net.spatial_dims
        self.num_classes = net.num_classes
        self.num_anchors = net.num_anchors
        self.size_divisible = net.size_divisible
        self.cls_key, self.box_reg_key = "classification", "box_regression"
        self.levels = len(plan.feature_map_scales)

    def forward(self, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        session, name = self.predictor.session, self.predictor.input_name
        per_image = [
            session.run(None, {name: np.ascontiguousarray(x[i : i + 1].cpu().numpy(), np.float32)})
            for i in range(len(x))
        ]
        maps = [torch.as_tensor(np.concatenate([o[j] for o in per_image])) for j in range(2 * self.levels)]
        return {self.cls_key: maps[: self.levels], self.box_reg_key: maps[self.levels :]}


def export_heads(network: nn.Module, example: torch.Tensor, path: Path) -> dict[str, Any]:
    """ONNX of the network's head maps, checked with ONNX Runtime. The export is a convenience for deployment:
    when it fails the bundle still works (on PyTorch), and ``bundle.json`` says why."""
    from medsight.runtime.onnx_export import OnnxPredictor, quiet_onnx_logs

    heads = Heads(network).eval().cpu()
    example = example.cpu()
    try:
        with warnings.catch_warnings(), quiet_onnx_logs():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(heads, (example,), verbose=False)
            assert program is not None
            program.save(str(path), external_data=True)
        with torch.no_grad():
            expected = heads(example)
        predictor = OnnxPredictor(path)
        got = predictor.session.run(None, {predictor.input_name: example.numpy()})
        gap = max(float(np.max(np.abs(e.numpy() - g))) for e, g in zip(expected, got, strict=True))
    except Exception as exc:
        log.warning("ONNX export of the detector heads failed: %s", exc)
        return {"file": None, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    files = sorted(p.name for p in path.parent.glob(path.name + "*"))
    return {
        "file": path.name,
        "files": files,
        "outputs": "classification maps per level, then box-regression maps per level (pre-anchor decoding)",
        "max_abs_diff_vs_torch": gap,
        "checked_batch": int(example.shape[0]),
        "fixed_input_shape": list(example.shape[1:]),
    }
