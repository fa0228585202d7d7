"""Grad-CAM heatmaps (captum's LayerGradCam) and the weight-randomisation sanity check of Adebayo et al. 2018."""

from __future__ import annotations

import copy

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from scipy.stats import spearmanr
from torch import nn


def gradcam(model: nn.Module, layer: nn.Module, images: np.ndarray, targets: list[int]) -> np.ndarray:
    """Heatmaps in [0, 1] at the input's spatial size, one per image, for the given target class."""
    model.eval()
    x = torch.as_tensor(images, dtype=torch.float32)
    device = next(model.parameters()).device
    x = x.to(device).requires_grad_(True)
    cam = LayerGradCam(model, layer)
    attr = cam.attribute(x, target=torch.as_tensor(targets, device=device), relu_attributions=True)
    up = LayerAttribution.interpolate(
        attr, tuple(x.shape[2:]), interpolate_mode="bilinear" if x.ndim == 4 else "trilinear"
    )
    maps = up.detach().cpu().numpy()[:, 0]
    flat = maps.reshape(len(maps), -1)
    hi = flat.max(axis=1, keepdims=True)
    flat = np.where(hi > 0, flat / np.where(hi > 0, hi, 1), 0.0)
    return flat.reshape(maps.shape).astype(np.float32)


def randomised_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """The same architecture with every learned weight re-initialised (cascading randomisation, all layers)."""
    torch.manual_seed(seed)
    clone = copy.deepcopy(model)
    for module in clone.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return clone.eval()


def sanity_check(
    model: nn.Module, layer_name: str, images: np.ndarray, targets: list[int], seed: int = 0
) -> dict[str, float | str | int]:
    """Spearman rank correlation between maps of the trained and a weight-randomised model.

    Maps that merely reflect the input (edge detectors) stay correlated after randomisation; maps that
    depend on what was learned do not. Passes when the mean |rho| is below 0.5.
    """
    trained = gradcam(model, _layer(model, layer_name), images, targets)
    rnd_model = randomised_copy(model, seed)
    randomised = gradcam(rnd_model, _layer(rnd_model, layer_name), images, targets)
    rhos = []
    for a, b in zip(trained, randomised, strict=True):
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            rhos.append(0.0)
            continue
        rhos.append(float(spearmanr(a.ravel(), b.ravel()).statistic))
    mean = float(np.mean(np.abs(rhos))) if rhos else float("nan")
    return {
        "test": "model-parameter randomisation (Adebayo et al. 2018)",
        "n_images": len(rhos),
        "mean_abs_spearman": mean,
        "median_spearman": float(np.median(rhos)) if rhos else float("nan"),
        "passed": "yes" if mean < 0.5 else "no",
    }


def _layer(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules())[name]


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
