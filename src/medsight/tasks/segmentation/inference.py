"""Inference shared by validation during training, evaluation and prediction: Gaussian sliding window (with
mirrored test-time copies, each of which can be collected for the per-case uncertainty), the case on its own grid, and
the post-processing chosen on the validation cases: nnU-Net's keep-the-largest-component, then, for a class that can
be absent from an image (a lesion), dropping an unsure prediction of it (see :func:`decide_unsure`)."""

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


def mirror_axes(dims: int, every_combination: bool, flip_axes: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """Axes of an ``(N, C, *spatial)`` batch to mirror, the identity first: every combination of the spatial axes
    training flipped (``flip_axes``, 0-based; ``None``: all of them; nnU-Net's test-time mirroring, 2^n passes) or,
    bounded, one flip per axis (n + 1 passes). An axis training never flipped is never mirrored at test time."""
    spatial = [2 + a for a in (range(dims) if flip_axes is None else flip_axes)]
    if every_combination:
        return [()] + [c for r in range(1, len(spatial) + 1) for c in itertools.combinations(spatial, r)]
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
    if use_flips:
        passes = averaged = mirror_axes(len(patch), True, plan.mirrored_axes())
    else:  # one pass; with ``mirrors``, one flip per flipped axis more, for the uncertainty only
        averaged = [()]
        passes = averaged if mirrors is None else mirror_axes(len(patch), False, plan.mirrored_axes())
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


def onnx_predictor(path: Path, threads: int | None = None, spinning: bool = False) -> Predictor:
    """ONNX Runtime as a predictor; its threads do not busy-wait between calls (``spinning``), because every window
    is followed by our own resizing and post-processing on the same cores (``OnnxPredictor``)."""
    from medsight.runtime.onnx_export import OnnxPredictor

    runner = OnnxPredictor(path, threads, spinning=spinning)

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


#: Candidate gates for an unsure class prediction: the peak probability its region must reach (0 = no condition) ...
UNSURE_PEAKS = (0.0, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
#: ... and the share of the image its region must cover (0 = no condition).
UNSURE_AREAS = (0.0, 0.001, 0.003, 0.01, 0.03)
#: A gate is kept only when it raises the class's mean validation Dice by at least this much.
UNSURE_MIN_GAIN = 0.005


def region_summary(mask: np.ndarray, probs: np.ndarray, n_classes: int) -> np.ndarray:
    """``(classes-1, 2)``: per foreground class of a post-processed ``mask``, the share of the image its region
    covers and the highest probability of the class inside it (both 0 where the class is absent)."""
    out = np.zeros((n_classes - 1, 2), dtype=np.float64)
    for k in range(1, n_classes):
        region = mask == k
        if region.any():
            out[k - 1] = float(region.mean()), float(probs[k][region].max())
    return out


def is_unsure(area: float, peak: float, gate: dict[str, float]) -> bool:
    """Whether a predicted region (``area``: its share of the image, ``peak``: its highest probability) falls
    below ``gate`` (``min_peak``, ``min_area_fraction``); the one rule validation, evaluation and prediction use."""
    return area > 0 and (peak < gate["min_peak"] or area < gate["min_area_fraction"])


def drop_unsure(mask: np.ndarray, probs: np.ndarray, unsure: dict[str, dict[str, float]]) -> np.ndarray:
    """``mask`` with each gated class removed where its region is smaller or less certain than the gate chosen on
    validation (``unsure``: class index as a string → ``min_peak``, ``min_area_fraction``)."""
    for key, gate in unsure.items():
        region = mask == int(key)
        if region.any() and is_unsure(float(region.mean()), float(probs[int(key)][region].max()), gate):
            mask = mask.copy()
            mask[region] = 0
    return mask


def drop_summarised(mask: np.ndarray, summary: np.ndarray, post: dict[str, Any]) -> np.ndarray:
    """:func:`drop_unsure` from a case's :func:`case_summaries` (validation, where the probabilities are gone)."""
    keep = post["keep_largest_component"]
    for key, gate in (post.get("drop_unsure") or {}).items():
        k = int(key)
        area, peak = summary[1 if k in keep else 0][k - 1]
        if is_unsure(float(area), float(peak), gate):
            mask = mask.copy()
            mask[mask == k] = 0
    return mask


def postprocess(
    mask: np.ndarray,
    classes: Sequence[int],
    roi: np.ndarray | None = None,
    probs: np.ndarray | None = None,
    unsure: dict[str, dict[str, float]] | None = None,
) -> np.ndarray:
    """The bundle's post-processing: largest components, the region of interest, then the unsure-class gates."""
    mask = keep_largest(mask, classes)
    if roi is not None:
        mask[~roi] = 0
    if unsure and probs is not None:
        mask = drop_unsure(mask, probs, unsure)
    return mask


def case_summaries(mask: np.ndarray, probs: np.ndarray, n_classes: int) -> np.ndarray:
    """``(2, classes-1, 2)``: :func:`region_summary` of a case's mask as predicted and with every class cut to its
    largest component, so that the gates can be chosen after keep-largest without holding every case's
    probabilities (a many-class CT's would not fit in memory)."""
    largest = keep_largest(mask, list(range(1, n_classes)))
    return np.stack([region_summary(mask, probs, n_classes), region_summary(largest, probs, n_classes)])


def decide_postprocessing(
    preds: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    n_classes: int,
    summaries: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """nnU-Net's rule on validation cases: keep the largest component of a class when that does not lower the
    mean Dice of that class (checked class by class). With the cases' :func:`case_summaries`, the unsure-prediction
    gate of every class is then chosen on the same cases (:func:`decide_unsure`)."""
    base = np.nanmean(dice_per_case(preds, labels, n_classes), axis=0)
    chosen: list[int] = []
    trials: dict[str, Any] = {}
    for k in range(1, n_classes):
        trial = [keep_largest(p, [k]) for p in preds]
        after = np.nanmean(dice_per_case(trial, labels, n_classes), axis=0)
        trials[str(k)] = {"dice_before": float(base[k - 1]), "dice_after": float(after[k - 1])}
        if after[k - 1] >= base[k - 1] - 1e-6 and not np.isnan(after[k - 1]):
            chosen.append(k)
    decision: dict[str, Any] = {
        "keep_largest_component": chosen,
        "decided_on": f"{len(preds)} validation case(s)",
        "rule": "keep the largest component of a class when its validation Dice does not drop",
        "trials": trials,
    }
    if summaries is not None:
        kept = [keep_largest(p, chosen) for p in preds]
        which = np.array([k in chosen for k in range(1, n_classes)])
        summary = np.stack([np.where(which[:, None], s[1], s[0]) for s in summaries])
        decision |= decide_unsure(kept, labels, summary, n_classes)
    return decision


def decide_unsure(
    preds: Sequence[np.ndarray], labels: Sequence[np.ndarray], summary: np.ndarray, n_classes: int
) -> dict[str, Any]:
    """For each class, the gate that drops its prediction from an image when the predicted region's peak
    probability or its share of the image is below a threshold, chosen on validation cases: every pair of
    :data:`UNSURE_PEAKS` x :data:`UNSURE_AREAS` is tried and the one with the highest mean validation Dice of
    the class wins (ties to the milder gate, tried first); it is kept only when it gains at least
    :data:`UNSURE_MIN_GAIN`. A lesion model that draws something on every lesion-free image (BUSI's normal
    images) is what this is for; a class present in every validation image gains nothing and gets no gate.
    ``summary`` is ``(cases, classes-1, 2)``: :func:`region_summary` of each post-processed prediction."""
    dice = dice_per_case(preds, labels, n_classes)
    present = np.stack([[bool(np.any(y == k)) for k in range(1, n_classes)] for y in labels])
    gates: dict[str, dict[str, float]] = {}
    trials: dict[str, Any] = {}
    for k in range(n_classes - 1):
        area, peak, predicted = summary[:, k, 0], summary[:, k, 1], summary[:, k, 0] > 0
        base = float(dice[:, k].mean())
        best = (base, 0.0, 0.0)
        for min_peak in UNSURE_PEAKS:
            for min_area in UNSURE_AREAS:
                drop = predicted & ((peak < min_peak) | (area < min_area))
                after = float(np.where(drop, np.where(present[:, k], 0.0, 1.0), dice[:, k]).mean())
                if after > best[0] + 1e-9:
                    best = (after, min_peak, min_area)
        trials[str(k + 1)] = {
            "dice_before": base,
            "dice_after": best[0],
            "min_peak": best[1],
            "min_area_fraction": best[2],
        }
        if best[0] >= base + UNSURE_MIN_GAIN:
            gates[str(k + 1)] = {"min_peak": best[1], "min_area_fraction": best[2]}
    return {
        "drop_unsure": gates,
        "unsure_rule": f"drop a class from an image when its region's peak probability or share of the image is "
        f"below the pair of {list(UNSURE_PEAKS)} x {list(UNSURE_AREAS)} with the best validation Dice of the class, "
        f"kept when it gains >= {UNSURE_MIN_GAIN}",
        "unsure_trials": trials,
    }
