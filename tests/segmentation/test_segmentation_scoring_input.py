"""Segmentation predict and evaluate on input they cannot use (audit): a volume with a NaN voxel gave an all-background
mask and exit 0; evaluate scored a data set whose classes are numbered the other way round under the model's names,
and crashed with a traceback on a 3D folder given to a 2D model or on masks holding a class the model lacks. Each
is now one line naming the file or folder and the problem, exit 2, before any inference."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medsight.cli import main
from medsight.tasks import segmentation
from medsight.tasks.segmentation import SegmentationOptions
from segmentation.test_segmentation_messy_data import TINY_3D

PLAN_3D = TINY_3D
PLAN_2D = PLAN_3D | {"patch_size": [32, 32], "network": {"filters": [8, 16, 32, 32, 32]}}
LABELS = {"0": "background", "1": "anterior", "2": "posterior"}


def _volumes(root: Path, labels: dict[str, str]) -> Path:
    """Eight 24^3 cases with two touching cubes (classes 1 and 2), MSD layout with ``labels`` in dataset.json."""
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(8):
        img = rng.normal(0, 1, (24, 24, 24)).astype(np.float32)
        lab = np.zeros((24, 24, 24), np.uint8)
        c = rng.integers(8, 16, 3)
        lab[c[0] - 3 : c[0] + 3, c[1] - 3 : c[1] + 3, c[2] - 3 : c[2] + 3] = 1
        lab[c[0] - 3 : c[0] + 3, c[1] - 3 : c[1] + 3, c[2] + 3 : c[2] + 5] = 2
        img[lab > 0] += 3
        nib.save(nib.Nifti1Image(img, np.eye(4)), root / "imagesTr" / f"case_{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), root / "labelsTr" / f"case_{i:03d}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "channel_names": {"0": "MRI"}}))
    return root


def _pictures(root: Path, classes: int) -> Path:
    """Twelve 48x48 grey PNGs with a bright square; masks 0/255 (binary) or 0/1/2 (``classes`` 3)."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(12):
        img = (rng.random((48, 48)) * 80).astype(np.uint8)
        lab = np.zeros((48, 48), np.uint8)
        r, c = rng.integers(10, 38, 2)
        lab[r - 5 : r + 5, c - 5 : c + 5] = 1
        img[lab > 0] += 120
        if classes == 3:
            lab[:, :24] *= 2
        Image.fromarray(img).save(root / "images" / f"{i:03d}_img.png")
        Image.fromarray(lab if classes == 3 else lab * 255).save(root / "labels" / f"{i:03d}_mask.png")
    return root


def _train(data: Path, out: Path, plan: dict[str, object]) -> Path:
    plan_file = out.parent / f"{out.name}_plan.json"
    plan_file.write_text(json.dumps(plan))
    segmentation.TASK.train(str(data), out, SegmentationOptions(epochs=1, plan=plan_file))
    return out


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seg_scoring")
    paths = {"d3": _volumes(root / "d3", LABELS), "d2": _pictures(root / "d2", 2)}
    paths["b3"] = _train(paths["d3"], root / "b3", PLAN_3D)
    paths["b2"] = _train(paths["d2"], root / "b2", PLAN_2D)
    return paths


def _refused(capsys: pytest.CaptureFixture[str], args: list[str], *needles: str) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_predict_refuses_a_volume_with_a_nan_voxel(
    made: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = np.asarray(nib.load(made["d3"] / "imagesTr" / "case_000.nii.gz").dataobj).copy()
    img[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(img, np.eye(4)), tmp_path / "nan_voxel.nii.gz")
    out = tmp_path / "pred"
    _refused(
        capsys,
        ["predict", str(made["b3"]), str(tmp_path / "nan_voxel.nii.gz"), "--out", str(out)],
        "nan_voxel.nii.gz",
        "1 of 13824 pixel values are NaN or infinite",
    )
    assert not out.exists()


def test_evaluate_refuses_classes_numbered_the_other_way_round(
    made: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    swapped = tmp_path / "swapped"
    shutil.copytree(made["d3"], swapped)
    (swapped / "dataset.json").write_text(
        json.dumps({"labels": {"0": "background", "1": "posterior", "2": "anterior"}, "channel_names": {"0": "MRI"}})
    )
    out = tmp_path / "ev"
    _refused(
        capsys,
        ["evaluate", str(made["b3"]), str(swapped), "--out", str(out)],
        "class 1 is 'posterior' in the data but 'anterior' in the model",
    )
    assert not out.exists()
    # The same names in another letter case are the same classes.
    same = tmp_path / "same"
    shutil.copytree(made["d3"], same)
    (same / "dataset.json").write_text(
        json.dumps({"labels": {"0": "background", "1": "Anterior", "2": "POSTERIOR"}, "channel_names": {"0": "MRI"}})
    )
    assert main(["evaluate", str(made["b3"]), str(same), "--out", str(tmp_path / "ev_same")]) == 0


def test_evaluate_refuses_data_of_another_dimensionality_or_with_classes_the_model_lacks(
    made: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _refused(
        capsys,
        ["evaluate", str(made["b2"]), str(made["d3"]), "--out", str(tmp_path / "ev3")],
        "a 3D data set, but the model segments 2D images",
    )
    three = _pictures(tmp_path / "three", 3)
    _refused(
        capsys,
        ["evaluate", str(made["b2"]), str(three), "--out", str(tmp_path / "ev_three")],
        "it cannot score classes it does not have",
    )
    assert not (tmp_path / "ev3").exists() and not (tmp_path / "ev_three").exists()
