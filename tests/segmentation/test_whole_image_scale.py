"""The plan's ``image_pixels``: every 2D image resized, aspect kept, to about N pixels before the patch is cut (the
whole image in view of a CPU-sized patch), predictions resized back to the image's own grid, the preprocessing
cache keyed by it, and an override that cannot apply (3D, too few pixels) refused by name."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fingerprints import BUSI_LIKE
from medsight.data.segmentation import Loaded
from medsight.errors import MedsightError
from medsight.tasks.segmentation.data import preprocess
from medsight.tasks.segmentation.inference import predict_case
from medsight.tasks.segmentation.plan import SegmentationPlan, describe, make_plan, whole_image_shape


def test_whole_image_shape_keeps_the_aspect_and_reaches_the_pixel_count() -> None:
    shape = whole_image_shape([337, 400], 20480)
    assert shape == [131, 156]
    assert abs(shape[0] * shape[1] - 20480) / 20480 < 0.01
    assert whole_image_shape([100, 100], 40000) == [200, 200]  # a smaller image is enlarged to the same scale


def test_planner_scales_the_median_image_and_plans_the_patch_on_it() -> None:
    native = make_plan(BUSI_LIKE, overrides={"preset": "fast", "image_pixels": None})
    whole = make_plan(BUSI_LIKE, overrides={"preset": "fast", "image_pixels": 20480})
    assert native.image_pixels is None and whole.image_pixels == 20480
    assert native.patch_size == [256, 272]  # half of a 337x400 image
    assert whole.patch_size == [144, 160]  # the whole 131x156 image, rounded up to the network's downsampling
    assert whole.batch_size > native.batch_size  # the same voxels per step hold more images
    # the screen's other setting planned this patch on BUSI (busi_whole_image.json): the plan must not drift
    assert make_plan(BUSI_LIKE, overrides={"preset": "fast", "image_pixels": 65536}).patch_size == [240, 288]
    assert SegmentationPlan.from_json(whole.to_json()) == whole
    words = describe(whole, BUSI_LIKE)
    assert any(line.startswith("scale: every image is resized, aspect kept, to about 20480 pixels") for line in words)
    assert not any(line.startswith("scale:") for line in describe(native, BUSI_LIKE))
    assert make_plan(BUSI_LIKE, overrides={"image_pixels": None}).image_pixels is None


def test_image_pixels_is_refused_where_it_cannot_apply() -> None:
    volume = {**BUSI_LIKE, "spatial_dims": 3, "spacing_median": [1.0] * 3, "spacing_min": [1.0] * 3}
    volume = {**volume, "spacing_max": [1.0] * 3, "shape_median": [40.0, 50.0, 40.0]}
    with pytest.raises(MedsightError, match=r"image_pixels=4096: .* for 2D images only"):
        make_plan(volume, overrides={"image_pixels": 4096})
    for wrong in (10, "many", 2.5e4, True):
        with pytest.raises(MedsightError, match=r"image_pixels=.*: a whole number of pixels, at least 64"):
            make_plan(BUSI_LIKE, overrides={"image_pixels": wrong})


def test_images_and_labels_are_resized_and_predictions_come_back_on_the_image_grid() -> None:
    plan = make_plan(BUSI_LIKE, overrides={"preset": "fast", "image_pixels": 20480})
    rng = np.random.default_rng(0)
    image = rng.normal(60, 20, (1, 300, 420)).astype(np.float32)
    label = np.zeros((300, 420), dtype=np.int64)
    label[100:200, 150:300] = 1
    small, small_label = preprocess(image, (1.0, 1.0), plan, label)
    assert small.shape == (1, 121, 169) and small_label is not None and small_label.shape == (121, 169)
    assert set(np.unique(small_label)) == {0, 1}
    assert abs(small_label.mean() - label.mean()) < 0.01  # the lesion keeps its share of the image

    seen: list[tuple[int, ...]] = []

    def predictor(x: torch.Tensor) -> torch.Tensor:  # lesion wherever the window's input is bright
        seen.append(tuple(x.shape[2:]))
        return torch.cat([1 - x, x - 1], dim=1)

    bright = image.copy()
    bright[:, 100:200, 150:300] += 200
    case = Loaded("case", bright, None, (1.0, 1.0), np.eye(3))
    mask, probs = predict_case(case, plan, predictor, flips=False)
    assert mask.shape == (300, 420) and probs.shape[1:] == (300, 420)
    assert all(s == tuple(plan.patch_size) for s in seen)  # the network only ever sees the planned window
    assert mask[100:200, 150:300].mean() > 0.9 and mask[:80].mean() < 0.05


def test_the_preprocessing_cache_is_keyed_by_image_pixels() -> None:
    from medsight.tasks.segmentation import data

    plan = make_plan(BUSI_LIKE, overrides={"preset": "fast", "image_pixels": None})

    dataset = SimpleNamespace(train=[], root=Path("."))  # only what cache_key reads
    keys = {
        data.cache_key(dataset, BUSI_LIKE, dataclasses.replace(plan, image_pixels=px))  # type: ignore[arg-type]
        for px in (None, 20480, 65536)
    }
    assert len(keys) == 3
