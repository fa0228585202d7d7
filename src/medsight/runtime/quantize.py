"""int8 post-training quantisation of a 2D/3D segmentation bundle's ONNX model, for real-time use on a CPU.

ONNX Runtime's static quantisation (``onnxruntime.quantization.quantize_static``) in the QDQ format: weights int8 per
output channel, activations uint8 with ranges calibrated (MinMax) on a few of the bundle's *training* images,
preprocessed exactly as inference preprocesses them (never validation or test images). The result is a bundle
variant: a copy of the bundle whose ``model.onnx`` is the int8 model and whose ``bundle.json["onnx"]["quantization"]``
says how it was made, so ``runtime.load``, ``predict``, ``evaluate`` and ``stream`` use it unchanged and its Dice is
measured the same way as the float model's.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from onnxruntime.quantization import CalibrationDataReader

from medsight import config
from medsight.errors import MedsightError
from medsight.io.atomic import atomic_dir
from medsight.runtime.onnx_export import checksums
from medsight.training.bundle import BUNDLE_JSON, ONNX, Bundle, load_bundle, write_bundle_json

log = logging.getLogger("medsight.quantize")

#: Calibration images taken from the bundle's training cases (evenly spaced through the sorted ids).
N_CALIBRATION = 8
CACHE_DIR = "int8_bundles"
#: Only the convolutions run in int8; instance norm and activations stay float between them (quantising the norm's
#: per-channel scale is neither faster nor supported per channel, and its output range varies image by image).
QUANTIZED_OPS = ("Conv", "ConvTranspose")


def calibration_inputs(bundle: Bundle, n: int = N_CALIBRATION, data: Path | None = None) -> list[np.ndarray]:
    """``n`` of the bundle's training images, preprocessed as inference does and padded or cropped (centre) to the
    plan's patch: the inputs the int8 ranges are calibrated on. ``data`` replaces the recorded data folder."""
    from monai.transforms import ResizeWithPadOrCrop

    from medsight.tasks.segmentation.data import load_case, open_dataset, preprocess
    from medsight.tasks.segmentation.plan import SegmentationPlan

    if bundle.task != "segmentation":
        raise MedsightError(f"int8 quantisation is for segmentation bundles (this one is {bundle.task})", bundle.path)
    plan = bundle.plan(SegmentationPlan)
    recorded = bundle.meta["data"]
    root = Path(data) if data is not None else Path(recorded["root"])
    if not root.is_dir():
        raise MedsightError(
            f"int8 calibration needs the training images of {bundle.path}, and its data folder {root} is not here: "
            "give the folder where the data are now (medsight stream ... --int8 --data DATA)",
            bundle.path / BUNDLE_JSON,
        )
    ids: list[str] = list(recorded["train_ids"])
    if not ids:
        raise MedsightError("the bundle records no training cases to calibrate on", bundle.path / BUNDLE_JSON)
    chosen = [ids[int(k)] for k in np.linspace(0, len(ids) - 1, min(n, len(ids))).round()]
    ds = open_dataset(root)
    fit = ResizeWithPadOrCrop(spatial_size=plan.patch_size)
    out = []
    for cid in dict.fromkeys(chosen):
        case = load_case(ds, ds.case(cid))
        image, _ = preprocess(case.image, case.spacing, plan)
        out.append(np.asarray(fit(torch.as_tensor(image)), dtype=np.float32)[None])
    return out


class _Reader(CalibrationDataReader):
    """The calibration inputs as ONNX Runtime's calibrator asks for them: one feed dict at a time."""

    def __init__(self, name: str, inputs: Sequence[np.ndarray]) -> None:
        self.name = name
        self._iter: Iterator[np.ndarray] = iter(inputs)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {self.name: batch}


def quantize_model(float_model: Path, out: Path, inputs: Sequence[np.ndarray]) -> dict[str, Any]:
    """Write the int8 QDQ model of ``float_model`` to ``out`` (one file); returns how it was made."""
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not inputs:
        raise MedsightError("no calibration inputs", float_model)
    name = onnxruntime.InferenceSession(str(float_model), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    reader = _Reader(name, inputs)
    with tempfile.TemporaryDirectory(prefix="medsight-int8-") as tmp:
        import onnx

        whole, prepared = Path(tmp) / "float.onnx", Path(tmp) / "prepared.onnx"
        onnx.save_model(onnx.load(str(float_model)), str(whole))  # the exporter's external data, taken in
        quant_pre_process(str(whole), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=list(QUANTIZED_OPS),
        )
    return {
        "method": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "weights": "int8, per output channel",
        "operators": list(QUANTIZED_OPS),
        "activations": "uint8, MinMax calibration",
        "calibration_images": len(inputs),
        "onnxruntime": onnxruntime.__version__,
    }


def quantize_bundle(bundle_path: Path, out: Path, n: int = N_CALIBRATION, data: Path | None = None) -> Path:
    """Write ``out``: a copy of the segmentation bundle at ``bundle_path`` whose ONNX model is int8 (calibrated on
    ``n`` of its training images; ``data`` replaces the recorded data folder). Returns ``out``."""
    bundle = load_bundle(bundle_path)
    onnx_info = dict(bundle.meta.get("onnx") or {})
    if "error" in onnx_info or not bundle.onnx_path.is_file():
        raise MedsightError("the bundle has no ONNX model to quantise", bundle.path)
    if "quantization" in onnx_info:
        raise MedsightError("the bundle's ONNX model is already quantised", bundle.path)
    inputs = calibration_inputs(bundle, n, data)
    with atomic_dir(out) as tmp:
        for item in bundle.path.iterdir():
            if item.name.startswith(ONNX):  # model.onnx and its external data: replaced by the int8 model
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        how = quantize_model(bundle.onnx_path, tmp / ONNX, inputs)
        how["float_model"] = {
            "bundle": str(bundle.path),
            "max_abs_diff_vs_torch": onnx_info.get("max_abs_diff_vs_torch"),
        }
        meta = dict(bundle.meta)
        sums = checksums(tmp, [ONNX])  # the int8 file's, not the float model's the bundle recorded
        meta["onnx"] = {**onnx_info, "file": ONNX, "files": [ONNX], "sha256": sums, "quantization": how}
        write_bundle_json(tmp, meta)
    log.info("int8 bundle written to %s", out)
    return out


def is_quantized(bundle: Bundle) -> bool:
    return "quantization" in (bundle.meta.get("onnx") or {})


def int8_bundle(bundle_path: Path, n: int = N_CALIBRATION, data: Path | None = None) -> Path:
    """The int8 variant of ``bundle_path`` (the bundle itself when it is one), made once and kept in the cache
    (``$MEDSIGHT_CACHE/int8_bundles/<hash of bundle.json and model>``). ``data``: where the training data are now,
    when they moved since training."""
    bundle = load_bundle(bundle_path)
    if is_quantized(bundle):
        return Path(bundle_path)
    digest = hashlib.sha256()
    for name in sorted(p.name for p in bundle.path.iterdir() if p.name == BUNDLE_JSON or p.name.startswith(ONNX)):
        digest.update(name.encode() + (bundle.path / name).read_bytes())
    cached = config.cache_root() / CACHE_DIR / digest.hexdigest()[:24]
    if (cached / BUNDLE_JSON).is_file():
        return cached
    return quantize_bundle(Path(bundle_path), cached, n, data)
