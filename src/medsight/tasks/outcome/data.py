"""Reading the outcome task's data: the training/evaluation sets (via ``medsight.data.clinical``), the images at
the model's input size, and the cases ``predict`` is given (images with their clinical fields)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from medsight.data.clinical import OutcomeData, is_outcome_spec, load_outcome
from medsight.errors import MedsightError
from medsight.io.images import read_image
from medsight.transforms import prepare

__all__ = [
    "Case",
    "OutcomeData",
    "banded",
    "event_counts",
    "load",
    "read_cases",
    "read_images",
    "recognises",
    "table",
]


def recognises(spec: str) -> bool:
    """``<folder with annotations.json>#<outcome>`` or an outcome task .json (with "target" and "fields")."""
    try:
        return is_outcome_spec(spec)
    except OSError:
        return False


def load(spec: str) -> OutcomeData:
    """The outcome data set named by ``spec`` (rows with an unknown outcome left out and counted)."""
    return load_outcome(spec)


def event_counts(y: np.ndarray, patient_ids: Sequence[str] | np.ndarray) -> dict[str, Any]:
    """Images and patients, and how many of each had the outcome. Why: patients have several images, so counting
    images overstates the events a figure rests on (the COVID survival test split holds 10 images of 5 patients
    who died); a patient had the outcome when any of their images carries it."""
    y = np.asarray(y).astype(int)
    ids = np.asarray(list(patient_ids))
    patients, per = np.unique(ids, return_counts=True)
    with_event = {str(p) for p in ids[y == 1]}
    return {
        "images": len(y),
        "patients": len(patients),
        "images_with_event": int(y.sum()),
        "patients_with_event": len(with_event),
        "images_per_patient": {"mean": float(per.mean()) if len(per) else 0.0, "max": int(per.max(initial=0))},
    }


def read_images(paths: Sequence[Path], size: int) -> np.ndarray:
    """(N, 1, size, size) float32 in [0, 1]: the CNN's input (the same preparation in train and predict)."""
    if not paths:
        return np.zeros((0, 1, size, size), np.float32)
    bar = tqdm(paths, desc="read", unit="image", disable=len(paths) < 20)
    return np.stack([prepare(_read_2d(p), [size, size], 1) for p in bar]).astype(np.float32)


def _read_2d(path: Path) -> np.ndarray:
    """One image, refused by name when it is not 2D (a CT volume given to the chest X-ray model)."""
    raw = read_image(path)
    if raw.ndim != 3:
        raise MedsightError(f"a {raw.ndim - 1}D image, but the model takes 2D images", path)
    return raw


@dataclass
class Case:
    """One prediction input: an image and the clinical field values given with it ("" = missing)."""

    image: Path
    name: str
    fields: dict[str, str] = field(default_factory=dict)

    def missing(self, names: Sequence[str]) -> list[str]:
        return [f for f in names if str(self.fields.get(f, "")).strip() == ""]


def read_cases(inputs: Sequence[Path], fields: Sequence[str]) -> list[Case]:
    """Images and their clinical fields: a CSV (column ``image`` relative to the CSV, plus field columns), or image
    files with an optional sidecar ``<file>.json`` of field values. Absent fields are missing values."""
    cases: list[Case] = []
    for p in inputs:
        p = Path(p)
        if p.suffix.lower() == ".csv":
            try:
                frame = pd.read_csv(p, dtype=str, keep_default_na=False)
            except (OSError, ValueError) as exc:
                raise MedsightError(f"cannot read the clinical CSV ({type(exc).__name__})", p) from exc
            if "image" not in frame:
                raise MedsightError("a clinical CSV for predict needs an 'image' column", p)
            for _, row in frame.iterrows():
                image = p.parent / str(row["image"])
                cases.append(Case(image, image.name, {f: str(row.get(f, "")) for f in fields}))
        else:
            side = p.with_name(p.name + ".json")
            values = _sidecar(side) if side.is_file() else {}
            cases.append(Case(p, p.name, {f: "" if values.get(f) is None else str(values.get(f)) for f in fields}))
    for case in cases:
        if not case.image.exists():
            raise MedsightError("image not found", case.image)
    return cases


def _sidecar(path: Path) -> dict[str, object]:
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedsightError(f"the clinical sidecar is not valid JSON ({type(exc).__name__})", path) from exc
    if not isinstance(values, dict):
        raise MedsightError("the clinical sidecar must hold a JSON object of field values", path)
    return values


def table(cases: Sequence[Case], fields: Sequence[str]) -> pd.DataFrame:
    """The raw clinical table of ``cases`` (one row each, declared fields as columns, strings)."""
    return pd.DataFrame([{f: c.fields.get(f, "") for f in fields} for c in cases], columns=list(fields))


def banded(attrs: pd.DataFrame) -> pd.DataFrame:
    """Age in the audit's bands (<18, 18-39, 40-59, 60-79, 80+), with missing ages as their own 'missing' group."""
    out = attrs.copy()
    for col in out.columns:
        if pd.api.types.is_numeric_dtype(out[col]):
            bands = pd.cut(
                out[col],
                [-np.inf, 18, 40, 60, 80, np.inf],
                right=False,
                labels=["<18", "18-39", "40-59", "60-79", "80+"],
            )
            out[col] = bands.astype(object).where(out[col].notna(), "missing").astype(str)
    return out
