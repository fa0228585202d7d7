"""The runtime: a bundle loaded once and run many times, shared by ``medsight predict`` and the service.

    model = medsight.runtime.load("bundle/")      # ONNX Runtime session, preprocessing, calibration, operating point
    results = model.predict([Path("a.dcm")])       # typed results (medsight.runtime.results), nothing written
    medsight.runtime.write_predictions(model, results, Path("out/"))   # what the CLI writes

``load`` sits above the task packages (it asks the bundle's task to build its model); ``onnx_export`` and
``results`` are leaf modules the tasks use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medsight.runtime.results import Result
    from medsight.tasks.contract import Model
    from medsight.training.bundle import Bundle

__all__ = ["load", "write_predictions"]


def load(bundle: str | Path | Bundle) -> Model:
    """The warm model of ``bundle`` (a folder or a loaded :class:`Bundle`), checked against the bundle schema."""
    from medsight import tasks
    from medsight.training.bundle import Bundle, load_bundle

    opened = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    model = tasks.get(opened.task).load(opened)  # a damaged or missing file is named by the session first
    check_model_files(opened)
    return model


def check_model_files(bundle: Bundle) -> None:
    """The ONNX model must be the one this bundle was written with: its recorded checksums, and the input shape
    ``bundle.json`` describes (so another model's file copied in, or an edited ``input``, is refused by name rather
    than predicting with the wrong model or failing inside ONNX Runtime)."""
    from medsight.runtime.onnx_export import check_files, check_input

    onnx = bundle.meta.get("onnx")
    if not isinstance(onnx, dict) or "error" in onnx or not bundle.onnx_path.is_file():
        return  # PyTorch fallback, or a missing file the task names
    check_files(bundle.path, onnx)
    spec = bundle.input
    spatial = spec.get("patch_size") if bundle.task == "segmentation" else spec.get("spatial_size")
    check_input(bundle.onnx_path, int(spec["n_channels"]), list(spatial) if spatial else None)


def predictions_document(model: Model, results: Sequence[Result]) -> dict[str, Any]:
    """The ``predictions.json`` document for ``results``."""
    meta = model.bundle.meta
    return {
        "bundle": str(model.bundle.path),
        "task": meta["task"],
        "model": meta["data"]["source"],
        "medsight": meta["versions"]["medsight"],
        "predictions": [r.to_json() for r in results],
    }


def write_predictions(model: Model, results: Sequence[Result], out: Path) -> Path:
    """Write ``out/predictions.json`` and every artefact of ``results``; ``out`` appears whole or not at all."""
    from medsight.io.atomic import atomic_dir, write_json

    with atomic_dir(out, written=("predictions.json",)) as tmp:
        model.save(results, tmp)
        write_json(tmp / "predictions.json", predictions_document(model, results))
    return out / "predictions.json"
