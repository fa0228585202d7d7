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
import difflib
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsight.data.splits import SPLIT_SEED, assert_disjoint_patients, patient_split
from medsight.errors import MedsightError

log = logging.getLogger("medsight")

MISSING = "missing"
#: What a table writes for "not recorded" (compared stripped and case-insensitively): a numeric field or an outcome
#: holding one of these is missing, not a value. Anything else that is not a number is refused in training.
MISSING_TOKENS = frozenset(
    {"", "na", "n/a", "nan", "null", "none", "missing", "unknown", "not recorded", "not known", "?", "-", "--"}
)
_DECIMAL_COMMA = re.compile(r"^[+-]?\d*,\d+$")

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
    "survival": {"column": "survival", "positive": ["N"], "negative": ["Y"], "unknown": ["?"], "name": "died"},
    "icu": {
        "column": "went_icu",
        "positive": ["Y"],
        "negative": ["N"],
        "unknown": ["?", "Would have been stated"],
        "name": "went to ICU",
    },
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

    def describe(self, frame: pd.DataFrame) -> list[tuple[list[str], dict[str, str]]]:
        """Per row of ``frame``: the fields the model takes as missing (what ``transform`` flags) and the fields
        whose value it cannot use, each with why and what was done instead (text in a numeric field: used as
        missing; a category never seen in training: encoded as none of the known ones)."""
        n = len(frame)
        out: list[tuple[list[str], dict[str, str]]] = [([], {}) for _ in range(n)]
        for f in self.fields:
            if f.name not in frame:
                for missing, _ in out:
                    missing.append(f.name)
                continue
            text = _text(frame[f.name]).tolist()
            if f.kind == "numeric":
                bad = unreadable_numbers(frame[f.name]).tolist()
                for k, value in enumerate(text):
                    if bad[k]:
                        out[k][1][f.name] = f"{_shown(value)} is not a number{_comma_hint([value])}; used as missing"
                    if bad[k] or value.lower() in MISSING_TOKENS:
                        out[k][0].append(f.name)
            else:
                known = self.categories_[f.name]
                for k, value in enumerate(categorical(frame[f.name]).tolist()):
                    if value == MISSING:
                        out[k][0].append(f.name)
                    elif value not in known:
                        listed = ", ".join(repr(c) for c in known[:10]) + (", ..." if len(known) > 10 else "")
                        out[k][1][f.name] = (
                            f"{_shown(value)} is a category not seen in training (known: {listed or 'none'}); "
                            "encoded as none of them"
                        )
        return out


def _text(values: pd.Series) -> pd.Series:
    """Each value as stripped text ("" for None/NaN)."""
    return values.astype(object).where(values.notna(), "").map(lambda x: str(x).strip())


def _shown(value: str, width: int = 30) -> str:
    """A value quoted for a message, cut to ``width`` characters."""
    return repr(value if len(value) <= width else value[:width] + "...")


def _comma_hint(values: list[str]) -> str:
    return " (a decimal comma? write 72.5, not 72,5)" if any(_DECIMAL_COMMA.match(v) for v in values) else ""


def numeric(values: pd.Series) -> pd.Series:
    """Numbers; missing markers (:data:`MISSING_TOKENS`), text and non-finite values become NaN (see
    :func:`unreadable_numbers` for the text, which training refuses and predict reports)."""
    text = _text(values)
    parsed = pd.to_numeric(text.where(~text.str.lower().isin(MISSING_TOKENS), np.nan), errors="coerce").astype(float)
    return parsed.where(np.isfinite(parsed), np.nan)


def unreadable_numbers(values: pd.Series) -> pd.Series:
    """True where a value is neither a finite number nor a missing marker ("72,5", "eighty", "inf")."""
    text = _text(values)
    return numeric(values).isna() & ~text.str.lower().isin(MISSING_TOKENS)


def categorical(values: pd.Series) -> pd.Series:
    return _text(values).map(lambda x: x or MISSING)


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


@dataclass(frozen=True)
class _Source:
    """Where the rows come from, for messages: the file errors name, the table's name and how a row is pointed at
    (CSV lines count the header, so row index 0 is line 2)."""

    path: str
    table: str
    unit: str = "line"
    offset: int = 2

    def rows(self, index: Any) -> str:
        shown = [str(int(i) + self.offset) for i in index]
        return f"{self.unit} {', '.join(shown[:10])}" + (" ..." if len(shown) > 10 else "")


_PLAIN_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _same_value(value: str, listed: str) -> bool:
    """The same outcome written another way: other letter case ("y" for "Y") or an equal number ("1.0" for "1")."""
    if value.casefold() == listed.casefold():
        return True
    return bool(_PLAIN_NUMBER.match(value) and _PLAIN_NUMBER.match(listed)) and float(value) == float(listed)


def _listed(target: dict[str, Any], key: str, src: _Source, required: bool = True) -> list[str]:
    values = target.get(key, None if required else [])
    if isinstance(values, str | int | float):
        values = [values]
    if not isinstance(values, list) or (required and not values):
        raise MedsightError(f'the target\'s "{key}" must be a list of the values that mean it', src.path)
    return [str(x).strip() for x in values]


def _select(raw: pd.DataFrame, target: dict[str, Any], src: _Source, excluded: dict[str, int]) -> pd.DataFrame:
    """The rows with a recorded outcome, ``__y`` 1 where it happened. A value the target lists is read as listed; one
    written another way (letter case, an equal number: "1.0" for "1") is read as the listed one, and said; a missing
    marker (:data:`MISSING_TOKENS`) or a value listed under ``unknown`` is "not recorded" (left out and counted);
    any other value is refused, naming it, so that no recorded outcome is dropped unseen."""
    col = str(target["column"])
    if col not in raw:
        raise MedsightError(f"outcome column {col!r} is not in {src.table}{_did_you_mean(col, raw.columns)}", src.path)
    pos, neg = _listed(target, "positive", src), _listed(target, "negative", src)
    unknown = _listed(target, "unknown", src, required=False)
    both = sorted(set(pos) & set(neg))
    if both:
        raise MedsightError(f"outcome value(s) {both} listed as both positive and negative", src.path)
    text = _text(raw[col])
    code: dict[str, int | None] = {}  # value -> 1, 0, or None (not recorded)
    unlisted: list[str] = []
    for value in sorted(set(text)):
        exact = [c for c, xs in ((1, pos), (0, neg), (None, unknown)) if value in xs]
        if exact:
            code[value] = exact[0]
            continue
        if value.lower() in MISSING_TOKENS:
            code[value] = None
            continue
        alike = [(c, x) for c, xs in ((1, pos), (0, neg), (None, unknown)) for x in xs if _same_value(value, x)]
        if len({c for c, _ in alike}) == 1:
            code[value] = alike[0][0]
            log.warning(
                "%s: outcome column %r: %d row(s) hold %r, read as the listed %r",
                src.table,
                col,
                int((text == value).sum()),
                value,
                alike[0][1],
            )
        else:
            unlisted.append(value)
    if unlisted:
        rows = np.flatnonzero(text.isin(unlisted).to_numpy())
        shown = ", ".join(_shown(v) for v in unlisted[:5]) + (", ..." if len(unlisted) > 5 else "")
        raise MedsightError(
            f"outcome column {col!r} of {src.table}: {len(rows)} row(s) hold value(s) the target does not list "
            f"({shown}; {src.rows(raw.index[rows])}); listed: positive {pos}, negative {neg}; add each value to "
            '"positive", "negative" or "unknown" (not recorded) of the target',
            src.path,
        )
    y = text.map(code)
    known = y.notna().to_numpy()
    excluded["outcome not recorded"] = int((~known).sum())
    if excluded["outcome not recorded"]:
        log.info(
            "%s: %d row(s) with no recorded outcome in column %r left out (counted in the bundle's data.excluded)",
            src.table,
            excluded["outcome not recorded"],
            col,
        )
    out = raw[known].copy()
    out["__y"] = y[known].astype(int).to_numpy()
    return out


def _did_you_mean(name: str, columns: Any) -> str:
    names = [str(c) for c in columns if not str(c).startswith("__")]
    same = [c for c in names if c.casefold() == name.casefold()]
    close = same or difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
    src = _Source(str(ann), ann.name, "image (of those on disk)", 1)
    table = _select(pd.DataFrame(rows), target, src, excluded)
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
        src,
    )


def load_task_file(path: Path) -> OutcomeData:
    """A JSON task file naming a CSV table, its image/patient columns, the target and the declared fields. Every
    column it names must be in the table (a misspelt field would otherwise be a feature missing in every row)."""
    try:
        cfg = json.loads(path.read_text())
        table_path = path.parent / cfg["table"]
        raw = pd.read_csv(table_path, dtype=str, keep_default_na=False)
        image_col, patient_col, target = str(cfg["image_column"]), str(cfg["patient_column"]), cfg["target"]
        target_col = str(target["column"])
        fields = [FieldSpec(str(k), str(v)) for k, v in cfg["fields"].items()]
        attributes = [str(a) for a in cfg.get("attributes", [])]
        time_col = None if cfg.get("time_column") is None else str(cfg["time_column"])
    except (OSError, KeyError, TypeError, AttributeError, json.JSONDecodeError, ValueError) as exc:
        raise MedsightError(f"not a valid outcome task file ({type(exc).__name__}: {exc})", path) from exc
    for f in fields:
        if f.kind not in ("numeric", "categorical"):
            raise MedsightError(f"field {f.name!r}: kind must be numeric or categorical", path)
    src = _Source(str(path), table_path.name)
    named = [(image_col, "image_column"), (patient_col, "patient_column"), (target_col, "target column")]
    named += [(f.name, "field") for f in fields] + ([(time_col, "time_column")] if time_col else [])
    named += [(a, "attribute") for a in attributes]
    absent = [
        f"{c!r} ({role}) is not in {src.table}{_did_you_mean(c, raw.columns)}" for c, role in named if c not in raw
    ]
    if absent:
        columns = ", ".join(repr(str(c)) for c in raw.columns[:20]) + (", ..." if len(raw.columns) > 20 else "")
        raise MedsightError(f"{'; '.join(absent)} (its columns: {columns})", path)
    raw["__image"] = [str(table_path.parent / p) for p in raw[image_col]]
    excluded: dict[str, int] = {}
    table = _select(raw, target, src, excluded)
    return _build(
        path.stem,
        table,
        fields,
        target_col,
        str(target.get("name", target_col)),
        attributes,
        patient_col,
        time_col,
        excluded,
        src,
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
    src: _Source,
) -> OutcomeData:
    """Check the kept rows (numbers that are numbers, times that are not negative; rows without a patient id each a
    patient of their own) and gather them."""
    rows = table.index.to_numpy()  # the table's own rows, for messages
    table = table.reset_index(drop=True)
    if len(table) == 0 or table["__y"].nunique() < 2:
        raise MedsightError("the outcome needs both classes among the rows with a recorded outcome", name)
    for f in fields:
        if f.kind == "numeric" and f.name in table:
            _numbers_or_refuse(table[f.name], f"numeric field {f.name!r} in {src.table}", rows, src)
    time = None
    if time_col and time_col in table:
        _numbers_or_refuse(table[time_col], f"time column {time_col!r} in {src.table}", rows, src)
        time = numeric(table[time_col]).to_numpy(float)
        negative = np.flatnonzero(time < 0)
        if len(negative):
            raise MedsightError(
                f"time column {time_col!r} in {src.table}: {len(negative)} negative time(s) "
                f"({src.rows(rows[negative])}); times to the event or to censoring count from one start "
                "(e.g. days from admission) and cannot be negative",
                src.path,
            )
    ids = _text(table[patient_col])
    blank = (ids == "").to_numpy()
    if blank.any():  # as one patient "", unrelated rows would share a split and count as one person
        log.warning(
            "%s: %d row(s) without a patient id in column %r (%s); each is taken as a patient of its own",
            src.table,
            int(blank.sum()),
            patient_col,
            src.rows(rows[blank]),
        )
    patient_ids = [image if gap else pid for pid, image, gap in zip(ids, table["__image"], blank, strict=True)]
    attrs = pd.DataFrame(index=table.index)
    for a in attributes:
        if a in table:
            attrs[a] = numeric(table[a]) if a == "age" else categorical(table[a])
    return OutcomeData(
        name=name,
        images=[Path(p) for p in table["__image"]],
        table=table[[f.name for f in fields if f.name in table]].copy(),
        y=table["__y"].to_numpy(int),
        patient_ids=[str(p) for p in patient_ids],
        fields=fields,
        target=target,
        target_name=target_name,
        attributes=attrs,
        time=time,
        excluded=excluded,
    )


def _numbers_or_refuse(values: pd.Series, what: str, rows: np.ndarray, src: _Source) -> None:
    """Refuse text where numbers belong: read as missing it would silently empty the column ("72,5" in every row)."""
    bad = unreadable_numbers(values).to_numpy()
    if bad.any():
        shown = list(dict.fromkeys(_text(values)[bad]))
        examples = ", ".join(_shown(v, 20) for v in shown[:3])
        raise MedsightError(
            f"{what}: {int(bad.sum())} value(s) are not numbers ({src.rows(rows[bad])}; e.g. {examples})"
            f"{_comma_hint(shown)}; leave a cell empty (or NA) where nothing was recorded",
            src.path,
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
