"""Typed prediction results: what ``Model.predict`` returns and what ``predictions.json`` holds.

Each task defines its own :class:`Result` subclass (labels with calibrated probabilities and the decision; masks
with geometry; boxes; outcome risk) in its ``predict`` module. A result keeps its arrays in memory (the service
turns them into DICOM objects); ``to_json`` gives the entry the CLI writes, and ``files`` names the artefacts
the task's ``Model.save`` writes beside it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def safe_stem(name: str, index: int) -> str:
    """A file-name stem for the ``index``-th input: its index plus the input's stem with odd characters replaced."""
    stem = Path(name).name.split(".")[0] or "input"
    return f"{index:03d}_" + re.sub(r"[^A-Za-z0-9_-]", "_", stem)[:40]


@dataclass
class Heatmap:
    """An attribution map over the model's input (values in [0, 1]) and what it explains."""

    array: np.ndarray
    target: str
    method: str

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "method": self.method, "shape": list(self.array.shape)}


@dataclass
class Deferral:
    """How sure one prediction is: its conformal prediction set (labels that hold the truth with probability
    ``coverage_target`` over cases like the validation ones) and whether it goes to the radiologist, and why."""

    prediction_set: list[str]
    confidence: float
    defer_to_radiologist: bool
    reasons: list[str]
    coverage_target: float

    def to_json(self) -> dict[str, Any]:
        return {
            "prediction_set": list(self.prediction_set),
            "coverage_target": self.coverage_target,
            "confidence": self.confidence,
            "defer_to_radiologist": self.defer_to_radiologist,
            "defer_reason": "; ".join(self.reasons) or None,
        }


#: What ``predictions.json`` says for a bundle trained before conformal prediction (no rule to apply).
NO_DEFERRAL_RULE = {
    "prediction_set": None,
    "defer_to_radiologist": None,
    "defer_reason": "the bundle holds no deferral rule (trained before conformal prediction); retrain to get one",
}


@dataclass
class Result:
    """One input's prediction. ``input`` is the input's file name (never its folder path)."""

    input: str
    index: int
    heatmap: Heatmap | None = None
    #: The prediction set and the deferral decision (classification and outcome; None where not applicable).
    deferral: Deferral | None = None
    #: Artefacts written by ``Model.save`` (kind -> file name inside the output folder). Kinds starting with
    #: ``heatmap_`` (``heatmap_image``, ``heatmap_array``) are listed under the entry's ``heatmap``.
    files: dict[str, str] = field(default_factory=dict)
    #: Any DICOM objects written for a DICOM input (kind -> file name).
    dicom: dict[str, str] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        return safe_stem(self.input, self.index)

    def summary(self) -> str:
        """One line for the console."""
        raise NotImplementedError

    def payload(self) -> dict[str, Any]:
        """The task-specific part of the JSON entry."""
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"input": self.input, **self.payload()}
        if self.deferral is not None:
            entry.update(self.deferral.to_json())
        if self.heatmap is not None:
            entry["heatmap"] = {
                **self.heatmap.to_json(),
                **{k.removeprefix("heatmap_"): v for k, v in self.files.items() if k.startswith("heatmap_")},
            }
        others = {k: v for k, v in self.files.items() if not k.startswith("heatmap_")}
        if others:
            entry["files"] = others
        if self.dicom:
            entry["dicom"] = dict(self.dicom)
        entry["summary"] = self.summary()
        return entry


def plain(value: Any) -> Any:
    """JSON-ready copy of dataclasses, NumPy scalars and arrays."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
