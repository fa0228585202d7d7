"""An image that fits one inference window runs through the network directly: the same probabilities as MONAI's
sliding-window inference (the blend of one window is the window), without its bookkeeping (a real-time cost)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from medsight.tasks.segmentation.inference import sliding_probabilities


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_one_window_gives_monais_probabilities_without_the_sliding_window(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1)).eval()
    plan: Any = SimpleNamespace(
        patch_size=[64, 48], test_time_flips=False, sliding_window=SimpleNamespace(overlap=0.5, mode=mode)
    )
    image = np.random.default_rng(0).normal(size=(1, 64, 48)).astype(np.float32)
    with torch.no_grad():
        expected = torch.softmax(
            sliding_window_inference(torch.from_numpy(image)[None], [64, 48], 4, net, overlap=0.5, mode=mode), dim=1
        )[0].numpy()
    calls: list[int] = []
    import monai.inferers

    monkeypatch.setattr(monai.inferers, "sliding_window_inference", lambda *a, **k: calls.append(1))
    got = sliding_probabilities(image, net, plan)
    assert not calls  # the network ran on the window directly
    np.testing.assert_allclose(got, expected, atol=1e-5)
    smaller = image[:, 5:50, 3:40]  # padded to the window: still one window, still direct
    assert sliding_probabilities(smaller, net, plan).shape == (3, 45, 37) and not calls
