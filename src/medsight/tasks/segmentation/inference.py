"""Inference shared by validation during training, evaluation and prediction: Gaussian sliding window (with
mirrored test-time copies, each of which can be collected for the per-case uncertainty), the case on its own grid, and
nnU-Net's keep-the-largest-component post-processing."""

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
from medsight.tasks.segmentation.uncertainty import Mirrors

#: A network as a function: a batch of patches in, logits out (PyTorch or ONNX Runtime behind it).
Predictor = Callable[[torch.Tensor], torch.Tensor]


def mirror_axes(dims: int, every_combination: bool) -> list[tuple[int, ...]]:
    """Axes of an ``(N, C, *spatial)`` batch to mirror, the identity first: every combination of spatial axes
    (nnU-Net's test-time mirroring, 2^dims passes) or, bounded, one flip per axis (dims + 1 passes)."""
    spatial = range(2, 2 + dims)
    if every_combination:
        return [()] + [c for r in range(1, dims + 1) for c in itertools.combinations(spatial, r)]
    return [()] + [(a,) for a in spatial]


def sliding_probabilities(
    image: np.ndarray,
    predictor: Predictor,
    plan: SegmentationPlan,
    flips: bool | None = None,
    sw_batch: int = 4,
    mirrors: Mirrors | None = None,
) -> np.ndarray:
    """Softmax probabilities ``(K, *spatial)`` on the preprocessed grid: Gaussian-blended sliding window,
    averaged over mirrored copies when test-time flips are on. ``mirrors`` collects every pass for the
    uncertainty (with flips off it adds one flip per axis for the uncertainty only; the probabilities stay
    those of the unflipped pass)."""
    from monai.inferers import sliding_window_inference
    from monai.transforms import SpatialPad

    patch = plan.patch_size
    shape = image.shape[1:]
    padded = SpatialPad(spatial_size=patch, method="symmetric")(torch.as_tensor(image))
    x = torch.as_tensor(np.asarray(padded))[None].float()
    use_flips = plan.test_time_flips if flips is None else flips
    averaged = mirror_axes(len(patch), every_combination=True) if use_flips else [()]
    passes = averaged if mirrors is None or use_flips else mirror_axes(len(patch), every_combination=False)
    total = None
    with torch.no_grad():
        for axes in passes:
            xi = torch.flip(x, axes) if axes else x
            if tuple(xi.shape[2:]) == tuple(patch):
                # one window: the blend of a single window is the window itself, so the network runs on it directly
                # (MONAI's window bookkeeping cost as much as a small network's forward pass per ultrasound frame)
                logits: Any = predictor(xi)
            else:
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
            if mirrors is not None:
                mirrors.add(_unpad(p[0].cpu().numpy(), shape))
            if axes in averaged:
                total = p if total is None else total + p
    assert total is not None
    return _unpad((total / len(averaged))[0].cpu().numpy(), shape)


def _unpad(probs: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Undo the symmetric padding to the patch size."""
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


def onnx_predictor(path: Path, threads: int | None = None) -> Predictor:
    from medsight.runtime.onnx_export import OnnxPredictor

    runner = OnnxPredictor(path, threads)

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(runner.run(x.cpu().numpy()))

    return run


def predict_case(
    case: Loaded,
    plan: SegmentationPlan,
    predictor: Predictor,
    flips: bool | None = None,
    mirrors: Mirrors | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(mask, probabilities)`` on the case's own grid (before post-processing; outside the ROI set to 0).
    ``mirrors``, when given, receives the mirrored passes on the same grid (for :mod:`.uncertainty`)."""
    image, _ = preprocess(case.image, case.spacing, plan)
    probs = sliding_probabilities(image, predictor, plan, flips, mirrors=mirrors)
    probs = resize(probs, case.image.shape[1:], label=False)
    mask = probs.argmax(0).astype(np.uint8)
    if case.roi is not None:
        mask[~case.roi] = 0
    if mirrors is not None:
        mirrors.finish(case.image.shape[1:], case.roi)
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
