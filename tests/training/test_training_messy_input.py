"""Training, its settings, warm starts and runtime.load on messy input: every case is one line naming the setting,
flag, bundle or file, and no NaN model, half bundle or wrong model's prediction comes out of it."""

from __future__ import annotations

import errno
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medsight import config, runtime
from medsight.cli import main
from medsight.errors import MedsightError
from medsight.tasks.contract import TrainOptions
from medsight.training.engine import Engine, Validate


def _train_args(bundle: Path, out: Path, *extra: str) -> list[str]:
    csv = bundle.parent / "manifest.csv"
    return [
        "train",
        "--task",
        "classification",
        str(csv),
        "--out",
        str(out),
        "--tta",
        "off",
        "--ensemble",
        "off",
        *extra,
    ]


@pytest.mark.parametrize("value", ["0", "-2", "abc", "1000000"])
def test_a_bad_thread_count_names_the_setting(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSIGHT_THREADS", value)
    with pytest.raises(MedsightError, match="MEDSIGHT_THREADS must be"):
        config.num_threads()


def test_a_bad_thread_count_stops_train_in_one_line(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MEDSIGHT_THREADS", "0")  # torch.set_num_threads(0) raised a RuntimeError deep in train
    assert main(_train_args(tiny_bundle, tmp_path / "b", "--epochs", "1")) == 2
    assert "MEDSIGHT_THREADS must be from 1 to" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_a_data_root_that_is_not_a_folder_is_named(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MEDSIGHT_DATA", str(tmp_path / "nowhere"))
    assert main(_train_args(tiny_bundle, tmp_path / "b", "--epochs", "0")) == 2
    assert f"MEDSIGHT_DATA={tmp_path / 'nowhere'} is not a folder" in caplog.text


@pytest.mark.parametrize("given", [{"time_budget_s": math.inf}, {"lr": math.inf}, {"lr": math.nan}])
def test_infinite_budget_or_rate_is_refused_by_flag(given: dict[str, float]) -> None:
    # --time-budget inf crashed planning (int(nan)); --lr inf trained NaN weights
    with pytest.raises(MedsightError, match="must be a positive finite number"):
        TrainOptions(**given)  # type: ignore[arg-type]


def _engine(step_loss: list[float], epochs: int = 2) -> tuple[Engine, nn.Module]:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    losses = iter(step_loss * epochs)

    def step(batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss = model(batch).mean() * 0 + next(losses)  # a NaN here makes every gradient NaN
        return loss, {}

    batches = [torch.ones(2, 3)] * len(step_loss)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    return Engine(model, opt, step, lambda epoch: batches, epochs, len(batches)), model


def test_every_loss_nan_stops_with_a_message_instead_of_nan_weights() -> None:
    engine, model = _engine([math.nan, math.nan])
    with pytest.raises(MedsightError, match="every training loss of epoch 1 was NaN or infinite"):
        engine.run()
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_a_few_nan_losses_are_skipped_and_said() -> None:
    engine, model = _engine([1.0, math.nan, 2.0])
    state = engine.run()
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert state.epoch == 2 and math.isfinite(state.history[-1]["train_loss"])
    assert any("1 of 3 training steps had a NaN or infinite loss" in w for w in state.warnings)


def test_validation_of_overflowing_outputs_is_a_divergence_message() -> None:
    engine, _ = _engine([1.0], epochs=1)

    def score() -> tuple[float, dict[str, float]]:
        raise ValueError("Input contains NaN.")  # what scikit-learn says about NaN validation logits

    engine.handlers.append(Validate(score))
    with pytest.raises(MedsightError, match="training diverged: the validation outputs are NaN"):
        engine.run()


def test_a_diverging_rate_writes_no_bundle(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b"
    shutil.copytree(tiny_bundle, out)  # an earlier good bundle at --out stays
    assert main(_train_args(tiny_bundle, out, "--epochs", "2", "--lr", "1e9")) == 2
    assert "training diverged" in capsys.readouterr().err
    assert (out / "model.pt").read_bytes() == (tiny_bundle / "model.pt").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.parametrize("damage", ["garbage", "nan"])
def test_init_from_unreadable_or_nan_weights_is_refused(
    damage: str, tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parent = tmp_path / "parent"
    shutil.copytree(tiny_bundle, parent)
    if damage == "garbage":
        (parent / "model.pt").write_text("hello")  # torch.load raised a bare KeyError
        words = "cannot read its weights model.pt"
    else:
        state = torch.load(parent / "model.pt", weights_only=True)
        first = next(k for k, v in state.items() if v.is_floating_point())
        state[first] = torch.full_like(state[first], float("nan"))
        torch.save(state, parent / "model.pt")
        words = "its weights hold NaN or infinite values"
    assert main([*_train_args(tiny_bundle, tmp_path / "b", "--epochs", "1"), "--init", str(parent)]) == 2
    assert f"{parent}: cannot fine-tune from this bundle: {words}" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def other_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second model of the same input and labels (another seed): its ONNX file fits the tiny bundle's shapes."""
    out = tmp_path_factory.mktemp("other") / "bundle"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDSIGHT_THREADS", "1")
        assert main(_train_args(tiny_bundle, out, "--epochs", "1", "--seed", "1")) == 0
    return out


def test_another_models_onnx_file_is_refused_not_run(tiny_bundle: Path, other_bundle: Path, tmp_path: Path) -> None:
    swapped = tmp_path / "swapped"
    shutil.copytree(tiny_bundle, swapped)
    for f in other_bundle.glob("model.onnx*"):
        shutil.copy2(f, swapped / f.name)
    with pytest.raises(MedsightError, match="is not the ONNX file this bundle was written with") as err:
        runtime.load(swapped)
    assert str(swapped / "model.onnx") in str(err.value)
    assert runtime.load(tiny_bundle).bundle.path == tiny_bundle  # its own files pass


def test_an_edited_input_shape_is_refused_at_load(tiny_bundle: Path, tmp_path: Path) -> None:
    edited = tmp_path / "edited"
    shutil.copytree(tiny_bundle, edited)
    meta = json.loads((edited / "bundle.json").read_text())
    meta["input"]["n_channels"] = 3  # predict failed inside ONNX Runtime with INVALID_ARGUMENT
    (edited / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(MedsightError, match=r"takes input \(N, 1, 24, 24\) but bundle.json describes \(N, 3, 24, 24\)"):
        runtime.load(edited)


def test_a_full_disk_while_writing_the_bundle_is_one_line_and_keeps_the_old_bundle(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b"
    shutil.copytree(tiny_bundle, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(*args: object, **kwargs: object) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1021952 vs 1021848")

    monkeypatch.setattr(torch.serialization, "_save", full)  # what torch.save raises when the disk fills up
    assert main(_train_args(tiny_bundle, out, "--epochs", "1")) == 2
    err = capsys.readouterr().err
    assert "could not write a model file" in err and "is the disk full?" in err and "Traceback" not in err
    monkeypatch.undo()

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "bundle.json"))

    monkeypatch.setenv("MEDSIGHT_THREADS", "1")
    monkeypatch.setattr("medsight.training.bundle.write_json", no_space)
    assert main(_train_args(tiny_bundle, out, "--epochs", "1")) == 2
    assert "No space left on device; nothing half-written was left" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_an_unusable_cache_folder_names_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medsight.cli import _storage_problem

    afile = tmp_path / "afile"
    afile.write_text("")
    monkeypatch.setenv("MEDSIGHT_CACHE", str(afile / "cache"))
    line = _storage_problem(NotADirectoryError(errno.ENOTDIR, "Not a directory", str(afile / "cache" / "x")))
    assert line is not None and line.startswith(f"MEDSIGHT_CACHE={afile / 'cache'} cannot be used")
    assert _storage_problem(RuntimeError("a bug")) is None  # anything else keeps its traceback


def test_onnx_checksums_are_recorded(tiny_bundle: Path) -> None:
    onnx = json.loads((tiny_bundle / "bundle.json").read_text())["onnx"]
    assert set(onnx["sha256"]) == set(onnx["files"]) and all(len(v) == 64 for v in onnx["sha256"].values())
    assert np.all([len(v) == 64 for v in onnx["sha256"].values()])
