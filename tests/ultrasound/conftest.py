"""Fixtures of the ultrasound tests: BUSI read in place, and a fast-preset bundle trained on it for seconds (tiny patch,
30 iterations) with its int8 variant. The bundle is barely trained: tests on it check behaviour, not accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsight.runtime.quantize import quantize_bundle
from medsight.tasks import segmentation
from medsight.tasks.segmentation import SegmentationOptions

TINY_FAST = {
    "preset": "fast",
    "patch_size": [128, 128],
    "batch_size": 4,
    "iterations_per_epoch": 10,
    "optimizer": {"warmup_iterations": 2},
    "validate_every": 0,
}


@pytest.fixture(scope="session")
def busi_root(shared_data: Path) -> Path:
    return shared_data / "busi"


@pytest.fixture(scope="session")
def fast_bundle(busi_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("busi_fast")
    plan = tmp / "plan.json"
    plan.write_text(json.dumps(TINY_FAST))
    options = SegmentationOptions(seed=0, epochs=3, max_cases=12, plan=plan)
    segmentation.TASK.train(str(busi_root), tmp / "bundle", options)
    return tmp / "bundle"


@pytest.fixture(scope="session")
def int8_variant(fast_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize_bundle(fast_bundle, tmp_path_factory.mktemp("busi_int8") / "bundle")
