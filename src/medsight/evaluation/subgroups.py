"""Subgroup audit with fairlearn's MetricFrame: per-group metrics with bootstrap CIs and the largest gaps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame
from sklearn.metrics import roc_auc_score

MIN_GROUP = 10


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    return float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else float("nan")


def _sens(y: np.ndarray, p: np.ndarray) -> float:
    pos = y == 1
    return float(np.mean(p[pos] == 1)) if pos.any() else float("nan")


def _spec(y: np.ndarray, p: np.ndarray) -> float:
    neg = y == 0
    return float(np.mean(p[neg] == 0)) if neg.any() else float("nan")


def _acc(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(y == p))


SCORE_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"auc": _auc}
DECISION_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "sensitivity": _sens,
    "specificity": _spec,
    "accuracy": _acc,
}


def group_column(values: pd.Series) -> pd.Series:
    """Numeric attributes with many values (age) become bands; others are used as they are."""
    if pd.api.types.is_numeric_dtype(values) and values.nunique() > 8:
        if values.name and "age" in str(values.name).lower():
            bins = [-np.inf, 18, 40, 60, 80, np.inf]
            labels = ["<18", "18-39", "40-59", "60-79", "80+"]
            return pd.cut(values, bins=bins, labels=labels, right=False).astype(str)
        return pd.qcut(values, q=4, duplicates="drop").astype(str)
    return values.astype(str).where(values.notna(), "missing")


def audit(
    y: np.ndarray,
    score: np.ndarray,
    decision: np.ndarray,
    attributes: pd.DataFrame,
    n_boot: int = 300,
    seed: int = 0,
) -> dict[str, Any]:
    """For each attribute column: per-group metrics with CIs, and the largest between-group gap per metric.

    A gap is flagged when its bootstrap 95% CI excludes zero. Groups under ``MIN_GROUP`` samples are
    reported but not used for gaps.
    """
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {}
    for column in attributes.columns:
        groups = group_column(attributes[column].reset_index(drop=True))
        if groups.nunique() < 2:
            continue
        frame_s = MetricFrame(metrics=SCORE_METRICS, y_true=y, y_pred=score, sensitive_features=groups)
        frame_d = MetricFrame(metrics=DECISION_METRICS, y_true=y, y_pred=decision, sensitive_features=groups)
        by_group = pd.concat([frame_s.by_group, frame_d.by_group], axis=1)
        counts = groups.value_counts()
        names = [g for g in by_group.index if counts.get(g, 0) >= 1]
        boot: dict[str, dict[str, list[float]]] = {g: {m: [] for m in by_group.columns} for g in names}
        gaps_boot: dict[str, list[float]] = {m: [] for m in by_group.columns}
        index = {g: np.flatnonzero(groups.to_numpy() == g) for g in names}
        big = [g for g in names if counts[g] >= MIN_GROUP]
        for _ in range(n_boot):
            values: dict[str, dict[str, float]] = {}
            for g in names:
                ix = rng.choice(index[g], size=len(index[g]), replace=True)
                vals = {m: f(y[ix], score[ix]) for m, f in SCORE_METRICS.items()}
                vals.update({m: f(y[ix], decision[ix]) for m, f in DECISION_METRICS.items()})
                values[g] = vals
                for m, v in vals.items():
                    boot[g][m].append(v)
            for m in gaps_boot:
                vs = [values[g][m] for g in big if not np.isnan(values[g][m])]
                if len(vs) >= 2:
                    gaps_boot[m].append(max(vs) - min(vs))
        groups_out = {
            str(g): {
                "n": int(counts[g]),
                **{m: {"value": _f(by_group.loc[g, m]), "ci95": _ci(boot[g][m])} for m in by_group.columns},
            }
            for g in names
        }
        gaps = {}
        for m in by_group.columns:
            vals = {g: by_group.loc[g, m] for g in big if not pd.isna(by_group.loc[g, m])}
            if len(vals) < 2:
                continue
            hi, lo = max(vals, key=lambda g: vals[g]), min(vals, key=lambda g: vals[g])
            ci = _ci(gaps_boot[m])
            # The CI of |max - min| is positive by construction; test the signed difference hi - lo instead.
            diff = [a - b for a, b in zip(boot[hi][m], boot[lo][m], strict=True) if not (np.isnan(a) or np.isnan(b))]
            dci = _ci(diff)
            gaps[m] = {
                "gap": _f(vals[hi] - vals[lo]),
                "highest": str(hi),
                "lowest": str(lo),
                "ci95": dci,
                "flagged": bool(dci[0] is not None and dci[0] > 0),
                "max_gap_ci95": ci,
            }
        report[str(column)] = {"groups": groups_out, "gaps": gaps, "min_group_for_gaps": MIN_GROUP}
    return report


def _f(v: object) -> float | None:
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if np.isnan(x) else x


def _ci(values: list[float]) -> list[float | None]:
    arr = np.asarray([v for v in values if not np.isnan(v)], float)
    if arr.size == 0:
        return [None, None]
    return [float(np.percentile(arr, 2.5)), float(np.percentile(arr, 97.5))]
