"""ONNX export checked against PyTorch with ONNX Runtime, and a small ONNX Runtime predictor."""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medsight import config
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
        try:
            program.save(str(path), external_data=True)
        except OSError as exc:  # NumPy's tofile says "N requested and M written" on a full disk, without an errno
            raise MedsightError(
                f"could not write the ONNX model ({exc.strerror or exc}); is the disk full? Nothing half-written "
                "was left: the bundle is written in a temporary folder and an earlier bundle there is unchanged"
            ) from exc
    with torch.no_grad():
        expected = model(example).numpy()
    got = OnnxPredictor(path).run(example.numpy())
    gap = float(np.max(np.abs(expected - got)))
    if gap > tolerance:
        raise RuntimeError(f"ONNX output differs from PyTorch by {gap:.2e} (> {tolerance:g})")
    files = sorted(p.name for p in path.parent.glob(path.name + "*"))
    return {
        "file": path.name,
        "files": files,
        "sha256": checksums(path.parent, files),
        "max_abs_diff_vs_torch": gap,
        "checked_batch": int(example.shape[0]),
    }


def checksums(folder: Path, files: list[str]) -> dict[str, str]:
    """The sha256 of each ONNX file, recorded in ``bundle.json`` so that loading can tell this bundle's model from
    another's copied over it (same input and output shapes: nothing else would notice, every prediction wrong)."""
    sums = {}
    for name in files:
        digest = hashlib.sha256()
        with open(folder / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        sums[name] = digest.hexdigest()
    return sums


def check_files(folder: Path, onnx: dict[str, Any]) -> None:
    """Refuse ONNX files that are not the ones ``bundle.json`` recorded (when it recorded their checksums: bundles
    written before they were recorded are taken as they are). A missing file is left to the session to name."""
    recorded = onnx.get("sha256")
    if not isinstance(recorded, dict):
        return
    present = [name for name in recorded if (folder / str(name)).is_file()]
    for name, got in checksums(folder, present).items():
        if got != recorded[name]:
            raise MedsightError(
                "is not the ONNX file this bundle was written with (its sha256 differs from bundle.json's "
                "onnx.sha256): another model's file was copied in, or it was damaged; copy the bundle again or "
                "retrain",
                folder / name,
            )


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
        options.intra_op_num_threads = threads or config.num_threads()
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


def check_input(path: Path, channels: int, spatial: list[int] | None) -> None:
    """Refuse an ONNX model whose fixed input shape is not the ``(N, channels, *spatial)`` bundle.json describes:
    another model's file under this bundle's name, caught for bundles without recorded checksums. Only the graph is
    read (not the external weights); dimensions the graph leaves open are not compared."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # a damaged or missing file: the session names it when the task loads the model
        return
    if not graph.input:
        return
    dims: list[int | None] = [
        d.dim_value if d.HasField("dim_value") else None for d in graph.input[0].type.tensor_type.shape.dim
    ]
    sides: list[int | None] = list(spatial) if spatial else [None] * (len(dims) - 2)
    expected: list[int | None] = [None, channels, *sides]
    if len(dims) != len(expected) or any(g and e and g != e for g, e in zip(dims, expected, strict=True)):
        shown = ["N" if d is None else str(d) for d in dims]
        wanted = ["N" if e is None else str(e) for e in expected]
        raise MedsightError(
            f"takes input ({', '.join(shown)}) but bundle.json describes ({', '.join(wanted)}): the ONNX model is "
            "not this bundle's (another model's file, or bundle.json edited); copy the bundle again or retrain",
            path,
        )
