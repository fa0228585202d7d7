"""The classification plan: network size from the data, class balance, loss weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsight.tasks import classification as task


def test_width_and_stem_follow_the_data() -> None:
    small = task.plan_network(2, [28, 28], 1, 2, 16)
    assert small["conv1_t_stride"] == 1 and small["no_max_pool"] and small["block_inplanes"] == [16, 32, 64, 128]
    large = task.plan_network(2, [128, 128], 3, 5, 16)
    assert large["conv1_t_stride"] == 2 and not large["no_max_pool"] and large["n_input_channels"] == 3
    assert task.plan_network(3, [28, 28, 28], 1, 2)["layers"] == [1, 1, 1, 1]
    model = task.build_network(small)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 2)


def test_balanced_loss_weights_inverse_frequency() -> None:
    labels = np.array([0] * 30 + [1] * 90)
    assert task.is_imbalanced("binary", labels) and not task.is_imbalanced("binary", np.array([0, 1] * 10))
    loss = task.loss_fn("binary", labels, balanced=True)
    assert isinstance(loss, torch.nn.CrossEntropyLoss) and loss.weight is not None
    assert loss.weight.tolist() == pytest.approx([120 / 60, 120 / 180])
    assert task.loss_fn("binary", labels, balanced=False).weight is None
