"""Segmentation bundles of one fold combined into one (``medsight ensemble``): its probabilities are the mean of the
members', it is an ordinary bundle (ONNX, post-processing chosen on the shared validation split, predict), and members
that cannot be averaged are refused by name. Trained for seconds on BUSI: behaviour, not accuracy."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medsight.errors import MedsightError
from medsight.tasks.segmentation import SegmentationPlan
from medsight.tasks.segmentation.data import open_dataset, read_cases
from medsight.tasks.segmentation.ensemble import combine
from medsight.tasks.segmentation.inference import onnx_predictor, predict_case
from medsight.tasks.segmentation.network import PROBABILITY_AVERAGE
from medsight.tasks.segmentation.predict import SegmentationModel
from medsight.training.bundle import ONNX, load_bundle, write_bundle_json


@pytest.fixture(scope="module")
def ensemble(
    fast_bundle: Path, fast_bundle_seed1: Path, busi_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("busi_ensemble") / "bundle"
    combine([fast_bundle, fast_bundle_seed1], str(busi_root), out)
    return out


def test_ensemble_is_a_complete_bundle_with_its_members_and_its_own_postprocessing(
    ensemble: Path, fast_bundle: Path, fast_bundle_seed1: Path
) -> None:
    b = load_bundle(ensemble)
    assert b.task == "segmentation" and b.meta["network"]["name"] == PROBABILITY_AVERAGE
    assert len(b.meta["network"]["kwargs"]["members"]) == 2
    assert b.meta["onnx"]["max_abs_diff_vs_torch"] < 1e-3 and b.onnx_path.is_file()
    b.network("cpu")  # rebuilt from the recorded spec and weights
    members = b.meta["ensemble"]["members"]
    assert [m["seed"] for m in members] == [0, 1] and all(len(m["bundle_sha256"]) == 64 for m in members)
    assert b.meta["data"]["val_ids"] == load_bundle(fast_bundle).meta["data"]["val_ids"]
    post = b.meta["postprocessing"]
    assert set(post["unsure_trials"]) == {"1"} and 0.0 <= b.meta["metrics"]["val"]["dice"] <= 1.0
    assert b.meta["plan"]["test_time_flips"] is False  # as the first member, unless asked otherwise
    expected = sum(load_bundle(p).meta["training"]["seconds"] for p in (fast_bundle, fast_bundle_seed1))
    assert b.meta["training"]["seconds"] == pytest.approx(expected, abs=0.2)


def test_ensemble_probabilities_are_the_mean_of_its_members(
    ensemble: Path, fast_bundle: Path, fast_bundle_seed1: Path, busi_root: Path
) -> None:
    b = load_bundle(ensemble)
    plan = b.plan(SegmentationPlan)
    ds = open_dataset(str(busi_root))
    case_id = b.meta["data"]["val_ids"][0]
    case = read_cases(ds, [case_id])[case_id]
    probs = [predict_case(case, plan, onnx_predictor(Path(p) / ONNX, 1))[1] for p in (fast_bundle, fast_bundle_seed1)]
    _, combined = predict_case(case, plan, onnx_predictor(ensemble / ONNX, 1))
    np.testing.assert_allclose(combined, (probs[0] + probs[1]) / 2, atol=1e-4)
    assert not np.allclose(probs[0], probs[1], atol=1e-3)  # the members do differ, so the mean is a real test
    mask, _ = SegmentationModel(b).segment(case.image, case.spacing)  # predict uses it like any bundle
    assert mask.shape == case.image.shape[1:]


def test_members_that_cannot_be_averaged_are_refused_by_name(
    fast_bundle: Path, fast_bundle_seed1: Path, busi_root: Path, tmp_path: Path
) -> None:
    with pytest.raises(MedsightError, match="at least 2"):
        combine([fast_bundle], str(busi_root), tmp_path / "one")
    copy = tmp_path / "copy"  # one model twice, once under another name: not two members
    shutil.copytree(fast_bundle, copy)
    for twice in ([fast_bundle, fast_bundle], [fast_bundle, copy]):
        with pytest.raises(MedsightError, match="identical weights") as err:
            combine(twice, str(busi_root), tmp_path / "twice")
        assert str(twice[1]) in str(err.value) and not (tmp_path / "twice").exists()
    other_fold = tmp_path / "other_fold"
    shutil.copytree(fast_bundle_seed1, other_fold)
    meta = load_bundle(other_fold).meta
    meta["data"]["val_ids"] = meta["data"]["val_ids"][1:]
    write_bundle_json(other_fold, meta)
    with pytest.raises(MedsightError, match="validated on other cases") as err:
        combine([fast_bundle, other_fold], str(busi_root), tmp_path / "out")
    assert str(other_fold) in str(err.value)
    other_image = tmp_path / "other_image"
    shutil.copytree(fast_bundle_seed1, other_image)
    meta = load_bundle(other_image).meta
    meta["plan"]["image_pixels"] = 4096
    write_bundle_json(other_image, meta)
    with pytest.raises(MedsightError, match="image_pixels"):
        combine([fast_bundle, other_image], str(busi_root), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half written


def test_ensemble_command_writes_the_bundle_and_wrong_data_fails_by_name(
    fast_bundle: Path, fast_bundle_seed1: Path, busi_root: Path, shared_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ens"
    cmd = [sys.executable, "-m", "medsight", "ensemble", str(fast_bundle), str(fast_bundle_seed1)]
    run = subprocess.run(
        [*cmd, "--data", str(busi_root), "--out", str(out), "--mirror"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "validation Dice" in run.stdout and load_bundle(out).meta["plan"]["test_time_flips"] is True
    wrong = shared_data / "drive"
    run = subprocess.run([*cmd, "--data", str(wrong), "--out", str(tmp_path / "no")], capture_output=True, text=True)
    assert run.returncode != 0 and "validation cases" in run.stderr and not (tmp_path / "no").exists()


def test_ensemble_command_mirrors_as_the_first_member_unless_told(tmp_path: Path) -> None:
    from medsight.cli import build_parser

    base = ["ensemble", "a", "b", "--data", "d", "--out", str(tmp_path / "e")]
    assert build_parser().parse_args(base).flips is None
    assert build_parser().parse_args([*base, "--mirror"]).flips is True
    assert build_parser().parse_args([*base, "--no-mirror"]).flips is False
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--mirror", "--no-mirror"])
