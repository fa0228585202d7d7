"""ONNX export checked against PyTorch with ONNX Runtime, and a small ONNX Runtime predictor."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medsight.errors import MedsightError

log = logging.getLogger("medsight.onnx")


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, tolerance: float = 1e-3) -> dict[str, Any]:
    """Export with a dynamic batch axis, then run both engines on ``example`` and record the largest gap.

    torch's default (dynamo) exporter writes ``model.onnx`` plus ``model.onnx.data``.
    """
    model = model.eval().cpu()
    example = example.cpu()
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), quiet_onnx_logs():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamic_shapes=({0: batch},),
            input_names=["image"],
            output_names=["logits"],
            verbose=False,
        )
        assert program is not None
        program.save(str(path), external_data=True)
    with torch.no_grad():
        expected = model(example).numpy()
    got = OnnxPredictor(path).run(example.numpy())
    gap = float(np.max(np.abs(expected - got)))
    if gap > tolerance:
        raise RuntimeError(f"ONNX output differs from PyTorch by {gap:.2e} (> {tolerance:g})")
    files = sorted(p.name for p in path.parent.glob(path.name + "*"))
    return {"file": path.name, "files": files, "max_abs_diff_vs_torch": gap, "checked_batch": int(example.shape[0])}


class quiet_onnx_logs:
    """The exporter logs progress lines at INFO; keep the console to our own progress."""

    def __enter__(self) -> None:
        self._levels = {n: logging.getLogger(n).level for n in ("torch.onnx", "onnxscript", "torch.export", "onnx_ir")}
        for n in self._levels:
            logging.getLogger(n).setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        for n, lvl in self._levels.items():
            logging.getLogger(n).setLevel(lvl)


class OnnxPredictor:
    """ONNX Runtime session with the thread count set for this machine.

    ``spinning=False`` stops ONNX Runtime's worker threads from busy-waiting after each run. Where every call is
    followed by work of our own on the same cores (a segmentation frame's resizing and post-processing), the spinning
    threads take those cores from it (measured on the streaming path: ``benchmarks/ort_spinning.py``)."""

    def __init__(self, path: str | Path, threads: int | None = None, spinning: bool = True) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or int(os.environ.get("MEDSIGHT_THREADS", os.cpu_count() or 1))
        options.log_severity_level = 3
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if "CUDAExecutionProvider" in ort.get_available_providers()
            else ["CPUExecutionProvider"]
        )
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # ONNX Runtime's own errors (InvalidProtobuf, NoSuchFile, Fail...) for a damaged file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise MedsightError(
                f"cannot load the ONNX model ({type(exc).__name__}: {first[:300]}); the bundle is damaged or "
                "incomplete (model.onnx and model.onnx.data belong together): copy it again or retrain",
                path,
            ) from exc
        self.input_name = self.session.get_inputs()[0].name

    def run(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: np.ascontiguousarray(images, np.float32)})[0])
