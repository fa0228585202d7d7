"""Fundus preprocessing robust to resolution, field of view and colour (issue 9, §5).

A default DRIVE model on another camera's 999x960 images found mostly the edges of large vessels (the vessels were
~1.7x wider than any it had seen) and false positives along the rim of the field of view (no FOV mask, so nothing
suppressed them). These tests use DRIVE test images rescaled to 999x960 and 2x and recoloured: the FOV is found without
its mask, the FOV diameter is normalised to the training one, colour balance is standardised away, and the
segmentation is zero outside the FOV and comes back on the input's own grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medsight import runtime
from medsight.io.images import read_image
from medsight.tasks import segmentation
from medsight.tasks.segmentation import SegmentationOptions, fundus
from medsight.tasks.segmentation.data import fingerprint, load_case, open_dataset, preprocess
from medsight.tasks.segmentation.plan import make_plan
from medsight.tasks.segmentation.predict import SegmentationModel

TEST_IDS = ("01", "03", "08", "14")  # 01 and 08 have the lowest FOV IoU of the test set at the original size


def _resized(rgb: np.ndarray, shape: tuple[int, int], nearest: bool = False) -> np.ndarray:
    img = Image.fromarray(rgb)
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
    return np.asarray(img.resize((shape[1], shape[0]), method))


def _variants(drive: Path, cid: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(image (C,H,W), reference FOV) as-is, rescaled to 999x960 and to 2x, and recoloured (gamma + channel gains)."""
    image = read_image(drive / "test" / "images" / f"{cid}_test.tif")
    with Image.open(drive / "test" / "mask" / f"{cid}_test_mask.gif") as m:
        ref = np.asarray(m) > 0
    rgb = np.moveaxis(image, 0, -1).astype(np.uint8)
    out = {"as-is": (image, ref)}
    for name, shape in (("999x960", (960, 999)), ("2x", (2 * 584, 2 * 565))):
        scaled = np.moveaxis(_resized(rgb, shape), -1, 0).astype(np.float32)
        out[name] = (scaled, _resized(ref.astype(np.uint8) * 255, shape, nearest=True) > 127)
    gains = np.asarray([1.3, 0.7, 0.55], np.float32)[:, None, None]
    out["recoloured"] = ((255 * (image / 255) ** 1.4 * gains).clip(0, 255).astype(np.float32), ref)
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def drive_plan(shared_data: Path):  # type: ignore[no-untyped-def]
    ds = open_dataset(shared_data / "drive")
    cases = [load_case(ds, c) for c in ds.train[:6]]
    fp = fingerprint(ds, cases)
    return fp, make_plan(fp, "cpu")


@pytest.mark.parametrize("cid", TEST_IDS)
def test_the_fov_is_found_without_its_mask(shared_data: Path, cid: str) -> None:
    for name, (image, ref) in _variants(shared_data / "drive", cid).items():
        fov = fundus.find_fov(image)
        assert _iou(fov, ref) >= 0.95, name
        assert fundus.looks_like_fov(image, fov), name


def test_images_without_an_aperture_have_no_fov_plan(shared_data: Path) -> None:
    """A grey ultrasound-like image that fills its frame is not given FOV handling."""
    rng = np.random.default_rng(0)
    frame = (100 + 30 * rng.standard_normal((3, 200, 240))).astype(np.float32)
    assert fundus.fingerprint_fov([frame]) is None
    assert not fundus.looks_like_fov(frame, fundus.find_fov(frame))


def test_the_training_fov_is_planned(drive_plan) -> None:  # type: ignore[no-untyped-def]
    fp, plan = drive_plan
    assert fp["field_of_view"] is not None and fp["field_of_view"]["n_images"] == 6
    assert plan.field_of_view is not None
    assert 530 <= plan.field_of_view.diameter[0] <= 545 and 530 <= plan.field_of_view.diameter[1] <= 545
    assert plan.normalisation.scheme == "zscore_per_channel"


def test_rescaled_fov_diameter_is_normalised_and_colour_standardised(shared_data: Path, drive_plan) -> None:  # type: ignore[no-untyped-def]
    _, plan = drive_plan
    assert plan.field_of_view is not None
    target = np.asarray(plan.field_of_view.diameter)
    variants = _variants(shared_data / "drive", "03")
    prepared = {}
    for name, (image, _) in variants.items():
        x, _unused = preprocess(image, (1.0, 1.0), plan)
        inside = np.any(x != 0, axis=0)  # the FOV after normalisation (0 outside it)
        diameter = np.asarray(fundus.fov_diameter(inside))
        assert np.all(np.abs(diameter / target - 1) <= 0.03), (name, diameter, target)
        values = x[:, inside]  # z-scored inside the FOV (shrinking smooths, so the spread drops a little)
        assert np.allclose(values.mean(axis=1), 0, atol=0.05) and np.allclose(values.std(axis=1), 1, atol=0.1)
        prepared[name] = x
    # the recolouring (gamma 1.4, channel gains 1.3/0.7/0.55) leaves the standardised green channel nearly unchanged
    green = np.corrcoef(prepared["as-is"][1].ravel(), prepared["recoloured"][1].ravel())[0, 1]
    assert green > 0.98


@pytest.fixture(scope="module")
def tiny_drive_bundle(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DRIVE bundle from a few seconds of training (its weights do not matter to the tests that use it)."""
    tmp = tmp_path_factory.mktemp("fundus")
    plan = tmp / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "patch_size": [64, 64],
                "batch_size": 2,
                "iterations_per_epoch": 2,
                "optimizer": {"warmup_iterations": 1},
                "test_time_flips": False,
                "validate_every": 0,
                "network": {"filters": [4, 8, 16, 32, 32]},
            }
        )
    )
    options = SegmentationOptions(epochs=1, plan=plan, max_cases=4)
    segmentation.TASK.train(str(shared_data / "drive"), tmp / "bundle", options)
    return tmp / "bundle"


def test_predictions_outside_the_fov_are_zero_on_the_input_grid(
    shared_data: Path, tiny_drive_bundle: Path, tmp_path: Path
) -> None:
    """Even a network that fires everywhere segments nothing outside the found FOV of a 999x960 PNG without a mask,
    and the mask comes back at 999x960."""
    image, ref = _variants(shared_data / "drive", "01")["999x960"]
    path = tmp_path / "other_camera.png"
    Image.fromarray(np.moveaxis(image, 0, -1).astype(np.uint8)).save(path)
    model = runtime.load(tiny_drive_bundle)
    assert isinstance(model, SegmentationModel) and model.plan.field_of_view is not None

    def everywhere(x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 2, *x.shape[2:])
        logits[:, 1] = 5.0
        return logits

    model.predictor = everywhere
    (result,) = model.predict([path])
    assert result.mask.shape == (960, 999)
    fov = fundus.find_fov(image)
    assert _iou(fov, ref) >= 0.95
    assert not result.mask[~fov].any()  # nothing outside the FOV
    assert result.mask[fov].mean() > 0.99  # and the (all-firing) network's output kept inside it
