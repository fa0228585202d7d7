"""The bundle: one folder that holds everything predict, explain and evaluate need.

model.pt            PyTorch state dict
model.onnx(.data)   ONNX export, checked against PyTorch with ONNX Runtime
bundle.json         task, labels, input spec, typed plan, options given, preprocessing, network, data
                    fingerprint, seed, versions, calibration, operating point, validation metrics

``bundle.json`` follows the versioned JSON schema ``bundle_schema.json`` shipped beside this module; it is
validated when written (:func:`write_bundle_json`) and when loaded (:func:`load_bundle`), so a bundle from a
newer medsight, an older format or a hand edit gives one clear error instead of a failure deep inside a run.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from medsight import __version__
from medsight.errors import MedsightError
from medsight.io.atomic import json_default, write_json

FORMAT_NAME = "medsight-bundle"
FORMAT_VERSION = 2
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
SCHEMA_FILE = Path(__file__).with_name("bundle_schema.json")
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


class _PlanType(Protocol):
    @classmethod
    def from_json(cls: type[P], data: Any, where: str | Path | None = None) -> P: ...


P = TypeVar("P", bound=_PlanType)


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

    def plan(self, cls: type[P]) -> P:
        """The bundle's plan as the task's typed plan object (checked key by key)."""
        return cls.from_json(self.meta["plan"], self.path / BUNDLE_JSON)

    def network(self, device: str = "cpu") -> nn.Module:
        """Rebuild the network from its recorded plan and load the weights."""
        from medsight.tasks.registry import build_network

        spec = self.meta["network"]
        try:
            model = build_network(spec)
        except (TypeError, ValueError, KeyError, AttributeError, ImportError) as exc:
            # a hand-edited or foreign bundle.json: one line naming the file, not a traceback
            raise MedsightError(
                f"its network {spec.get('name')} cannot be built ({exc})", self.path / BUNDLE_JSON
            ) from exc
        try:
            state = torch.load(self.path / WEIGHTS, map_location=device, weights_only=True)
        except Exception as exc:  # missing (OSError), damaged (UnpicklingError, RuntimeError, EOFError...)
            raise MedsightError(f"cannot load weights ({type(exc).__name__}: {exc})", self.path / WEIGHTS) from exc
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            lines = str(exc).strip().splitlines()
            detail = lines[1].strip() if len(lines) > 1 else str(exc)
            raise MedsightError(
                f"the weights do not fit the network bundle.json names ({detail})", self.path / WEIGHTS
            ) from exc
        return model.to(device).eval()


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The JSON schema of the current bundle format."""
    loaded: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
    return loaded


def validate_meta(meta: Any, where: str | Path | None = None) -> None:
    """Raise a clear error unless ``meta`` is a ``bundle.json`` of the format this medsight writes."""
    import jsonschema

    if not isinstance(meta, dict):
        raise MedsightError("bundle.json must hold a JSON object", where)
    fmt = meta.get("format")
    match = re.fullmatch(rf"{FORMAT_NAME}/(\d+)", str(fmt))
    if match is None:
        raise MedsightError(f"not a medsight bundle format ({fmt!r}; this medsight reads {FORMAT})", where)
    version = int(match.group(1))
    if version > FORMAT_VERSION:
        raise MedsightError(
            f"bundle format {version} was written by a newer medsight (this one reads format {FORMAT_VERSION}); "
            "upgrade medsight to use it",
            where,
        )
    if version < FORMAT_VERSION:
        raise MedsightError(
            f"bundle format {version} is from an older medsight (this one reads format {FORMAT_VERSION}); "
            "retrain it with 'medsight train'",
            where,
        )
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(meta), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        at = "/".join(str(p) for p in first.absolute_path) or "(top level)"
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise MedsightError(f"bundle.json does not follow {FORMAT} at {at}: {first.message}{more}", where)


def write_bundle_json(folder: Path, meta: dict[str, Any]) -> Path:
    """Validate ``meta`` against the schema, then write ``folder/bundle.json`` atomically."""
    plain = json.loads(json.dumps(meta, default=json_default))
    validate_meta(plain, folder / BUNDLE_JSON)
    return write_json(folder / BUNDLE_JSON, plain)


def load_bundle(path: str | Path) -> Bundle:
    """Open a bundle folder, checking it is complete and follows the bundle schema."""
    path = Path(path)
    meta_path = path / BUNDLE_JSON
    if not meta_path.is_file():
        raise MedsightError("not a medsight bundle (no bundle.json)", path)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MedsightError(f"bundle.json is not valid JSON ({exc})", meta_path) from exc
    except (UnicodeDecodeError, OSError) as exc:  # a binary file, a disk error, an editor's UTF-16
        raise MedsightError(f"bundle.json is not readable UTF-8 text ({type(exc).__name__})", meta_path) from exc
    validate_meta(meta, meta_path)
    for name in (WEIGHTS,):
        if not (path / name).is_file():
            raise MedsightError(f"bundle is missing {name}", path)
    return Bundle(path, meta)
