"""Paired statistics for two models scored on the same cases, and the rule that turns them into a verdict.

Why paired: both models see the same cases, so case difficulty cancels out of the difference; an unpaired test
(two independent CIs that overlap or not) throws that away and calls real improvements "no difference".

- the paired bootstrap resamples cases once per replicate and scores both models on the same resample
  (:func:`medsight.evaluation.metrics.bootstrap`, stratified by label for classification);
- DeLong's test compares two correlated AUCs (DeLong, DeLong & Clarke-Pearson 1988, in the fast midrank form of
  Sun & Xu 2014). Neither scipy, statsmodels nor scikit-learn implements it, so it is written here on
  ``scipy.stats.rankdata`` and checked against scikit-learn's AUC in the tests;
- McNemar's test compares paired correct/incorrect decisions (statsmodels; exact binomial below 25 discordant pairs);
- the Wilcoxon signed-rank test compares paired per-case scores such as Dice (scipy).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

ALPHA = 0.05
#: How a comparison becomes a verdict (also printed in every report).
RULE = (
    "NEW beats OLD when the 95% CI of the paired difference lies above 0 and the paired test (when there is one) "
    "rejects equality at the 5% level; NEW is worse when both say so below 0; otherwise no difference is shown"
)


def delong(truth: np.ndarray, new: np.ndarray, old: np.ndarray) -> dict[str, Any]:
    """DeLong's test of AUC(new) - AUC(old) for binary ``truth`` (0/1) and two score arrays on the same cases."""
    y = np.asarray(truth).astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        return {"test": "DeLong", "p": None, "note": "needs at least two positive and two negative cases"}
    scores = np.vstack([np.asarray(new, float), np.asarray(old, float)])
    pos, neg = scores[:, y], scores[:, ~y]
    aucs, v10, v01 = [], [], []
    for k in range(2):
        tx, ty = stats.rankdata(pos[k]), stats.rankdata(neg[k])
        tz = stats.rankdata(np.concatenate([pos[k], neg[k]]))
        aucs.append(float((tz[:m].sum() - m * (m + 1) / 2) / (m * n)))
        v10.append((tz[:m] - tx) / n)  # structural components of the positives
        v01.append(1.0 - (tz[m:] - ty) / m)  # ... and of the negatives
    cov = np.cov(np.asarray(v10)) / m + np.cov(np.asarray(v01)) / n
    diff = aucs[0] - aucs[1]
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var <= 0:
        p = 1.0 if diff == 0 else 0.0
        half = 0.0
    else:
        p = float(2 * stats.norm.sf(abs(diff) / np.sqrt(var)))
        half = float(stats.norm.ppf(1 - ALPHA / 2) * np.sqrt(var))
    return {
        "test": "DeLong",
        "auc_new": aucs[0],
        "auc_old": aucs[1],
        "difference": diff,
        "ci95": [diff - half, diff + half],
        "z": None if var <= 0 else float(diff / np.sqrt(var)),
        "p": p,
    }


def mcnemar(correct_new: np.ndarray, correct_old: np.ndarray) -> dict[str, Any]:
    """McNemar's test on paired decisions: do the two models get different cases wrong more often than chance?"""
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    a, b = np.asarray(correct_new, bool), np.asarray(correct_old, bool)
    only_new, only_old = int(np.sum(a & ~b)), int(np.sum(~a & b))
    table = [[int(np.sum(a & b)), only_new], [only_old, int(np.sum(~a & ~b))]]
    exact = only_new + only_old < 25
    result = sm_mcnemar(table, exact=exact, correction=not exact)
    return {
        "test": "McNemar (exact binomial)" if exact else "McNemar (chi-square, continuity-corrected)",
        "only_new_correct": only_new,
        "only_old_correct": only_old,
        "both_correct": table[0][0],
        "both_wrong": table[1][1],
        "statistic": float(result.statistic),
        "p": float(result.pvalue),
    }


def wilcoxon(new: np.ndarray, old: np.ndarray) -> dict[str, Any]:
    """Wilcoxon signed-rank test of paired per-case scores (zero differences dropped, as Wilcoxon's original)."""
    d = np.asarray(new, float) - np.asarray(old, float)
    nonzero = int(np.sum(d != 0))
    base = {"test": "Wilcoxon signed-rank", "n_pairs": int(d.size), "n_nonzero": nonzero}
    if nonzero == 0:
        return base | {"statistic": None, "p": 1.0, "note": "every case scored the same with both models"}
    result = stats.wilcoxon(new, old, zero_method="wilcox")
    return base | {
        "statistic": float(result.statistic),
        "p": float(result.pvalue),
        "median_difference": float(np.median(d)),
    }


def verdict(metric: str, difference: dict[str, Any], test: dict[str, Any] | None) -> dict[str, Any]:
    """The verdict on ``metric`` by :data:`RULE`, with a sentence that says it plainly."""
    lo, hi = difference["ci95"]
    p = None if test is None else test.get("p")
    significant = p is None or p < ALPHA
    value = difference["value"]
    if lo is None or hi is None or value is None:
        outcome = "undetermined"
    elif lo > 0 and significant:
        outcome = "better"
    elif hi < 0 and significant:
        outcome = "worse"
    else:
        outcome = "no_difference"
    shown = "" if value is None else f"{metric} difference {value:+.3f}"
    ci = "" if lo is None else f" (95% CI {lo:+.3f} to {hi:+.3f}"
    ci += "" if lo is None else (f"; {test['test']} p = {p:.3g})" if p is not None and test else ")")
    text = {
        "better": f"NEW beats OLD: {shown}{ci}.",
        "worse": f"NEW is worse than OLD: {shown}{ci}.",
        "no_difference": f"No difference shown between NEW and OLD: {shown}{ci}; keep OLD unless there is another "
        "reason to change.",
        "undetermined": f"No verdict: the {metric} difference is undefined on these cases.",
    }[outcome]
    return {"outcome": outcome, "metric": metric, "text": text, "rule": RULE}


def split_bootstrap(boot: dict[str, dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """``{"auc_new", "auc_old", "auc_difference", ...}`` from :func:`bootstrap` as ``{"auc": {"new", "old",
    "difference"}}``."""
    return {m: {part: boot[f"{m}_{part}"] for part in ("new", "old", "difference")} for m in names}
