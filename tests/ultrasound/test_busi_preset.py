"""The planner's speed preset: a determine_* step like every other decision, recorded in the plan, overridable key
by key, named on the command line as ``--plan fast``; an unknown preset is an error naming the known ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fingerprints import BUSI_LIKE
from medsight.errors import MedsightError
from medsight.tasks.segmentation.plan import (
    PRESETS,
    SegmentationPlan,
    SegmentationPlanner,
    make_plan,
    read_overrides,
    whole_image_shape,
)
from medsight.training.bundle import load_bundle


def test_busi_fast_preset_plans_a_small_network_that_sees_a_256_frame_in_one_window() -> None:
    default, fast = make_plan(BUSI_LIKE), make_plan(BUSI_LIKE, overrides={"preset": "fast"})
    assert default.preset == "default" and default.test_time_flips and default.network.filters[0] == 16
    assert fast.preset == "fast" and not fast.test_time_flips
    assert fast.network.filters == [8, 16, 32, 64, 64] and len(fast.network.strides) < len(default.network.strides)
    assert fast.image_pixels == 8192 and default.image_pixels is None  # the whole image in view
    assert fast.patch_size == [96, 112]  # BUSI's median 337x400 image, resized to about 83x99, is one window
    frame = whole_image_shape([256, 256], fast.image_pixels)
    assert all(f <= p for f, p in zip(frame, fast.patch_size, strict=True))  # so is a 256x256 frame (91x91)
    assert fast.batch_size == 17
    assert fast.sliding_window.overlap == 0.25 and fast.sliding_window.mode == "constant"
    assert SegmentationPlan.from_json(fast.to_json()).preset == "fast"  # recorded, and read back typed


def test_busi_preset_overrides_apply_on_top_of_it_and_a_subclass_can_change_the_step() -> None:
    plan = make_plan(BUSI_LIKE, overrides={"preset": "fast", "test_time_flips": True, "network": {"filters": [4] * 5}})
    assert plan.preset == "fast" and plan.test_time_flips and plan.network.filters == [4] * 5

    class AlwaysFast(SegmentationPlanner):
        def determine_preset(self) -> str:
            return "fast"

    assert AlwaysFast(BUSI_LIKE).plan().network.filters[0] == PRESETS["fast"].base_filters


def test_busi_preset_is_named_by_plan_and_an_unknown_one_is_an_error(tmp_path: Path) -> None:
    assert read_overrides(Path("fast")) == {"preset": "fast"}
    given = tmp_path / "fast"  # a file of that name wins over the preset's name
    given.write_text(json.dumps({"batch_size": 3}))
    assert read_overrides(given) == {"batch_size": 3}
    with pytest.raises(MedsightError, match=r"unknown plan preset 'turbo' \(known: default, fast\)"):
        make_plan(BUSI_LIKE, overrides={"preset": "turbo"})


def test_busi_fast_bundle_records_its_preset(fast_bundle: Path) -> None:
    bundle = load_bundle(fast_bundle)
    assert bundle.meta["plan"]["preset"] == "fast" and bundle.meta["plan"]["test_time_flips"] is False
    assert any(line.startswith("preset: fast") for line in bundle.meta["plan_in_words"])
    assert bundle.meta["data"]["layout"] == "busi" and "BUSI CV fold 0" in bundle.meta["data"]["split_method"]
