"""The Grad-CAM sanity check (Adebayo et al. 2018, cascading randomisation): it must fail for explanations that
ignore the weights, or that are flat, and pass for Grad-CAM of a model that learned something."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from medsight.explain.gradcam import gradcam_explainer
from medsight.explain.sanity import MAX_ABS_SPEARMAN, cascade_layers, cascading_randomisation
from medsight.tasks.classification.network import build_network, plan_network


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 noise; label 1 images hold a bright 6x6 square at a random place."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.3, 0.1, (n, 1, 28, 28)).astype(np.float32)
    y = np.arange(n) % 2
    for i in np.flatnonzero(y == 1):
        r, c = rng.integers(2, 20, 2)
        x[i, 0, r : r + 6, c : c + 6] += 0.6
    return x, y


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, np.ndarray]:
    """A small MONAI ResNet (the classification task's network, width 4) trained for seconds to find the square."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_network(plan_network(2, [28, 28], 1, 2, width=4))
    x, y = blobs(256, 0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    model.train()
    for _ in range(6):
        for i in range(0, len(x), 32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[i : i + 32]), yt[i : i + 32]).backward()
            opt.step()
    model.eval()
    test, labels = blobs(64, 1)
    with torch.no_grad():
        accuracy = float((model(torch.as_tensor(test)).argmax(1).numpy() == labels).mean())
    assert accuracy > 0.9  # it learned the task, so its Grad-CAM has something to lose
    return model, test[labels == 1][:12]


def edge_detector(model: nn.Module, images: np.ndarray, targets: list[int]) -> np.ndarray:
    """An 'explanation' that never looks at the model: the Sobel gradient magnitude of the input."""
    grey = images[:, 0]
    return np.hypot(ndimage.sobel(grey, axis=1), ndimage.sobel(grey, axis=2))


def test_layers_are_randomised_from_the_logits_down(trained: tuple[nn.Module, np.ndarray]) -> None:
    model, _ = trained
    assert cascade_layers(model) == ["fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"]


def test_real_gradcam_passes_and_decorrelates_as_weights_are_randomised(
    trained: tuple[nn.Module, np.ndarray],
) -> None:
    model, images = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = cascading_randomisation(model, gradcam_explainer("layer4"), images, [1] * len(images))
    assert report["passed"] is True, report["reason"]
    assert [s["randomised_through"] for s in report["steps"]] == cascade_layers(model)
    final = report["steps"][-1]
    assert final["mean_abs_spearman"] < MAX_ABS_SPEARMAN and final["mean_ssim"] < 0.5
    assert report["n_flat_original"] == 0
    # the check ran on a copy: the trained weights are untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_explanation_that_ignores_the_weights_fails(trained: tuple[nn.Module, np.ndarray]) -> None:
    model, images = trained
    report = cascading_randomisation(model, edge_detector, images, [1] * len(images))
    assert report["passed"] is False
    for step in report["steps"]:  # identical maps at every step of the cascade
        assert step["mean_abs_spearman"] == pytest.approx(1.0) and step["mean_ssim"] == pytest.approx(1.0)
    assert "stay correlated" in report["reason"]


def test_a_flat_map_is_a_failure(trained: tuple[nn.Module, np.ndarray]) -> None:
    model, images = trained

    def blank(m: nn.Module, x: np.ndarray, t: list[int]) -> np.ndarray:
        return np.zeros((len(x), *x.shape[2:]))

    report = cascading_randomisation(model, blank, images, [1] * len(images))
    assert report["passed"] is False and report["n_flat_original"] == len(images)
    assert all(s["n_flat"] == len(images) and s["mean_abs_spearman"] == 1.0 for s in report["steps"])
    assert "flat" in report["reason"]
