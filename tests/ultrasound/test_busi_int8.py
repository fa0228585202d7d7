"""int8 post-training quantisation (ONNX Runtime static QDQ, calibrated on training images): a bundle variant whose
masks agree with the float model's on real held-out BUSI images within a stated Dice; refusals are clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from medsight import runtime
from medsight.errors import MedsightError
from medsight.runtime.quantize import calibration_inputs, quantize_bundle
from medsight.tasks.segmentation.data import load_case, open_dataset
from medsight.training.bundle import load_bundle

#: Stated agreement of int8 with fp32 masks (lesion Dice, mean over held-out images). The test model is barely trained,
#: so its logits sit near the decision boundary: the worst case for quantisation (a trained model agrees more).
MIN_AGREEMENT_DICE = 0.90


def test_busi_int8_variant_is_a_quantised_bundle_calibrated_on_training_images(
    fast_bundle: Path, int8_variant: Path
) -> None:
    meta = load_bundle(int8_variant).meta
    how = meta["onnx"]["quantization"]
    assert how["format"] == "QDQ" and how["calibration_images"] == 8
    graph = onnx.load(str(int8_variant / "model.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert not (int8_variant / "model.onnx.data").exists()
    inputs = calibration_inputs(load_bundle(fast_bundle))
    assert len(inputs) == 8 and inputs[0].shape == (1, 1, 128, 128)
    assert meta["data"]["train_ids"] == load_bundle(fast_bundle).meta["data"]["train_ids"]


def test_busi_int8_masks_agree_with_fp32_on_held_out_images(
    fast_bundle: Path, int8_variant: Path, busi_root: Path
) -> None:
    fp32, int8 = runtime.load(fast_bundle), runtime.load(int8_variant)
    ds = open_dataset(busi_root)
    test_ids = load_bundle(fast_bundle).meta["data"]["test_ids"]
    dice = []
    for cid in test_ids[:: len(test_ids) // 8][:8]:  # benign, malignant and normal images of the test fold
        case = load_case(ds, ds.case(cid))
        a = fp32.segment(case.image, case.spacing)[0] > 0  # type: ignore[attr-defined]
        b = int8.segment(case.image, case.spacing)[0] > 0  # type: ignore[attr-defined]
        total = int(a.sum() + b.sum())
        dice.append(1.0 if total == 0 else 2 * float((a & b).sum()) / total)
    assert np.mean(dice) >= MIN_AGREEMENT_DICE, dice


def test_busi_quantising_refuses_a_quantised_bundle_and_missing_training_data(
    int8_variant: Path, fast_bundle: Path, tmp_path: Path
) -> None:
    with pytest.raises(MedsightError, match="already quantised"):
        quantize_bundle(int8_variant, tmp_path / "again")
    moved = tmp_path / "moved"
    shutil.copytree(fast_bundle, moved)
    meta = json.loads((moved / "bundle.json").read_text())
    meta["data"]["root"] = str(tmp_path / "nowhere")
    (moved / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(MedsightError, match="int8 calibration needs the training images of"):
        quantize_bundle(moved, tmp_path / "q")
    assert not (tmp_path / "q").exists()
