"""Inference shared by validation during training, evaluation and prediction: Gaussian sliding window (with
mirrored test-time copies), the case on its own grid, and nnU-Net's keep-the-largest-component post-processing."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsight.tasks.segmentation.data import Loaded, preprocess, resize
from medsight.tasks.segmentation.metrics import dice_per_case
from medsight.tasks.segmentation.plan import SegmentationPlan

#: A network as a function: a batch of patches in, logits out (PyTorch or ONNX Runtime behind it).
Predictor = Callable[[torch.Tensor], torch.Tensor]


def sliding_probabilities(
    image: np.ndarray, predictor: Predictor, plan: SegmentationPlan, flips: bool | None = None, sw_batch: int = 4
) -> np.ndarray:
    """Softmax probabilities ``(K, *spatial)`` on the preprocessed grid: Gaussian-blended sliding window,
    averaged over mirrored copies when test-time flips are on."""
    from monai.inferers import sliding_window_inference
    from monai.transforms import SpatialPad

    patch = plan.patch_size
    shape = image.shape[1:]
    padded = SpatialPad(spatial_size=patch, method="symmetric")(torch.as_tensor(image))
    x = torch.as_tensor(np.asarray(padded))[None].float()
    use_flips = plan.test_time_flips if flips is None else flips
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
                overlap=plan.sliding_window.overlap,
                mode=plan.sliding_window.mode,
            )
            assert isinstance(logits, torch.Tensor)
            p = torch.softmax(logits.float(), dim=1)
            p = torch.flip(p, axes) if axes else p
            total = p if total is None else total + p
    assert total is not None
    probs = (total / len(axes_sets))[0].cpu().numpy()
    slices = [slice(None)]  # undo the symmetric padding
    for s, p in zip(shape, probs.shape[1:], strict=True):
        start = (p - s) // 2
        slices.append(slice(start, start + s))
    return np.ascontiguousarray(probs[tuple(slices)])


def torch_predictor(model: torch.nn.Module, device: str = "cpu", amp: bool = False) -> Predictor:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=device.split(":")[0], enabled=amp):
            return model(x.to(device)).float().cpu()

    return run


def onnx_predictor(path: Path, threads: int | None = None) -> Predictor:
    from medsight.runtime.onnx_export import OnnxPredictor

    runner = OnnxPredictor(path, threads)

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(runner.run(x.cpu().numpy()))

    return run


def predict_case(
    case: Loaded, plan: SegmentationPlan, predictor: Predictor, flips: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(mask, probabilities)`` on the case's own grid (before post-processing; outside the ROI set to 0)."""
    image, _ = preprocess(case.image, case.spacing, plan)
    probs = sliding_probabilities(image, predictor, plan, flips)
    probs = resize(probs, case.image.shape[1:], label=False)
    mask = probs.argmax(0).astype(np.uint8)
    if case.roi is not None:
        mask[~case.roi] = 0
    return mask, probs


def keep_largest(mask: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Keep only the largest connected component of each class in ``classes`` (MONAI's transform)."""
    if not classes:
        return mask
    from monai.transforms import KeepLargestConnectedComponent

    t = KeepLargestConnectedComponent(applied_labels=list(classes), is_onehot=False, independent=True)
    out = t(torch.as_tensor(mask[None].copy()))  # the transform works in place on a shared buffer
    return np.asarray(out.cpu().numpy() if isinstance(out, torch.Tensor) else out)[0].astype(mask.dtype)


def postprocess(mask: np.ndarray, classes: Sequence[int], roi: np.ndarray | None = None) -> np.ndarray:
    mask = keep_largest(mask, classes)
    if roi is not None:
        mask[~roi] = 0
    return mask


def decide_postprocessing(preds: Sequence[np.ndarray], labels: Sequence[np.ndarray], n_classes: int) -> dict[str, Any]:
    """nnU-Net's rule on validation cases: keep the largest component of a class when that does not lower the
    mean Dice of that class (checked class by class)."""
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
