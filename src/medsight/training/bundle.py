"""The bundle: one folder that holds everything predict, explain and evaluate need.

model.pt            PyTorch state dict
model.onnx(.data)   ONNX export, checked against PyTorch with ONNX Runtime
bundle.json         task, labels, input spec, preprocessing, network, data fingerprint, seed,
                    versions, calibration, operating point, validation metrics
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsight import __version__
from medsight.errors import MedsightError

FORMAT = "medsight-bundle/1"
BUNDLE_JSON = "bundle.json"
WEIGHTS = "model.pt"
ONNX = "model.onnx"


def library_versions() -> dict[str, str]:
    """Versions that decide whether a bundle reproduces."""
    import monai
    import numpy
    import onnx
    import onnxruntime

    return {
        "medsight": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": numpy.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Bundle:
    """A loaded bundle: its folder and its ``bundle.json``."""

    path: Path
    meta: dict[str, Any]

    @property
    def task(self) -> str:
        return str(self.meta["task"])

    @property
    def input(self) -> dict[str, Any]:
        return dict(self.meta["input"])

    @property
    def label_names(self) -> list[str]:
        return list(self.meta["label_names"])

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX

    def network(self, device: str = "cpu") -> nn.Module:
        """Rebuild the network from its recorded plan and load the weights."""
        from medsight.tasks.registry import build_network

        model = build_network(self.meta["network"])
        try:
            state = torch.load(self.path / WEIGHTS, map_location=device, weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise MedsightError(f"cannot load weights ({exc})", self.path / WEIGHTS) from exc
        model.load_state_dict(state)
        return model.to(device).eval()


def load_bundle(path: str | Path) -> Bundle:
    """Open a bundle folder, checking it is complete and of a format we read."""
    path = Path(path)
    meta_path = path / BUNDLE_JSON
    if not meta_path.is_file():
        raise MedsightError("not a medsight bundle (no bundle.json)", path)
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise MedsightError(f"bundle.json is not valid JSON ({exc})", meta_path) from exc
    if meta.get("format") != FORMAT:
        raise MedsightError(f"unsupported bundle format {meta.get('format')!r} (this medsight reads {FORMAT})", path)
    for name in (WEIGHTS,):
        if not (path / name).is_file():
            raise MedsightError(f"bundle is missing {name}", path)
    return Bundle(path, meta)
