"""Clinical tables for outcome prediction: declared fields, missing-value indicators, and the outcome data sets.

Fields are declared (numeric or categorical); nothing is inferred from the values. Missing values never drop a
patient: a numeric field becomes (standardised value with the training median imputed, 1 if it was missing); a
categorical field becomes one-hot over the training categories plus an explicit ``missing`` column. Rows are only
left out when their *outcome* is unknown, and those are counted in ``excluded``.

How a user names outcome data (``recognises`` of ``medsight.tasks.outcome`` agrees):

* ``<covid_cxr_lung_boxes folder>#survival`` or ``#icu``: the COVID-19 chest X-ray set with its metadata;
* ``<task>.json`` with ``{"table": "clinical.csv", "image_column": "image", "patient_column": "patient_id",
  "target": {"column": "died", "positive": ["1"], "negative": ["0"]}, "fields": {"age": "numeric",
  "sex": "categorical"}, "attributes": ["sex", "age"], "time_column": "days" (optional)}``; image paths are
  relative to the table's folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsight.data.splits import SPLIT_SEED, assert_disjoint_patients, patient_split
from medsight.errors import MedsightError

MISSING = "missing"

#: Declared clinical fields of the COVID-19 chest X-ray metadata (ieee8023), and the outcomes it supports.
COVID_FIELDS = {
    "age": "numeric",
    "sex": "categorical",
    "offset": "numeric",
    "temperature": "numeric",
    "pO2_saturation": "numeric",
    "leukocyte_count": "numeric",
    "neutrophil_count": "numeric",
    "lymphocyte_count": "numeric",
}
COVID_TARGETS = {
    "survival": {"column": "survival", "positive": ["N"], "negative": ["Y"], "name": "died"},
    "icu": {"column": "went_icu", "positive": ["Y"], "negative": ["N"], "name": "went to ICU"},
}


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: str  # "numeric" | "categorical"


class ClinicalEncoder:
    """Declared fields → a numeric matrix with missing indicators (scikit-learn style: ``fit`` returns self)."""

    def __init__(self, fields: list[FieldSpec]) -> None:
        self.fields = fields

    def fit(self, frame: pd.DataFrame) -> ClinicalEncoder:
        self.medians_: dict[str, float] = {}
        self.means_: dict[str, float] = {}
        self.stds_: dict[str, float] = {}
        self.categories_: dict[str, list[str]] = {}
        for f in self.fields:
            if f.kind == "numeric":
                v = numeric(frame[f.name]) if f.name in frame else pd.Series(dtype=float)
                med = float(v.median()) if v.notna().any() else 0.0
                filled = v.fillna(med)
                self.medians_[f.name] = med
                self.means_[f.name] = float(filled.mean()) if len(filled) else 0.0
                sd = float(filled.std(ddof=0)) if len(filled) else 1.0
                self.stds_[f.name] = sd if sd > 0 else 1.0
            else:
                c = categorical(frame[f.name]) if f.name in frame else pd.Series(dtype=str)
                self.categories_[f.name] = sorted(x for x in c.unique() if x != MISSING)
        self.feature_names_ = self._names()
        return self

    def _names(self) -> list[str]:
        names = []
        for f in self.fields:
            if f.kind == "numeric":
                names += [f.name, f"{f.name}_missing"]
            else:
                names += [f"{f.name}={c}" for c in self.categories_[f.name]] + [f"{f.name}={MISSING}"]
        return names

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        cols = []
        n = len(frame)
        for f in self.fields:
            if f.kind == "numeric":
                v = numeric(frame[f.name]) if f.name in frame else pd.Series([np.nan] * n)
                miss = v.isna().to_numpy()
                val = (v.fillna(self.medians_[f.name]).to_numpy(float) - self.means_[f.name]) / self.stds_[f.name]
                cols += [val, miss.astype(float)]
            else:
                c = categorical(frame[f.name]) if f.name in frame else pd.Series([MISSING] * n)
                arr = c.to_numpy()
                cols += [(arr == cat).astype(float) for cat in self.categories_[f.name]]
                cols.append((arr == MISSING).astype(float))
        return np.stack(cols, axis=1) if cols else np.zeros((n, 0))

    def to_json(self) -> dict[str, Any]:
        return {
            "fields": [{"name": f.name, "kind": f.kind} for f in self.fields],
            "medians": self.medians_,
            "means": self.means_,
            "stds": self.stds_,
            "categories": self.categories_,
            "feature_names": self.feature_names_,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClinicalEncoder:
        enc = cls([FieldSpec(f["name"], f["kind"]) for f in d["fields"]])
        enc.medians_, enc.means_, enc.stds_ = d["medians"], d["means"], d["stds"]
        enc.categories_ = d["categories"]
        enc.feature_names_ = d["feature_names"]
        return enc


def numeric(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values.replace({"": np.nan}), errors="coerce").astype(float)


def categorical(values: pd.Series) -> pd.Series:
    s = values.astype(object).where(values.notna(), "")
    return s.map(lambda x: str(x).strip() or MISSING)


@dataclass
class OutcomeData:
    name: str
    images: list[Path]
    table: pd.DataFrame  # raw declared fields, one row per image
    y: np.ndarray  # 1 = outcome happened
    patient_ids: list[str]
    fields: list[FieldSpec]
    target: str
    target_name: str
    attributes: pd.DataFrame
    time: np.ndarray | None = None
    excluded: dict[str, int] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for p, y in zip(self.images, self.y, strict=True):
            h.update(f"{p.name}:{int(y)}".encode())
        return h.hexdigest()[:16]

    def split(self, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
        """Patient-level 70/10/20 split stratified by the outcome; checked for patient overlap.

        ``seed`` is the fixed split seed (recorded in the bundle as ``data.split_seed``), never the training seed."""
        parts = patient_split(list(self.y), self.patient_ids, seed=seed)
        assert_disjoint_patients({k: [self.patient_ids[i] for i in v] for k, v in parts.items()})
        return parts


def parse_outcome_spec(spec: str) -> tuple[Path, str | None]:
    path, _, target = str(spec).partition("#")
    return Path(path), (target or None)


def _select(raw: pd.DataFrame, target: dict[str, Any], name: str, excluded: dict[str, int]) -> pd.DataFrame:
    col = str(target["column"])
    if col not in raw:
        raise MedsightError(f"outcome column {col!r} is not in the table", name)
    v = raw[col].astype(object).where(raw[col].notna(), "").map(lambda x: str(x).strip())
    pos, neg = {str(x) for x in target["positive"]}, {str(x) for x in target["negative"]}
    known = v.isin(pos | neg)
    excluded["outcome not recorded"] = int((~known).sum())
    out = raw[known].copy()
    out["__y"] = v[known].isin(pos).astype(int).to_numpy()
    return out


def load_covid(folder: Path, target_key: str) -> OutcomeData:
    """The COVID-19 chest X-ray set: one row per annotated image whose staged file exists and whose outcome is known."""
    if target_key not in COVID_TARGETS:
        raise MedsightError(f"unknown outcome {target_key!r} (known: {', '.join(COVID_TARGETS)})", folder)
    ann = folder / "annotations.json"
    images = json.loads(ann.read_text())["images"]
    staged: dict[str, str] = {}
    manifest = folder / "resize_manifest.csv"
    if manifest.is_file():
        with manifest.open(newline="") as f:
            staged = {r["file_name"]: r["staged_name"] for r in csv.DictReader(f) if r.get("staged_name")}
    rows = []
    missing_files = 0
    for img in images:
        name = staged.get(img["file_name"], img["file_name"])
        path = folder / name
        if not path.is_file():
            missing_files += 1
            continue
        rows.append({**(img.get("metadata") or {}), "__image": str(path)})
    excluded = {"image file absent": missing_files}
    target = COVID_TARGETS[target_key]
    table = _select(pd.DataFrame(rows), target, str(folder), excluded)
    fields = [FieldSpec(k, v) for k, v in COVID_FIELDS.items()]
    return _build(
        f"{folder.name}#{target_key}",
        table,
        fields,
        target_key,
        str(target["name"]),
        ["sex", "age"],
        "patientid",
        None,
        excluded,
    )


def load_task_file(path: Path) -> OutcomeData:
    """A JSON task file naming a CSV table, its image/patient columns, the target and the declared fields."""
    try:
        cfg = json.loads(path.read_text())
        table_path = path.parent / cfg["table"]
        raw = pd.read_csv(table_path, dtype=str, keep_default_na=False)
        image_col, patient_col, target = cfg["image_column"], cfg["patient_column"], cfg["target"]
        fields = [FieldSpec(k, v) for k, v in cfg["fields"].items()]
    except (OSError, KeyError, json.JSONDecodeError, ValueError) as exc:
        raise MedsightError(f"not a valid outcome task file ({type(exc).__name__}: {exc})", path) from exc
    for f in fields:
        if f.kind not in ("numeric", "categorical"):
            raise MedsightError(f"field {f.name!r}: kind must be numeric or categorical", path)
    raw["__image"] = [str(table_path.parent / p) for p in raw[image_col]]
    excluded: dict[str, int] = {}
    table = _select(raw, target, str(path), excluded)
    return _build(
        path.stem,
        table,
        fields,
        str(target["column"]),
        str(target.get("name", target["column"])),
        list(cfg.get("attributes", [])),
        patient_col,
        cfg.get("time_column"),
        excluded,
    )


def _build(
    name: str,
    table: pd.DataFrame,
    fields: list[FieldSpec],
    target: str,
    target_name: str,
    attributes: list[str],
    patient_col: str,
    time_col: str | None,
    excluded: dict[str, int],
) -> OutcomeData:
    table = table.reset_index(drop=True)
    if len(table) == 0 or table["__y"].nunique() < 2:
        raise MedsightError("the outcome needs both classes among the rows with a recorded outcome", name)
    attrs = pd.DataFrame(index=table.index)
    for a in attributes:
        if a in table:
            attrs[a] = numeric(table[a]) if a == "age" else categorical(table[a])
    return OutcomeData(
        name=name,
        images=[Path(p) for p in table["__image"]],
        table=table[[f.name for f in fields if f.name in table]].copy(),
        y=table["__y"].to_numpy(int),
        patient_ids=[str(p) for p in table[patient_col]],
        fields=fields,
        target=target,
        target_name=target_name,
        attributes=attrs,
        time=numeric(table[time_col]).to_numpy(float) if time_col and time_col in table else None,
        excluded=excluded,
    )


def load_outcome(spec: str) -> OutcomeData:
    path, target = parse_outcome_spec(spec)
    if path.suffix == ".json" and path.is_file():
        return load_task_file(path)
    if path.is_dir() and (path / "annotations.json").is_file() and target:
        return load_covid(path, target)
    raise MedsightError("not outcome data (expected <covid folder>#survival|icu or a task .json file)", spec)


def is_outcome_spec(spec: str) -> bool:
    path, target = parse_outcome_spec(spec)
    if path.suffix == ".json" and path.is_file():
        try:
            cfg = json.loads(path.read_text()[:100000])
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return False
        return isinstance(cfg, dict) and "target" in cfg and "fields" in cfg
    return bool(target) and path.is_dir() and (path / "annotations.json").is_file()
