"""Segmentation as a task: the plan (fingerprint → spacing, normalisation, patch, batch, topology, loss), the
preprocessing it implies, the augmentation, sliding-window inference and the post-processing decision.

The rules follow nnU-Net (Isensee et al., Nature Methods 2021), scaled to a compute budget:

* target spacing: the median spacing of the training cases (no resampling when every case already has it);
* normalisation by modality: CT → clip to the 0.5/99.5 percentiles of foreground intensities then z-score with
  the foreground mean and std; MRI and unknown → per-image z-score; colour (RGB) → per-image z-score per channel;
* patch size: the median image shape (after resampling), shrunk along its largest axis until it fits the
  budget's voxel count, and rounded to a multiple of the network's total downsampling;
* batch size: as many patches as the budget's voxels per step allow, at most 5% of the data set's voxels per batch
  (nnU-Net's cap), at least 2;
* topology (MONAI ``DynUNet``): downsample an axis while its feature map stays ≥ 4 voxels (and, for anisotropic
  spacing, only once it is within 2x of the finest spacing), at most 5 times; kernels 3 (1 along an axis still
  too coarse), filters doubling from the base to a cap;
* loss: Dice + cross-entropy (``DiceCELoss``); a third of the patches centred on foreground.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

NETWORK = "monai.networks.nets.DynUNet"

#: Compute budgets by device: largest patch, voxels per optimiser step, filters, iterations per epoch.
BUDGETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "patch_voxels": {2: 128 * 128, 3: 48 * 64 * 48},
        "step_voxels": {2: 8 * 128 * 128, 3: 2 * 48 * 64 * 48},
        "base_filters": 16,
        "max_filters": {2: 256, 3: 128},
        "iterations_per_epoch": 50,
        "time_budget_s": 600.0,
        "epochs": 1000,
    },
    "cuda": {
        "patch_voxels": {2: 512 * 512, 3: 128 * 128 * 128},
        "step_voxels": {2: 12 * 512 * 512, 3: 2 * 128 * 128 * 128},
        "base_filters": 32,
        "max_filters": {2: 512, 3: 320},
        "iterations_per_epoch": 250,
        "time_budget_s": None,
        "epochs": 1000,
    },
}
MIN_FEATURE_MAP = 4
MAX_POOLS = 5


def make_plan(fp: dict[str, Any], device: str = "cpu", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole plan from a fingerprint; ``overrides`` replaces any key (the topology is re-derived when the
    patch or spacing is overridden, unless the topology keys are overridden too)."""
    budget = BUDGETS["cuda" if device.startswith("cuda") else "cpu"]
    dims = int(fp["spatial_dims"])
    overrides = dict(overrides or {})
    spacing = [float(v) for v in overrides.get("target_spacing", fp["spacing_median"])]
    resample = overrides.get(
        "resample",
        not np.allclose(fp["spacing_min"], spacing, rtol=0.01)
        or not np.allclose(fp["spacing_max"], spacing, rtol=0.01),
    )
    shape = np.asarray(fp["shape_median"], dtype=float)
    if resample:
        shape = shape * np.asarray(fp["spacing_median"]) / np.asarray(spacing)
    modality = str(fp["modality"])
    if modality == "CT":
        norm = {
            "scheme": "ct",
            "clip": [[c["p00_5"], c["p99_5"]] for c in fp["foreground_intensity"]],
            "mean": [c["mean"] for c in fp["foreground_intensity"]],
            "std": [max(c["std"], 1e-6) for c in fp["foreground_intensity"]],
        }
    elif modality == "RGB":
        norm = {"scheme": "zscore_per_channel"}
    else:
        norm = {"scheme": "zscore"}
    norm = overrides.get("normalisation", norm)
    patch = (
        [int(v) for v in overrides["patch_size"]] if "patch_size" in overrides else _patch(shape, spacing, budget, dims)
    )
    topology = topology_for(patch, spacing)
    step_voxels = budget["step_voxels"][dims]
    # nnU-Net's cap: one batch covers at most 5% of the data set's voxels
    data_voxels = float(fp["n_cases"]) * float(np.prod(shape))
    fitting = min(int(step_voxels // int(np.prod(patch))), int(0.05 * data_voxels // int(np.prod(patch))))
    batch = int(overrides.get("batch_size", max(2, fitting)))
    filters = _filters(len(topology["strides"]), budget["base_filters"], budget["max_filters"][dims])
    n_classes = len(fp["class_frequency"])
    network = {
        "spatial_dims": dims,
        "in_channels": int(fp["n_channels"]),
        "out_channels": n_classes,
        "kernel_size": topology["kernels"],
        "strides": topology["strides"],
        "upsample_kernel_size": topology["strides"][1:],
        "filters": filters,
        "norm_name": ["instance", {"affine": True}],
        "act_name": ["leakyrelu", {"inplace": True, "negative_slope": 0.01}],
        "res_block": False,
    }
    network.update(overrides.get("network", {}))
    plan: dict[str, Any] = {
        "spatial_dims": dims,
        "target_spacing": spacing,
        "resample": bool(resample),
        "normalisation": norm,
        "patch_size": patch,
        "batch_size": batch,
        "network": network,
        "loss": "DiceCELoss(to_onehot_y, softmax, include_background=False, batch=True): Dice + cross-entropy",
        "foreground_oversampling": 1 / 3,
        "iterations_per_epoch": int(budget["iterations_per_epoch"]),
        "epochs": int(budget["epochs"]),
        "time_budget_s": budget["time_budget_s"],
        "optimizer": {"name": "AdamW", "lr": 2e-3, "weight_decay": 3e-5, "schedule": "linear warm-up, poly 0.9"},
        "warmup_iterations": 50,
        "sliding_window": {"overlap": 0.5, "mode": "gaussian"},
        "test_time_flips": True,
        "mixed_precision": device.startswith("cuda"),
        "nsd_tolerance": 1.0,
        "device_budget": "cuda" if device.startswith("cuda") else "cpu",
    }
    for key, value in overrides.items():
        if key not in ("network", "patch_size", "target_spacing", "normalisation", "batch_size", "resample"):
            plan[key] = copy.deepcopy(value)
    return plan


def _patch(shape: np.ndarray, spacing: Sequence[float], budget: dict[str, Any], dims: int) -> list[int]:
    limit = budget["patch_voxels"][dims]
    patch = np.maximum(shape.copy(), 8.0)
    while np.prod(patch) > limit:
        # shrink the axis that is largest in millimetres (nnU-Net shrinks relative to the median shape)
        axis = int(np.argmax(patch * np.asarray(spacing) / np.asarray(spacing).min()))
        patch[axis] = max(8.0, patch[axis] * 0.9)
    topo = topology_for([int(p) for p in patch], spacing)
    factors = np.prod(np.asarray(topo["strides"]), axis=0)
    out = [int(math.ceil(p / f) * f) for p, f in zip(patch, factors, strict=True)]
    while np.prod(out) > limit * 1.25:  # rounding up may overshoot; step the biggest axis down once more
        axis = int(np.argmax(out))
        out[axis] = max(int(factors[axis]), out[axis] - int(factors[axis]))
    return out


def topology_for(patch: Sequence[int], spacing: Sequence[float]) -> dict[str, list[list[int]]]:
    """nnU-Net's rule, simplified: kernels and strides per level from the patch size and spacing."""
    size = np.asarray(patch, dtype=float)
    sp = np.asarray(spacing, dtype=float)
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1] * len(patch)]
    kernels.append([3 if s / sp.min() <= 2 else 1 for s in sp])
    for _ in range(MAX_POOLS):
        ratio = sp / sp.min()
        can = (size / 2 >= MIN_FEATURE_MAP) & (ratio <= 2)
        if not can.any():
            break
        stride = [2 if c else 1 for c in can]
        strides.append(stride)
        size = size / np.asarray(stride)
        sp = sp * np.asarray(stride)
        kernels.append([3 if s / sp.min() <= 2 else 1 for s in sp])
    return {"kernels": kernels, "strides": strides}


def _filters(levels: int, base: int, cap: int) -> list[int]:
    return [min(base * 2**k, cap) for k in range(levels)]


def describe(plan: dict[str, Any], fp: dict[str, Any]) -> list[str]:
    """The plan in plain words, one decision per line, each with its reason."""
    net = plan["network"]
    norm = plan["normalisation"]["scheme"]
    why_norm = {
        "ct": "CT: intensities are clipped to the 0.5-99.5 percentiles of the foreground, then z-scored with the "
        "foreground mean and standard deviation",
        "zscore": f"modality {fp['modality']}: each image is z-scored on its own (MRI intensities have no fixed scale)",
        "zscore_per_channel": "colour images: each channel of each image is z-scored on its own",
    }.get(norm, norm)
    levels = len(net["strides"])
    lines = [
        f"data: {fp['n_cases']} training cases, {fp['spatial_dims']}D, {fp['n_channels']} channel(s), median shape "
        f"{_x(fp['shape_median'])}, median spacing {_x(fp['spacing_median'])}",
        "spacing: "
        + (
            f"resample to {_x(plan['target_spacing'])} (the median spacing)"
            if plan["resample"]
            else f"keep {_x(plan['target_spacing'])}: every case already has it, no resampling"
        ),
        f"normalisation: {why_norm}",
        f"patch: {_x(plan['patch_size'])} (the median image shape within a {plan['device_budget']} budget, a multiple "
        f"of the network's downsampling), batch {plan['batch_size']}",
        f"network: DynUNet with {levels} levels, strides {net['strides'][1:]}, filters {net['filters']}, "
        f"instance norm, leaky ReLU ({net['in_channels']} in, {net['out_channels']} classes)",
        f"loss: Dice + cross-entropy; {plan['foreground_oversampling']:.0%} of patches centred on foreground",
        f"training: {plan['iterations_per_epoch']} iterations per epoch, up to {plan['epochs']} epochs"
        + (f" or {plan['time_budget_s']:.0f} s" if plan.get("time_budget_s") else "")
        + f", {plan['optimizer']['name']} lr {plan['optimizer']['lr']:g}"
        + (", mixed precision" if plan["mixed_precision"] else ""),
        f"inference: sliding window, overlap {plan['sliding_window']['overlap']}, Gaussian blending"
        + (", test-time flips" if plan["test_time_flips"] else ""),
    ]
    return lines


def _x(values: Sequence[float]) -> str:
    return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


# ----------------------------------------------------------------------------------------------- preprocessing


def normalise(image: np.ndarray, norm: dict[str, Any], roi: np.ndarray | None = None) -> np.ndarray:
    """Apply the plan's normalisation to ``(C, *spatial)``."""
    out = np.empty_like(image, dtype=np.float32)
    for c in range(image.shape[0]):
        x = image[c].astype(np.float32)
        if norm["scheme"] == "ct":
            lo, hi = norm["clip"][c]
            out[c] = (np.clip(x, lo, hi) - norm["mean"][c]) / norm["std"][c]
        else:
            out[c] = (x - x.mean()) / max(float(x.std()), 1e-6)
    return out


def match_channels(image: np.ndarray, n_channels: int) -> np.ndarray:
    """Grey → repeated to the model's channels; colour → mean for a one-channel model."""
    if image.shape[0] == n_channels:
        return image
    if n_channels == 1:
        return image.mean(axis=0, keepdims=True)
    if image.shape[0] == 1:
        return np.repeat(image, n_channels, axis=0)
    raise ValueError(f"image has {image.shape[0]} channels, the model takes {n_channels}")


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> list[int]:
    return [max(1, round(s * sp / t)) for s, sp, t in zip(shape, spacing, target, strict=True)]


def resize(array: np.ndarray, shape: Sequence[int], label: bool) -> np.ndarray:
    """Resize ``(C, *spatial)`` to ``shape``: linear for images and probabilities, nearest for labels."""
    if list(array.shape[1:]) == list(shape):
        return array
    from monai.transforms import Resize

    mode = "nearest" if label else ("bilinear" if len(shape) == 2 else "trilinear")
    out = Resize(spatial_size=list(shape), mode=mode)(torch.as_tensor(array))
    return np.asarray(out.cpu().numpy() if isinstance(out, torch.Tensor) else out)


def needs_resampling(spacing: Sequence[float], plan: dict[str, Any]) -> bool:
    """Every image whose spacing differs from the plan's by more than 1% is resampled (training and inference)."""
    target = plan["target_spacing"]
    return len(spacing) == len(target) and not np.allclose(spacing, target, rtol=0.01)


def preprocess(
    image: np.ndarray,
    spacing: Sequence[float],
    plan: dict[str, Any],
    label: np.ndarray | None = None,
    roi: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Normalise (on the original grid) and resample to the plan's spacing."""
    image = normalise(match_channels(image, plan["network"]["in_channels"]), plan["normalisation"], roi)
    if needs_resampling(spacing, plan):
        shape = resampled_shape(image.shape[1:], spacing, plan["target_spacing"])
        image = resize(image, shape, label=False)
        if label is not None:
            label = resize(label[None].astype(np.float32), shape, label=True)[0].astype(np.int64)
    return image.astype(np.float32), label


# ----------------------------------------------------------------------------------------------- augmentation


def train_transforms(plan: dict[str, Any], seed: int) -> Any:
    """MONAI dictionary transforms for one training sample: pad, crop (foreground-oversampled), augment."""
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandScaleIntensityd,
        SpatialPadd,
    )

    dims = plan["spatial_dims"]
    patch = plan["patch_size"]
    rot = math.pi if dims == 2 else math.pi / 6
    keys = ["image", "label"]
    chain = Compose(
        [
            SpatialPadd(keys, spatial_size=patch, mode="constant"),
            RandCropByPosNegLabeld(
                keys,
                label_key="label",
                spatial_size=patch,
                pos=plan["foreground_oversampling"],
                neg=1 - plan["foreground_oversampling"],
                num_samples=1,
                fg_indices_key="fg",
                bg_indices_key="bg",
            ),
            RandAffined(
                keys,
                prob=0.2,
                rotate_range=[rot] if dims == 2 else [rot] * 3,
                scale_range=[0.3] * dims,
                mode=["bilinear", "nearest"],
                padding_mode="zeros",
            ),
            RandGaussianNoised(["image"], prob=0.1, std=0.1),
            RandGaussianSmoothd(["image"], prob=0.1, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
            RandScaleIntensityd(["image"], factors=0.25, prob=0.15),
            RandAdjustContrastd(["image"], prob=0.15, gamma=(0.7, 1.5)),
            *[RandFlipd(keys, prob=0.5, spatial_axis=a) for a in range(dims)],
        ]
    )
    chain.set_random_state(seed=seed)
    return chain


# ----------------------------------------------------------------------------------------------- inference


Predictor = Callable[[torch.Tensor], torch.Tensor]


def sliding_probabilities(
    image: np.ndarray, predictor: Predictor, plan: dict[str, Any], flips: bool | None = None, sw_batch: int = 4
) -> np.ndarray:
    """Softmax probabilities ``(K, *spatial)`` on the preprocessed grid: Gaussian-blended sliding window,
    averaged over mirrored copies when test-time flips are on."""
    from monai.inferers import sliding_window_inference
    from monai.transforms import SpatialPad

    patch = plan["patch_size"]
    shape = image.shape[1:]
    padded = SpatialPad(spatial_size=patch, method="symmetric")(torch.as_tensor(image))
    x = torch.as_tensor(np.asarray(padded))[None].float()
    use_flips = plan.get("test_time_flips", True) if flips is None else flips
    axes_sets: list[tuple[int, ...]] = [()]
    if use_flips:
        spatial = range(2, 2 + len(patch))
        axes_sets += [c for r in range(1, len(patch) + 1) for c in itertools.combinations(spatial, r)]
    total = None
    with torch.no_grad():
        for axes in axes_sets:
            xi = torch.flip(x, axes) if axes else x
            logits = sliding_window_inference(
                xi,
                roi_size=patch,
                sw_batch_size=sw_batch,
                predictor=predictor,
                overlap=plan["sliding_window"]["overlap"],
                mode=plan["sliding_window"]["mode"],
            )
            assert isinstance(logits, torch.Tensor)
            p = torch.softmax(logits.float(), dim=1)
            p = torch.flip(p, axes) if axes else p
            total = p if total is None else total + p
    assert total is not None
    probs = (total / len(axes_sets))[0].cpu().numpy()
    # undo the symmetric padding
    slices = [slice(None)]
    for s, p in zip(shape, probs.shape[1:], strict=True):
        start = (p - s) // 2
        slices.append(slice(start, start + s))
    return np.ascontiguousarray(probs[tuple(slices)])


def torch_predictor(model: torch.nn.Module, device: str = "cpu", amp: bool = False) -> Predictor:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=device.split(":")[0], enabled=amp):
            return model(x.to(device)).float().cpu()

    return run


def onnx_predictor(path: Any, threads: int | None = None) -> Predictor:
    from medsight.runtime.onnx_export import OnnxPredictor

    runner = OnnxPredictor(path, threads)

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(runner.run(x.cpu().numpy()))

    return run


def keep_largest(mask: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Keep only the largest connected component of each class in ``classes`` (MONAI's transform)."""
    if not classes:
        return mask
    from monai.transforms import KeepLargestConnectedComponent

    t = KeepLargestConnectedComponent(applied_labels=list(classes), is_onehot=False, independent=True)
    out = t(torch.as_tensor(mask[None].copy()))  # the transform works in place on a shared buffer
    return np.asarray(out.cpu().numpy() if isinstance(out, torch.Tensor) else out)[0].astype(mask.dtype)


def decide_postprocessing(preds: Sequence[np.ndarray], labels: Sequence[np.ndarray], n_classes: int) -> dict[str, Any]:
    """nnU-Net's rule on validation cases: keep the largest component of a class when that does not lower the
    mean Dice of that class (checked class by class)."""
    from medsight.tasks.segmentation_metrics import dice_per_case

    base = np.nanmean(dice_per_case(preds, labels, n_classes), axis=0)
    chosen: list[int] = []
    trials: dict[str, Any] = {}
    for k in range(1, n_classes):
        trial = [keep_largest(p, [k]) for p in preds]
        after = np.nanmean(dice_per_case(trial, labels, n_classes), axis=0)
        trials[str(k)] = {"dice_before": float(base[k - 1]), "dice_after": float(after[k - 1])}
        if after[k - 1] >= base[k - 1] - 1e-6 and not np.isnan(after[k - 1]):
            chosen.append(k)
    return {
        "keep_largest_component": chosen,
        "decided_on": f"{len(preds)} validation case(s)",
        "rule": "keep the largest component of a class when its validation Dice does not drop",
        "trials": trials,
    }
