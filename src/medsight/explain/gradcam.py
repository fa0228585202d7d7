"""Grad-CAM heatmaps (captum's LayerGradCam) and overlays; the weight-randomisation sanity check of Adebayo et al.
2018 is :mod:`medsight.explain.sanity`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn


def gradcam(
    model: nn.Module, layer: nn.Module, images: np.ndarray, targets: list[int], signed: bool = False
) -> np.ndarray:
    """Heatmaps at the input's spatial size, one per image, for the given target class.

    Default: the displayed map, ReLU'd and scaled to [0, 1]. ``signed``: the raw class-weighted activation map
    before the ReLU and without scaling, which the sanity check compares (a ReLU'd map of a randomised model is
    often all zero, and a blank map cannot be rank-correlated).
    """
    model.eval()
    x = torch.as_tensor(images, dtype=torch.float32)
    device = next(model.parameters()).device
    x = x.to(device).requires_grad_(True)
    cam = LayerGradCam(model, layer)
    attr = cam.attribute(x, target=torch.as_tensor(targets, device=device), relu_attributions=not signed)
    up = LayerAttribution.interpolate(
        attr, tuple(x.shape[2:]), interpolate_mode="bilinear" if x.ndim == 4 else "trilinear"
    )
    maps = up.detach().cpu().numpy()[:, 0]
    return maps.astype(np.float32) if signed else unit_scaled(maps)


def unit_scaled(maps: np.ndarray) -> np.ndarray:
    """Each map divided by its maximum, so the displayed maps span [0, 1] (an all-zero map stays zero)."""
    flat = maps.reshape(len(maps), -1)
    hi = flat.max(axis=1, keepdims=True)
    flat = np.where(hi > 0, flat / np.where(hi > 0, hi, 1), 0.0)
    return flat.reshape(maps.shape).astype(np.float32)


def gradcam_explainer(layer_name: str) -> Callable[[nn.Module, np.ndarray, list[int]], np.ndarray]:
    """Signed Grad-CAM at the layer called ``layer_name`` of whatever model it is given (the sanity check hands it
    copies of the model with more and more layers re-initialised)."""

    def explain(model: nn.Module, images: np.ndarray, targets: list[int]) -> np.ndarray:
        return gradcam(model, model.get_submodule(layer_name), images, targets, signed=True)

    return explain


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 picture of a channels-first image with the heatmap in 'jet' on top (3D: the middle slice)."""
    from matplotlib import colormaps

    grey = image.mean(axis=0)
    if grey.ndim == 3:  # 3D volume: show the middle slice
        mid = grey.shape[0] // 2
        grey, heatmap = grey[mid], heatmap[mid]
    g = (grey - grey.min()) / (np.ptp(grey) or 1.0)
    base = np.stack([g] * 3, axis=-1)
    hot = colormaps["jet"](np.clip(heatmap, 0, 1))[..., :3]
    mix = (1 - alpha * heatmap[..., None]) * base + alpha * heatmap[..., None] * hot
    return np.asarray(np.clip(mix * 255, 0, 255), np.uint8)
