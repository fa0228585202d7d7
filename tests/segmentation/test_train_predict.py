"""A short training on real Hippocampus data lowers the loss and repeats with the same seed; the typed plan round-trips
through bundle.json and a hand-edited one fails to load; the warm model gives NIfTI back in the input's geometry, the
same results as ``medsight predict``, and a DICOM SEG over a real MR series that dciodvfy accepts and that reads back
onto the same slices; the CLI rejects an option segmentation does not take, and trains and evaluates a DRIVE-like
folder end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsight import runtime
from medsight.errors import MedsightError
from medsight.io.dicom import read_series
from medsight.serving.dicom_objects import read_seg
from medsight.tasks import segmentation
from medsight.tasks.segmentation import SegmentationOptions, SegmentationPlan
from medsight.tasks.segmentation.predict import SegmentationModel, SegmentationResult
from medsight.training.bundle import load_bundle

TINY = {
    "target_spacing": [2.0, 2.0, 2.0],  # coarse, so that predicting on a whole brain MR series stays quick
    "patch_size": [32, 32, 32],
    "batch_size": 2,
    "iterations_per_epoch": 4,
    "optimizer": {"warmup_iterations": 1},
    "validate_every": 0,
    "test_time_flips": False,
    "network": {"filters": [8, 16, 32, 64]},
}
MEDSIGHT = [sys.executable, "-m", "medsight"]


def _train_tiny(data: Path, out: Path, tmp: Path, epochs: int) -> Path:
    plan = tmp / "tiny_plan.json"
    plan.write_text(json.dumps(TINY))
    options = SegmentationOptions(epochs=epochs, lr=1e-2, plan=plan, max_cases=8)
    segmentation.TASK.train(str(data), out, options)
    return out


@pytest.fixture(scope="module")
def bundle(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("seg")
    return _train_tiny(shared_data / "msd_hippocampus", tmp / "hippocampus_bundle", tmp, epochs=5)


def test_short_training_lowers_the_loss_and_writes_a_complete_bundle(bundle: Path) -> None:
    b = load_bundle(bundle)
    history = b.meta["training"]["history"]
    assert len(history) == 5
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert b.task == "segmentation" and b.meta["network"]["name"] == "monai.networks.nets.DynUNet"
    assert b.meta["onnx"]["max_abs_diff_vs_torch"] < 1e-3 and b.onnx_path.is_file()
    b.network("cpu")  # rebuilt from the recorded spec
    assert (bundle / "splits.json").is_file() and (bundle / "plan.txt").read_text().startswith("data:")
    assert not set(b.meta["data"]["train_ids"]) & set(b.meta["data"]["test_ids"])
    post = b.meta["postprocessing"]
    assert "keep_largest_component" in post
    assert isinstance(post["drop_unsure"], dict) and set(post["unsure_trials"]) == {"1", "2"}  # chosen on val
    assert b.meta["options"]["epochs"] == 5 and b.meta["options"]["max_cases"] == 8
    assert b.meta["training"]["warnings"] == [] and b.meta["training"]["stopped_by"] == "epochs"
    assert history[0]["lr"] > history[-1]["lr"]  # the poly schedule anneals over the planned run


def test_typed_plan_round_trips_through_bundle_json(bundle: Path) -> None:
    b = load_bundle(bundle)
    plan = b.plan(SegmentationPlan)
    assert isinstance(plan, SegmentationPlan)
    assert plan.to_json() == b.meta["plan"] == json.loads((bundle / "plan.json").read_text())
    assert plan.patch_size == [32, 32, 32] and plan.network.filters == [8, 16, 32, 64]
    assert plan.optimizer.lr == 1e-2 and plan.optimizer.warmup_iterations == 1 and plan.epochs == 5
    assert plan.time_budget_s is None  # --epochs alone: no time limit


def test_same_seed_gives_the_same_weights(shared_data: Path, tmp_path: Path) -> None:
    import torch

    a = _train_tiny(shared_data / "msd_hippocampus", tmp_path / "a", tmp_path, epochs=1)
    b = _train_tiny(shared_data / "msd_hippocampus", tmp_path / "b", tmp_path, epochs=1)
    wa = torch.load(a / "model.pt", weights_only=True)
    wb = torch.load(b / "model.pt", weights_only=True)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert load_bundle(b).meta["training"]["cache_hits"] == 8  # the second run skipped preprocessing


def test_hand_edited_bundle_json_fails_to_load_with_one_clear_line(bundle: Path, tmp_path: Path) -> None:
    edited = tmp_path / "edited"
    shutil.copytree(bundle, edited)
    meta = json.loads((edited / "bundle.json").read_text())
    meta["input"]["patch_size"] = "32x32x32"  # a wrong type for a required key
    (edited / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(MedsightError, match="input/patch_size") as err:
        runtime.load(edited)
    assert "\n" not in str(err.value)
    meta["input"]["patch_size"] = [32, 32, 32]
    meta["plan"]["patch_sise"] = meta["plan"].pop("patch_size")  # a plan key renamed by hand
    (edited / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(MedsightError, match="patch_sise"):
        runtime.load(edited)
    run = subprocess.run(
        [*MEDSIGHT, "predict", str(edited), str(bundle / "plan.json"), "--out", str(tmp_path / "p")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and "patch_sise" in run.stderr


def test_nifti_round_trip_keeps_affine_and_shape(bundle: Path, shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "msd_hippocampus" / "imagesTr" / "hippocampus_003.nii.gz"
    model = runtime.load(bundle)
    assert isinstance(model, SegmentationModel) and model.engine == "ONNX Runtime"
    results = model.predict([source])
    assert isinstance(results[0], SegmentationResult) and not results[0].files  # nothing written yet
    assert results[0].input == source.name and "label_1" in results[0].summary()
    runtime.write_predictions(model, results, tmp_path / "pred")
    written = nib.load(str(tmp_path / "pred" / results[0].files["mask"]))
    original = nib.load(str(source))
    assert written.shape == original.shape == results[0].mask.shape
    np.testing.assert_allclose(written.affine, original.affine)
    mask = np.asarray(written.dataobj)
    np.testing.assert_array_equal(mask, results[0].mask)
    assert set(np.unique(mask)) <= {0, 1, 2}
    assert (tmp_path / "pred" / results[0].files["overlay"]).is_file()
    assert json.loads((tmp_path / "pred" / "predictions.json").read_text())["predictions"][0]["input"] == source.name


def test_runtime_results_equal_what_the_cli_writes(bundle: Path, shared_data: Path, tmp_path: Path) -> None:
    images = shared_data / "msd_hippocampus" / "imagesTr"
    inputs = [images / "hippocampus_003.nii.gz", images / "hippocampus_004.nii.gz"]
    model = runtime.load(bundle)
    results = model.predict(inputs)
    runtime.write_predictions(model, results, tmp_path / "api")
    run = subprocess.run(
        [*MEDSIGHT, "predict", str(bundle), *map(str, inputs), "--out", str(tmp_path / "cli")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    written = json.loads((tmp_path / "cli" / "predictions.json").read_text())["predictions"]
    assert written == [r.to_json() for r in results]
    assert written[0]["amounts"]["unit"] == "mm³" and set(written[0]["amounts"]) == {"unit", "label_1", "label_2"}
    assert written[0]["files"] == {
        "mask": "000_hippocampus_003_seg.nii.gz",
        "overlay": "000_hippocampus_003_overlay.png",
    }
    assert f"{inputs[0].name}: {results[0].summary()}" in run.stdout
    for r in results:
        cli_mask = np.asarray(nib.load(str(tmp_path / "cli" / r.files["mask"])).dataobj)
        np.testing.assert_array_equal(cli_mask, r.mask)


def test_cli_rejects_an_option_segmentation_does_not_take(shared_data: Path, tmp_path: Path) -> None:
    for flag, value in (("--class-balance", "on"), ("--image-size", "64"), ("--target-sensitivity", "0.9")):
        run = subprocess.run(
            [*MEDSIGHT, "train", str(shared_data / "msd_hippocampus"), "--out", str(tmp_path / "b"), flag, value],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 2
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and flag in lines[0] and "segmentation" in lines[0]
    assert not (tmp_path / "b").exists()


def test_dicom_seg_from_a_real_series_is_valid_and_reads_back(bundle: Path, shared_data: Path, tmp_path: Path) -> None:
    series = shared_data / "udacity_brain_mr_dicom" / "Study3" / "11-T1post-18670"
    model = runtime.load(bundle)
    results = model.predict([series])
    out = tmp_path / "pred"
    runtime.write_predictions(model, results, out)
    seg_path = out / results[0].dicom["seg"]
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy not found: apt-get install dicom3tools")
    run = subprocess.run([tool, str(seg_path)], capture_output=True, text=True, timeout=120)
    errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
    assert errors == []
    volume = read_series(series)
    back = read_seg(seg_path, reference=volume.geometry)
    assert back.mask.shape == volume.array.shape  # one SEG frame per source slice, on the same slices
    nifti = np.asarray(nib.load(str(out / results[0].files["mask"])).dataobj)
    np.testing.assert_array_equal(back.mask, np.transpose(nifti, (2, 1, 0)))
    assert back.labels == ["label_1", "label_2"]


def test_cli_trains_and_evaluates_a_drive_like_folder(shared_data: Path, tmp_path: Path) -> None:
    """``medsight train FOLDER --out B`` then ``medsight evaluate B FOLDER --out E`` (a 4+2 image DRIVE subset, a
    tiny plan through $MEDSIGHT_SEG_PLAN, one epoch), checking metrics.json, the second observer and the card."""
    drive = shared_data / "drive"
    root = tmp_path / "drive_subset"
    for split, ids, folders in (
        ("training", ["21", "22", "23", "24", "25"], ["images", "1st_manual", "mask"]),
        ("test", ["01", "02"], ["images", "1st_manual", "2nd_manual", "mask"]),
    ):
        for folder in folders:
            (root / split / folder).mkdir(parents=True)
            for f in sorted((drive / split / folder).iterdir()):
                if f.name.split("_")[0] in ids:
                    (root / split / folder / f.name).symlink_to(f)
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "patch_size": [96, 96],
                "batch_size": 4,
                "iterations_per_epoch": 3,
                "optimizer": {"warmup_iterations": 1},
                "test_time_flips": False,
                "validate_every": 0,
                "sliding_window": {"overlap": 0.25, "mode": "gaussian"},
                "network": {"filters": [8, 16, 32, 64, 64]},
            }
        )
    )
    env = {"MEDSIGHT_SEG_PLAN": str(plan), "MEDSIGHT_THREADS": "1", "PATH": "/usr/bin:/bin"}
    env["MEDSIGHT_CACHE"] = str(tmp_path / "cache")
    medsight = MEDSIGHT
    bundle, evaluation = tmp_path / "B", tmp_path / "E"
    run = subprocess.run(
        [*medsight, "train", str(root), "--out", str(bundle), "--epochs", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "normalisation: colour images" in run.stderr and "patch: 96x96" in run.stderr  # the plan, in words
    assert "expected time" in run.stderr
    run = subprocess.run(
        [*medsight, "evaluate", str(bundle), str(root), "--out", str(evaluation), "--bootstrap", "20"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n"] == 2
    for key in ("dice", "hd95", "nsd", "pixel_auc", "pixel_f1", "pixel_sensitivity", "pixel_specificity"):
        assert key in metrics["metrics"] and set(metrics["metrics"][key]) == {"value", "ci95"}
    assert set(metrics["per_class"]["foreground"]) == {"dice", "hd95", "nsd"}
    assert [c["id"] for c in metrics["per_case"]] == ["01", "02"]
    assert metrics["second_observer"]["metrics"]["pixel_accuracy"]["value"] > 0.9
    assert (evaluation / "card.html").is_file() and (evaluation / "card.json").is_file()
    assert "2nd observer" in (evaluation / "card.html").read_text()
