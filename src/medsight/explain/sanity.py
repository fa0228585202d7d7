"""The model-parameter randomisation test of Adebayo et al. 2018 ("Sanity checks for saliency maps"), cascading.

An explanation that shows what a model learned must change when the learned weights are destroyed. The test
re-initialises the model's layers from the logits downward, cumulatively (first the output layer, then it and the
block below, ... until every layer is random), recomputes the maps after each step and compares them with the
trained model's maps by Spearman rank correlation (and SSIM, with scikit-image). An explanation that merely
reflects the input (an edge detector) stays correlated and fails. A flat (constant) map explains nothing: it
counts as a failure, both from the trained model and after a step (where it is scored as fully correlated).
"""

from __future__ import annotations

import copy
import html
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity
from torch import nn

from medsight.errors import MedsightError
from medsight.evaluation.card import Figure, Section

#: An explanation method: ``(model, images (N, C, *spatial), target classes) -> maps (N, *spatial)``.
Explainer = Callable[[nn.Module, np.ndarray, list[int]], np.ndarray]
#: The check passes when, with every layer randomised, the mean |Spearman rho| with the trained maps is below this.
MAX_ABS_SPEARMAN = 0.5
METHOD = "cascading model-parameter randomisation (Adebayo et al. 2018)"


def cascade_layers(model: nn.Module) -> list[str]:
    """The model's top-level blocks that hold weights, from the output (logits) down to the input."""
    names = [name for name, child in model.named_children() if any(True for _ in child.parameters())]
    if not names:
        raise MedsightError(f"{type(model).__name__} has no layers with weights to randomise")
    return names[::-1]


def cascading_randomisation(
    model: nn.Module,
    explain: Explainer,
    images: np.ndarray,
    targets: list[int],
    layers: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the cascade on ``images`` and return the per-step similarities and the verdict.

    ``passed`` is True only when no trained map is flat and, with every layer randomised, the mean |rho| is below
    :data:`MAX_ABS_SPEARMAN`. The model itself is not changed (the cascade runs on a copy).
    """
    order = list(layers) if layers is not None else cascade_layers(model)
    original = np.asarray(explain(model, images, targets), float)
    flat_original = [_flat(m) for m in original]
    clone = copy.deepcopy(model).eval()
    steps: list[dict[str, Any]] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in order:
            _reinitialise(clone.get_submodule(name))
            maps = np.asarray(explain(clone, images, targets), float)
            rhos: list[float] = []
            ssims: list[float | None] = []
            n_flat = 0
            for a, b, a_flat in zip(original, maps, flat_original, strict=True):
                if a_flat or _flat(b):
                    n_flat += 1
                    rhos.append(1.0)  # a flat map counts as not decorrelated: a failure
                    ssims.append(1.0)
                    continue
                rhos.append(float(spearmanr(a.ravel(), b.ravel()).statistic))
                ssims.append(_ssim(a, b))
            valid_ssim = [v for v in ssims if v is not None]
            steps.append(
                {
                    "randomised_through": name,
                    "mean_abs_spearman": float(np.mean(np.abs(rhos))),
                    "median_spearman": float(np.median(rhos)),
                    "mean_ssim": float(np.mean(valid_ssim)) if valid_ssim else None,
                    "n_flat": n_flat,
                }
            )
    final = steps[-1]["mean_abs_spearman"]
    n_flat_original = int(sum(flat_original))
    passed = n_flat_original == 0 and final < MAX_ABS_SPEARMAN
    if n_flat_original:
        why = f"{n_flat_original} of {len(original)} maps of the trained model are flat"
    elif passed:
        why = f"maps decorrelate: mean |rho| {final:.3f} < {MAX_ABS_SPEARMAN} with every layer randomised"
    else:
        why = f"maps stay correlated: mean |rho| {final:.3f} >= {MAX_ABS_SPEARMAN} with every layer randomised"
    return {
        "test": METHOD,
        "n_images": len(original),
        "layers": order,
        "steps": steps,
        "n_flat_original": n_flat_original,
        "mean_abs_spearman": final,
        "threshold": MAX_ABS_SPEARMAN,
        "passed": bool(passed),
        "reason": why,
    }


def _reinitialise(module: nn.Module) -> None:
    """PyTorch's own initialisation for every sub-layer of ``module`` that has one (conv, linear, norm)."""
    for sub in module.modules():
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset):
            reset()


def _flat(a: np.ndarray) -> bool:
    return not np.all(np.isfinite(a)) or float(np.ptp(a)) == 0.0


def _ssim(a: np.ndarray, b: np.ndarray) -> float | None:
    """SSIM of the two maps, each scaled to [0, 1] (None when a side is under 3 pixels)."""
    side = min(a.shape)
    if side < 3:
        return None
    win = min(7, side if side % 2 else side - 1)
    na, nb = (a - a.min()) / np.ptp(a), (b - b.min()) / np.ptp(b)
    return float(structural_similarity(na, nb, data_range=1.0, win_size=win))


def sanity_section(method: str, report: dict[str, Any], figures: list[Figure]) -> Section:
    """The card's "Explanations" section: the method, the verdict with its reason, and the cascade step by step."""
    verdict = "passed" if report.get("passed") else "FAILED"
    text = html.escape(
        f"{method}. Sanity check ({report['test']}) over {report['n_images']} images: {verdict}: {report['reason']}. "
        "Layers are re-initialised from the logits downward, cumulatively; after each step the maps are compared with "
        "the trained model's (signed Grad-CAM, before the ReLU the overlays apply). Low correlation means the maps "
        "depend on what the model learned; a flat map counts as a failure."
    )
    rows: list[list[Any]] = [["randomised down to", "mean |Spearman rho|", "median rho", "mean SSIM", "flat maps"]]
    for s in report.get("steps", []):
        ssim = "—" if s["mean_ssim"] is None else f"{s['mean_ssim']:.3f}"
        rows.append(
            [s["randomised_through"], f"{s['mean_abs_spearman']:.3f}", f"{s['median_spearman']:.3f}", ssim, s["n_flat"]]
        )
    return Section("Explanations", text, rows, figures)
