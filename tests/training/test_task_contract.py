"""The task contract: typed options that reject what a task does not take, typed plans that round-trip."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from medsight import tasks
from medsight.errors import MedsightError
from medsight.tasks.contract import Plan, TrainOptions


@dataclasses.dataclass(kw_only=True)
class _Options(TrainOptions):
    fold: int | None = None


@dataclasses.dataclass
class _Network(Plan):
    channels: list[int]
    dims: int = 2


@dataclasses.dataclass
class _Plan(Plan):
    network: _Network
    lr: float
    schedule: str = "cosine"
    overrides: dict[str, int] = dataclasses.field(default_factory=dict)


def test_unknown_option_is_named() -> None:
    assert _Options.from_mapping({"seed": 3, "fold": 1}, "toy") == _Options(seed=3, fold=1)
    with pytest.raises(MedsightError) as info:
        _Options.from_mapping({"seed": 3, "class_balance": "on", "plan": "x"}, "toy")
    message = str(info.value)
    assert "the toy task does not take --class-balance, --plan" in message
    assert "--fold" in message and "--time-budget-s" not in message and message.endswith("--time-budget)")


def test_given_lists_only_what_was_set() -> None:
    assert _Options(seed=1, lr=0.1).given() == {"seed": 1, "lr": 0.1}


def test_plan_round_trips_through_json_with_nested_plans() -> None:
    plan = _Plan(_Network([16, 32]), 1e-3, overrides={"a": 1})
    text = json.dumps(plan.to_json())
    back = _Plan.from_json(json.loads(text))
    assert back == plan and isinstance(back.network, _Network)


def test_plan_with_unknown_or_missing_keys_is_an_error() -> None:
    good = _Plan(_Network([8]), 0.1).to_json()
    with pytest.raises(MedsightError, match=r"unknown key\(s\) \['momentum'\]"):
        _Plan.from_json({**good, "momentum": 0.9}, "bundle.json")
    with pytest.raises(MedsightError, match=r"missing \['lr'\]"):
        _Plan.from_json({k: v for k, v in good.items() if k != "lr"})
    with pytest.raises(MedsightError, match="_Network: missing"):
        _Plan.from_json({**good, "network": {"dims": 3}})


def test_unknown_task_is_an_error() -> None:
    with pytest.raises(MedsightError, match="unknown task 'registration'"):
        tasks.get("registration")


@pytest.mark.parametrize("name", tasks.TASKS)
def test_every_task_implements_the_protocol(name: str) -> None:
    task = tasks.get(name)
    assert isinstance(task, tasks.Task) and task.name == name
    assert issubclass(task.Options, TrainOptions)
    assert dataclasses.is_dataclass(task.Options)
    with pytest.raises(MedsightError, match="does not take --no-such-option"):
        task.Options.from_mapping({"no_such_option": 1}, name)


@pytest.mark.parametrize("name", tasks.TASKS)
def test_common_options_convert_and_foreign_ones_are_refused(name: str) -> None:
    task = tasks.get(name)
    assert isinstance(task, tasks.PackageTask)
    converted = task.options(TrainOptions(seed=4, epochs=2))
    assert isinstance(converted, task.Options) and converted.seed == 4 and converted.epochs == 2

    @dataclasses.dataclass(kw_only=True)
    class Foreign(TrainOptions):
        not_an_option_anywhere: int | None = 1

    with pytest.raises(MedsightError, match="does not take --not-an-option-anywhere"):
        task.options(Foreign())


def test_the_options_an_error_offers_are_flags_medsight_train_has() -> None:
    """A user told "it takes --x" must be able to type --x (``time_budget_s`` is ``--time-budget``)."""
    from medsight.cli import build_parser
    from medsight.commands.train import OPTION_FLAGS

    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    flags = {s for action in commands["train"]._actions for s in action.option_strings}
    for name in tasks.TASKS:
        with pytest.raises(MedsightError) as info:
            tasks.get(name).Options.from_mapping({"no_such_option": 1}, name)
        offered = str(info.value).split("(it takes ")[1].rstrip(")").split(", ")
        assert offered and set(offered) <= flags, (name, sorted(set(offered) - flags))
        assert all(o.lstrip("-").replace("-", "_") in OPTION_FLAGS or o == "--time-budget" for o in offered)


@pytest.mark.parametrize("name", tasks.TASKS)
@pytest.mark.parametrize(
    ("option", "value", "flag"),
    [
        ("epochs", 0, "--epochs"),
        ("batch_size", 0, "--batch-size"),
        ("time_budget_s", -5.0, "--time-budget"),
        ("lr", -1.0, "--lr"),
        ("lr", 0.0, "--lr"),
    ],
)
def test_every_task_refuses_impossible_common_options_by_flag(name: str, option: str, value: float, flag: str) -> None:
    """Segmentation and detection used to take --epochs 0 (a bundle of an untrained model), --batch-size 0 (a
    RuntimeError from torch) and a negative --lr (a ValueError from the optimiser) without a word."""
    with pytest.raises(MedsightError, match=f"^{flag} must be"):
        tasks.get(name).Options.from_mapping({option: value}, name)


def test_detection_refuses_an_input_smaller_than_its_network_takes() -> None:
    for size in (0, 8, 31):
        with pytest.raises(MedsightError, match=r"^--image-size must be at least 32"):
            tasks.get("detection").Options.from_mapping({"image_size": size}, "detection")
    assert tasks.get("detection").Options.from_mapping({"image_size": 64}, "detection").image_size == 64


def test_train_with_an_impossible_option_exits_before_reading_data_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medsight.cli import main

    out = tmp_path / "bundle"
    for task, flags in (("segmentation", ["--epochs", "0"]), ("detection", ["--lr", "-1"])):
        assert main(["train", "--task", task, str(tmp_path / "no-such-data"), "--out", str(out), *flags]) == 2
        err = capsys.readouterr().err
        assert f"{flags[0]} must be" in err and "no-such-data" not in err and "Traceback" not in err
        assert not out.exists()
