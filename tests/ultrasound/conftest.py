"""Fixtures of the ultrasound tests: BUSI read in place, and a fast-preset bundle trained on it for seconds (tiny patch,
30 iterations) with its int8 variant and a second seed. The bundles are barely trained: tests on them check
behaviour, not accuracy."""

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


def train_fast(busi_root: Path, folder: Path, seed: int) -> Path:
    """The tiny fast-preset training the fixtures share, with ``seed``; returns the bundle's folder."""
    plan = folder / "plan.json"
    plan.write_text(json.dumps(TINY_FAST))
    options = SegmentationOptions(seed=seed, epochs=3, max_cases=12, plan=plan)
    segmentation.TASK.train(str(busi_root), folder / "bundle", options)
    return folder / "bundle"


@pytest.fixture(scope="session")
def fast_bundle(busi_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_fast(busi_root, tmp_path_factory.mktemp("busi_fast"), seed=0)


@pytest.fixture(scope="session")
def fast_bundle_seed1(busi_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same training with seed 1: same plan and fold, other weights (an ensemble's second member)."""
    return train_fast(busi_root, tmp_path_factory.mktemp("busi_fast_seed1"), seed=1)


@pytest.fixture(scope="session")
def int8_variant(fast_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize_bundle(fast_bundle, tmp_path_factory.mktemp("busi_int8") / "bundle")
