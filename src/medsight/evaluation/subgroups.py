"""Subgroup audit with fairlearn's MetricFrame: per-group metrics with bootstrap CIs, every pairwise gap tested and
the p-values corrected for the number of groups compared (Holm-Bonferroni, statsmodels ``multipletests``).

Binary classification: AUC, sensitivity, specificity, accuracy (sensitivity is the recall of the positive class).
Multi-class: macro one-vs-rest AUC and accuracy. Segmentation and other per-case scores (:func:`audit_cases`): the
mean per-case value, e.g. Dice by scanner.

Why a correction: with k groups there are k(k-1)/2 pairs, and the largest of them is the one a reader looks at. At
twelve sites of equal quality an uncorrected 5% test finds a "gap" most of the time; Holm keeps the chance of any
false flag (per attribute and metric) at 5%.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from functools import partial
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame
from scipy.stats import norm
from sklearn.metrics import roc_auc_score
from statsmodels.stats.multitest import multipletests

from medsight.errors import MedsightError

log = logging.getLogger("medsight")

MIN_GROUP = 10
ALPHA = 0.05
CORRECTION = (
    "Holm-Bonferroni over all pairwise comparisons of this attribute's groups (of at least {min_group} cases), "
    "per metric; p from the bootstrap standard error of the difference (normal approximation)"
)

#: A metric of the cases at the given indices.
IndexMetric = Callable[[np.ndarray], float]


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    return float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else float("nan")


def _macro_ovr_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean one-vs-rest AUC over the classes that have both positives and negatives in these cases."""
    aucs = [_auc((y == c).astype(int), probs[:, c]) for c in range(probs.shape[1])]
    defined = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(defined)) if defined else float("nan")


def _recall(y: np.ndarray, p: np.ndarray, cls: int) -> float:
    hit = y == cls
    return float(np.mean(p[hit] == cls)) if hit.any() else float("nan")


def classification_metrics(
    y: np.ndarray, score: np.ndarray, decision: np.ndarray, task_type: str
) -> dict[str, IndexMetric]:
    """The audited metrics as functions of case indices. Binary: ``y``/``decision`` are 1 for the positive class and
    ``score`` is p(positive); multi-class: ``score`` holds every class's probability and ``decision`` the class."""
    if task_type == "binary":
        return {
            "auc": lambda ix: _auc(y[ix], score[ix]),
            "sensitivity": lambda ix: _recall(y[ix], decision[ix], 1),
            "specificity": lambda ix: _recall(y[ix], decision[ix], 0),
            "accuracy": lambda ix: float(np.mean(y[ix] == decision[ix])),
        }
    if task_type == "multiclass":
        if score.ndim != 2:
            raise MedsightError("a multi-class subgroup audit needs every class's probability")
        return {
            "auc": lambda ix: _macro_ovr_auc(y[ix], score[ix]),
            "accuracy": lambda ix: float(np.mean(y[ix] == decision[ix])),
        }
    raise MedsightError(f"no subgroup audit for {task_type} classification")


def group_column(values: pd.Series) -> pd.Series:
    """Each case's group: ages become bands, other numeric attributes with many values quartiles, text values are
    compared without the spaces around them and without case (``F``, ``f`` and ``F `` are one group, under the
    spelling most cases use); a blank, ``NA`` or ``unknown`` value is the group ``missing``."""
    values = _as_numbers(_blank_as_missing(values))
    if pd.api.types.is_numeric_dtype(values):
        if _is_age(values.name):
            return _labelled(pd.cut(values, bins=AGE_BINS, labels=AGE_BANDS, right=False))
        if values.nunique() > 8:
            return _labelled(pd.qcut(values, q=4, duplicates="drop"))
        return _labelled(values.map(lambda v: f"{v:g}" if pd.notna(v) else v))
    return _labelled(_one_spelling(values))


AGE_BINS = [-np.inf, 18, 40, 60, 80, np.inf]
AGE_BANDS = ["<18", "18-39", "40-59", "60-79", "80+"]
#: What a table writes for "not recorded" (compared stripped and case-insensitively): the group ``missing``.
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "missing", "unknown", "not recorded", "?", "-"})
#: A DICOM Age String (``045Y``, ``006M``, ``003W``, ``010D``) in years.
_DICOM_AGE = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


def _is_age(name: object) -> bool:
    """Whether a column holds ages: ``age``, ``Age (years)``, ``patient_age``; not ``stage`` or ``image_count``."""
    return "age" in re.split(r"[^a-z]+", str(name or "").lower())


def _blank_as_missing(values: pd.Series) -> pd.Series:
    """Text cells stripped, and those that say "not recorded" (blank, NA, unknown...) missing."""
    if pd.api.types.is_numeric_dtype(values):
        return values
    text = values.map(lambda v: v.strip() if isinstance(v, str) else v)
    said_missing = text.map(lambda v: isinstance(v, str) and v.lower() in MISSING_TOKENS)
    return text.where(~said_missing.astype(bool))


def _as_numbers(values: pd.Series) -> pd.Series:
    """A text column whose every recorded value is a number (an age column with ``unknown`` in it, read as text) as
    numbers, so that it is banded, not split into a group per value; ages may be DICOM Age Strings (``045Y``)."""
    if pd.api.types.is_numeric_dtype(values) or values.notna().sum() == 0:
        return values
    numbers = pd.to_numeric(values, errors="coerce")
    if _is_age(values.name):
        numbers = numbers.fillna(values.map(_dicom_age))
    return numbers if numbers.notna().sum() == values.notna().sum() else values


def _dicom_age(value: object) -> float:
    match = re.fullmatch(r"(\d{1,3})\s*([YMWD])", str(value).strip().upper())
    return float(match.group(1)) * _DICOM_AGE[match.group(2)] if match else float("nan")


def _one_spelling(values: pd.Series) -> pd.Series:
    """Values that differ only in case as one group, named by the spelling most cases use."""
    present = values.dropna()
    counts = present.value_counts()
    usual: dict[str, str] = {}
    for spelling in counts.index:  # most cases first
        usual.setdefault(str(spelling).casefold(), str(spelling))
    return values.map(lambda v: usual[str(v).casefold()] if pd.notna(v) else v)


def _labelled(groups: pd.Series) -> pd.Series:
    """Group names as text, with the cases of no recorded value in the group ``missing``."""
    return groups.astype(object).where(groups.notna(), "missing").astype(str)


def identifying(groups: pd.Series) -> bool:
    """Whether a column's groups pick out single cases (names, dates, file names): most groups of one case, so a
    report of them would name patients, and there is no subgroup to compare."""
    counts = groups.value_counts()
    return len(counts) > 10 and int((counts == 1).sum()) > len(counts) // 2


def audit(
    y: np.ndarray,
    score: np.ndarray,
    decision: np.ndarray,
    attributes: pd.DataFrame,
    n_boot: int = 300,
    seed: int = 0,
    task_type: str = "binary",
) -> dict[str, Any]:
    """Classification audit for each attribute column (see :func:`classification_metrics` for the inputs)."""
    metrics = classification_metrics(np.asarray(y), np.asarray(score), np.asarray(decision), task_type)
    return audit_metrics(metrics, len(y), attributes, n_boot, seed)


def audit_cases(
    values: dict[str, np.ndarray], attributes: pd.DataFrame, n_boot: int = 300, seed: int = 0
) -> dict[str, Any]:
    """Audit of per-case scores (e.g. ``{"dice": per-case Dice}``): each group's mean, its CI and the gaps.
    Cases whose value is undefined (NaN) are left out of the mean and counted as ``n_undefined``."""
    arrays = {k: np.asarray(v, float) for k, v in values.items()}
    n = len(next(iter(arrays.values())))
    metrics: dict[str, IndexMetric] = {k: partial(_mean_defined, a) for k, a in arrays.items()}
    report = audit_metrics(metrics, n, attributes, n_boot, seed)
    for column, rep in report.items():
        groups = group_column(attributes[column].reset_index(drop=True)).to_numpy()
        for g, entry in rep["groups"].items():
            entry["n_undefined"] = {k: int(np.sum(~np.isfinite(a[groups == g]))) for k, a in arrays.items()}
    return report


def audit_metrics(
    metrics: dict[str, IndexMetric], n: int, attributes: pd.DataFrame, n_boot: int = 300, seed: int = 0
) -> dict[str, Any]:
    """For each attribute column: per-group metrics with CIs, every pairwise gap with raw and Holm-corrected
    p-values, and the largest gap per metric, flagged when its corrected p-value is below 0.05.

    Groups under ``MIN_GROUP`` cases are reported but not compared.
    """
    if len(attributes) != n:
        raise MedsightError(f"{len(attributes)} attribute rows for {n} cases")
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {}
    cases = np.arange(n)
    for column in attributes.columns:
        groups = group_column(attributes[column].reset_index(drop=True))
        if groups.nunique() < 2:
            continue
        if identifying(groups):  # the column is named only: its values may be patients' names or birth dates
            log.warning("subgroup audit: column %r has a value per case, not groups: left out", str(column))
            continue
        frame = MetricFrame(
            metrics={m: (lambda yt, yp, f=f: f(np.asarray(yt))) for m, f in metrics.items()},
            y_true=cases,
            y_pred=cases,
            sensitive_features=groups,
        )
        by_group = frame.by_group
        counts = groups.value_counts()
        names = [str(g) for g in by_group.index]
        index = {g: np.flatnonzero(groups.to_numpy() == g) for g in names}
        boot = {g: {m: np.empty(n_boot) for m in metrics} for g in names}
        for b in range(n_boot):
            for g in names:
                ix = rng.choice(index[g], size=len(index[g]), replace=True)
                for m, f in metrics.items():
                    boot[g][m][b] = f(ix)
        point = {g: {m: _f(by_group.loc[g, m]) for m in metrics} for g in names}
        big = [g for g in names if counts[g] >= MIN_GROUP]
        comparisons: dict[str, list[dict[str, Any]]] = {}
        gaps: dict[str, dict[str, Any]] = {}
        for m in metrics:
            comps = _pairwise(m, [g for g in big if point[g][m] is not None], point, boot)
            if not comps:
                continue
            comparisons[m] = comps
            top = max(comps, key=lambda c: abs(c["difference"]))
            hi, lo = top["groups"] if top["difference"] >= 0 else top["groups"][::-1]
            sign = 1.0 if top["difference"] >= 0 else -1.0
            gaps[m] = {
                "gap": abs(top["difference"]),
                "highest": hi,
                "lowest": lo,
                "ci95": sorted(sign * v for v in top["ci95"]) if top["ci95"][0] is not None else [None, None],
                "ci_bonferroni": sorted(sign * v for v in top["ci_bonferroni"])
                if top["ci_bonferroni"][0] is not None
                else [None, None],
                "p_raw": top["p_raw"],
                "p_holm": top["p_holm"],
                "n_comparisons": len(comps),
                "flagged": top["significant"],
            }
        report[str(column)] = {
            "groups": {
                g: {"n": int(counts[g]), **{m: {"value": point[g][m], "ci95": _ci(boot[g][m])} for m in metrics}}
                for g in names
            },
            "comparisons": comparisons,
            "gaps": gaps,
            "min_group_for_gaps": MIN_GROUP,
            "correction": CORRECTION.format(min_group=MIN_GROUP),
        }
    return report


def _pairwise(
    metric: str, groups: list[str], point: dict[str, dict[str, float | None]], boot: dict[str, dict[str, np.ndarray]]
) -> list[dict[str, Any]]:
    """Every pair of ``groups``: the difference, its 95% and Bonferroni-widened CIs, raw and Holm p-values."""
    pairs = list(combinations(sorted(groups), 2))
    if not pairs:
        return []
    level = ALPHA / len(pairs)
    out: list[dict[str, Any]] = []
    for a, b in pairs:
        diff = float(point[a][metric]) - float(point[b][metric])  # type: ignore[arg-type]
        reps = boot[a][metric] - boot[b][metric]
        reps = reps[np.isfinite(reps)]
        se = float(np.std(reps, ddof=1)) if reps.size > 1 else float("nan")
        if np.isnan(se):
            p = float("nan")
        elif se == 0:
            p = 1.0 if diff == 0 else 0.0
        else:
            p = float(2 * norm.sf(abs(diff) / se))
        out.append(
            {
                "groups": [a, b],
                "difference": diff,
                "ci95": _ci(reps),
                "ci_bonferroni": _ci(reps, level),
                "p_raw": p,
            }
        )
    raw = np.asarray([c["p_raw"] for c in out])
    ok = ~np.isnan(raw)
    adjusted = np.full(len(out), np.nan)
    if ok.any():
        adjusted[ok] = multipletests(raw[ok], alpha=ALPHA, method="holm")[1]
    for c, q in zip(out, adjusted, strict=True):
        c["p_holm"] = None if np.isnan(q) else float(q)
        c["p_raw"] = None if np.isnan(c["p_raw"]) else c["p_raw"]
        c["significant"] = bool(c["p_holm"] is not None and c["p_holm"] < ALPHA)
    return out


def _mean_defined(values: np.ndarray, ix: np.ndarray) -> float:
    """The mean of the defined (finite) values at ``ix``; NaN when none is."""
    chosen = values[ix]
    ok = np.isfinite(chosen)
    return float(chosen[ok].mean()) if ok.any() else float("nan")


def _f(v: object) -> float | None:
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if np.isnan(x) else x


def _ci(values: np.ndarray | list[float], alpha: float = ALPHA) -> list[float | None]:
    arr = np.asarray(values, float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return [None, None]
    return [float(np.percentile(arr, 100 * alpha / 2)), float(np.percentile(arr, 100 * (1 - alpha / 2)))]
