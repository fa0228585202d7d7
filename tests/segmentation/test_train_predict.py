"""A short training on real Hippocampus data lowers the loss; predict gives NIfTI back in the input's geometry and a
DICOM SEG over a real MR series that dciodvfy accepts and that reads back onto the same slices; the CLI trains and
evaluates a DRIVE-like folder end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsight.io.dicom import read_series
from medsight.pipelines import segmentation as seg
from medsight.serving.dicom_objects import read_seg
from medsight.training.bundle import load_bundle

TINY = {
    "target_spacing": [2.0, 2.0, 2.0],  # coarse, so that predicting on a whole brain MR series stays quick
    "patch_size": [32, 32, 32],
    "batch_size": 2,
    "iterations_per_epoch": 4,
    "warmup_iterations": 1,
    "validate_every": 0,
    "test_time_flips": False,
    "network": {"filters": [8, 16, 32, 64]},
}


@pytest.fixture(scope="module")
def bundle(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seg") / "hippocampus_bundle"
    seg.train(str(shared_data / "msd_hippocampus"), out, epochs=5, lr=1e-2, plan_overrides=TINY, max_cases=8)
    return out


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
    assert "keep_largest_component" in b.meta["postprocessing"]


def test_nifti_round_trip_keeps_affine_and_shape(bundle: Path, shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "msd_hippocampus" / "imagesTr" / "hippocampus_003.nii.gz"
    results = seg.predict(bundle, [source], tmp_path / "pred")
    assert results[0]["input"] == source.name and "label_1" in results[0]["summary"]
    written = nib.load(str(tmp_path / "pred" / results[0]["outputs"]["mask"]))
    original = nib.load(str(source))
    assert written.shape == original.shape
    np.testing.assert_allclose(written.affine, original.affine)
    mask = np.asarray(written.dataobj)
    assert set(np.unique(mask)) <= {0, 1, 2}
    assert (tmp_path / "pred" / results[0]["outputs"]["overlay"]).is_file()
    assert json.loads((tmp_path / "pred" / "predictions.json").read_text())["predictions"][0]["input"] == source.name


def test_dicom_seg_from_a_real_series_is_valid_and_reads_back(bundle: Path, shared_data: Path, tmp_path: Path) -> None:
    series = shared_data / "udacity_brain_mr_dicom" / "Study3" / "11-T1post-18670"
    results = seg.predict(bundle, [series], tmp_path / "pred")
    out = tmp_path / "pred"
    seg_path = out / results[0]["outputs"]["dicom_seg"]
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy not found: apt-get install dicom3tools")
    run = subprocess.run([tool, str(seg_path)], capture_output=True, text=True, timeout=120)
    errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
    assert errors == []
    volume = read_series(series)
    back = read_seg(seg_path, reference=volume.geometry)
    assert back.mask.shape == volume.array.shape  # one SEG frame per source slice, on the same slices
    nifti = np.asarray(nib.load(str(out / results[0]["outputs"]["mask"])).dataobj)
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
                "test_time_flips": False,
                "validate_every": 0,
                "sliding_window": {"overlap": 0.25, "mode": "gaussian"},
                "network": {"filters": [8, 16, 32, 64, 64]},
            }
        )
    )
    env = {"MEDSIGHT_SEG_PLAN": str(plan), "MEDSIGHT_THREADS": "1", "PATH": "/usr/bin:/bin"}
    medsight = [sys.executable, "-m", "medsight"]
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
