"""The classification plan: network size from the data, class balance, loss weights, epochs and time budget from
the measured speed, and the typed plan's JSON round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsight.data.dataset import ClassificationData, SplitData
from medsight.errors import MedsightError
from medsight.tasks.classification.network import build_network, is_imbalanced, loss_fn, plan_network
from medsight.tasks.classification.plan import (
    DEFAULT_RUN_S,
    MAX_SEED_MEMBERS,
    ClassificationOptions,
    ClassificationPlan,
    ClassificationPlanner,
    NetworkPlan,
)


def _data(n: int = 40, size: tuple[int, ...] = (28, 28), ratio: int = 3) -> ClassificationData:
    rng = np.random.default_rng(0)
    labels = (np.arange(n) % (ratio + 1) == 0).astype(np.int64)  # 1 in ratio+1 is positive
    images = rng.random((n, 1, *size)).astype(np.float32)
    splits = {"train": SplitData(images, labels), "val": SplitData(images[:8], labels[:8])}
    return ClassificationData("toy", "binary", ["neg", "pos"], len(size), splits)


def _planner(**options: object) -> ClassificationPlanner:
    return ClassificationPlanner(_data(), ClassificationOptions.from_mapping(options, "classification"), "cpu")


def test_width_and_stem_follow_the_data() -> None:
    small = plan_network(2, [28, 28], 1, 2, 16)
    assert small["conv1_t_stride"] == 1 and small["no_max_pool"] and small["block_inplanes"] == [16, 32, 64, 128]
    large = plan_network(2, [128, 128], 3, 5, 16)
    assert large["conv1_t_stride"] == 2 and not large["no_max_pool"] and large["n_input_channels"] == 3
    assert plan_network(3, [28, 28, 28], 1, 2)["layers"] == [1, 1, 1, 1]
    model = build_network(small)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 2)
    # The planner's typed network plan is the same network.
    planned = _planner().determine_network(16)
    assert isinstance(planned, NetworkPlan) and planned.kwargs() == small
    assert ClassificationPlanner(_data(size=(16, 16, 16)), ClassificationOptions(), "cpu").determine_network(
        16
    ).layers == [1, 1, 1, 1]


def test_balanced_loss_weights_inverse_frequency() -> None:
    labels = np.array([0] * 30 + [1] * 90)
    assert is_imbalanced("binary", labels) and not is_imbalanced("binary", np.array([0, 1] * 10))
    loss = loss_fn("binary", labels, balanced=True)
    assert isinstance(loss, torch.nn.CrossEntropyLoss) and loss.weight is not None
    assert loss.weight.tolist() == pytest.approx([120 / 60, 120 / 180])
    assert loss_fn("binary", labels, balanced=False).weight is None


def test_class_balance_option() -> None:
    assert _planner().determine_class_balance()[0]  # 1:3 is imbalanced: auto balances
    assert _planner(class_balance="auto").determine_class_balance()[0]
    assert not _planner(class_balance="off").determine_class_balance()[0]
    balanced = ClassificationPlanner(_data(ratio=1), ClassificationOptions(), "cpu")
    assert not balanced.determine_class_balance()[0]
    assert ClassificationPlanner(
        _data(ratio=1), ClassificationOptions(class_balance="on"), "cpu"
    ).determine_class_balance()[0]
    with pytest.raises(MedsightError, match="--class-balance"):
        ClassificationOptions(class_balance="sometimes")  # type: ignore[arg-type]


def test_options_reject_what_classification_does_not_take() -> None:
    with pytest.raises(MedsightError, match="--image-size") as caught:
        ClassificationOptions.from_mapping({"image_size": 64, "epochs": 2}, "classification")
    assert "--class-balance" in str(caught.value)  # the message lists what it does take
    opts = ClassificationOptions.from_mapping({"epochs": 2, "target_sensitivity": 0.9}, "classification")
    assert opts.given() == {"seed": 0, "epochs": 2, "target_sensitivity": 0.9}
    with pytest.raises(MedsightError, match="--target-sensitivity"):
        ClassificationOptions(target_sensitivity=1.5)


def test_previous_defaults_are_kept_when_they_fit() -> None:
    planner = _planner()
    assert (planner.determine_batch_size(), planner.determine_lr(), planner.determine_width()) == (40, 2e-3, 16)
    big = ClassificationPlanner(_data(n=300), ClassificationOptions(), "cpu")
    assert big.determine_batch_size() == 128  # capped by the training set only when it is smaller
    epochs, expected, budget, why, warnings = planner.determine_epochs_and_budget(seconds_per_epoch=5.0, elapsed=10.0)
    assert epochs == expected == 40 and budget is not None and budget <= DEFAULT_RUN_S and "default 40 epochs" in why
    assert warnings == []


def test_slow_data_get_the_epochs_that_fit_and_a_warning() -> None:
    # A MedMNIST 3D set here: about 60 s per epoch, so 40 epochs would take 40 minutes.
    # The engine may run up to 40 (it re-plans from its own epoch times); about 9 are expected to fit.
    epochs, expected, budget, _, warnings = _planner().determine_epochs_and_budget(seconds_per_epoch=60.0, elapsed=30.0)
    assert epochs == 40 and budget is not None and expected * 60 <= budget <= DEFAULT_RUN_S and 5 <= expected < 40
    assert len(warnings) == 1 and "under-trained" in warnings[0] and "--time-budget" in warnings[0]
    # A budget given by the user is used for planning instead of the default run.
    assert _planner(time_budget_s=1200.0).determine_epochs_and_budget(60.0, 30.0)[:3] == (40, 20, 1200.0)
    # Epochs given by the user are kept; the run has no budget unless one is given too.
    assert _planner(epochs=3).determine_epochs_and_budget(60.0, 30.0)[:3] == (3, 3, None)
    *planned, _, warnings = _planner(epochs=40, time_budget_s=540.0).determine_epochs_and_budget(60.0, 0.0)
    assert planned == [40, 9, 540.0] and "expect about 9 epochs" in warnings[0]


def test_plan_measures_speed_and_round_trips() -> None:
    plan = _planner(epochs=2, batch_size=16).plan()
    assert (
        plan.seconds_per_iteration > 0 and plan.iterations_per_epoch == 3 and plan.epochs == plan.expected_epochs == 2
    )
    recipes = len(plan.balance_choices) * len(plan.losses)  # 1:3 is imbalanced: plain and balanced both train
    assert recipes == 2 and plan.expected_seconds == pytest.approx(
        recipes * 2 * plan.seconds_per_epoch, rel=0.01, abs=0.2
    )
    assert "expected training time" in plan.summary() and "iterations/s" in plan.summary()
    again = ClassificationPlan.from_json(plan.to_json())
    assert again == plan and isinstance(again.network, NetworkPlan)
    broken = plan.to_json()
    del broken["epochs"]
    broken["colour"] = "blue"
    with pytest.raises(MedsightError, match=r"unknown key\(s\) \['colour'\]; missing \['epochs'\]"):
        ClassificationPlan.from_json(broken)


def test_seed_members_fill_the_time_limit_without_cutting_an_epoch() -> None:
    # (epochs, expected epochs, budget per recipe, seconds per epoch, recipes)
    seeds = _planner().determine_seed_members
    assert seeds(40, 40, 270.0, 2.0, 2)[0] == 2  # 270 s hold 2 x 40 epochs of 2 s with the margin, not 3
    assert seeds(40, 40, 600.0, 1.0, 2)[0] == MAX_SEED_MEMBERS  # never more than the most
    assert seeds(40, 19, 270.0, 13.5, 2)[0] == 1  # time-limited already: one seed, nothing cut
    assert seeds(40, 40, 110.0, 2.0, 1)[0] == 1  # 2 seeds would need 2 x 80 s x margin
    assert seeds(2, 2, None, 1.0, 2) == (1, "one seed per recipe")  # --epochs alone: exactly the run asked for
    assert _planner(ensemble="off").determine_seed_members(40, 40, 600.0, 1.0, 2)[0] == 1  # nothing would use them
    assert _planner(init="parent").determine_seed_members(40, 40, 600.0, 1.0, 2)[0] == 1  # fine-tuning keeps one
    asked = _planner(seed_members=3).determine_seed_members(2, 2, None, 1.0, 2)
    assert asked == (3, "3 seeds per recipe as asked")
    for bad in (0, MAX_SEED_MEMBERS + 1):
        with pytest.raises(MedsightError, match="--seed-members must be 1 to 3"):
            ClassificationOptions(seed_members=bad)
    with pytest.raises(MedsightError, match="--ensemble off builds none"):
        ClassificationOptions(seed_members=2, ensemble="off")
    with pytest.raises(MedsightError, match=r"fine-tuning \(--init\) keeps its parent's network"):
        ClassificationOptions(seed_members=2, init="parent")
    assert ClassificationOptions(seed_members=1, ensemble="off").seed_members == 1


def test_a_plan_with_seed_members_splits_the_budget_between_every_model() -> None:
    plan = _planner(epochs=2, time_budget_s=3600.0, batch_size=16).plan()
    assert plan.seed_members == MAX_SEED_MEMBERS and plan.balance_choices == [False, True]
    assert plan.time_budget_s == pytest.approx(3600.0 / (2 * MAX_SEED_MEMBERS), abs=0.1)
    assert plan.expected_seconds == pytest.approx(2 * MAX_SEED_MEMBERS * 2 * plan.seconds_per_epoch, rel=0.01, abs=0.2)
    assert "each from 3 seeds for the ensemble" in plan.summary() and "per model" in plan.summary()
    assert ClassificationPlan.from_json(plan.to_json()) == plan
    old = plan.to_json()
    del old["seed_members"]  # bundles from before seed members read as one seed per recipe
    assert ClassificationPlan.from_json(old).seed_members == 1


def test_every_data_parallel_rank_plans_rank_0s_seed_members(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranks measure their own speed; were their seed counts to differ, they would train different models and hang
    in DDP's collectives. The planner takes rank 0's count."""
    from medsight.distributed import ddp

    sent: list[list[object]] = []

    def rank_0_says(values: list[object]) -> list[object]:
        sent.append(values)
        return [2, "2 seeds per recipe fit the time limit (rank 0)"] if len(values) == 2 else values

    monkeypatch.setattr(ddp, "broadcast", rank_0_says)
    plan = _planner(epochs=2, time_budget_s=3600.0, batch_size=16).plan()  # this rank alone would plan 3
    assert [v[0] for v in sent] == [MAX_SEED_MEMBERS] and plan.seed_members == 2
    assert "(rank 0)" in plan.timing and plan.time_budget_s == pytest.approx(3600.0 / 4, abs=0.1)
