"""How data from another site differ from the training data, feature by feature, each with its statistic and the
threshold that flags it; and whether recalibrating on a small labelled sample of the new site restores calibration.

The statistics and why these thresholds:

* **Per-case features** (image size and spacing per axis, intensity mean / sd / 1st / 99th percentile, prevalence of
  each class): the two-sample Kolmogorov-Smirnov test (scipy ``ks_2samp``) between the training cases and the new
  ones. A feature is flagged when its p-value is below ``alpha / m`` (Bonferroni over the ``m`` features tested,
  ``alpha`` = 0.01 by default), so that a report of ~15 features raises a false flag on at most 1% of same-site
  data sets. The Wasserstein distance (scipy) is shown beside it in training standard deviations, as the size of
  the shift the test detected. When the new cases are too few for the test ever to reach that threshold (a single
  study against a few hundred training cases), the statistic is instead the share of new cases outside the training
  range, flagged above one half.
* **Pooled intensity distribution** (raw, and after a per-image z-score): with millions of voxels every difference
  is "significant", so the effect size decides: the population stability index over the training deciles, flagged
  above 0.25, the usual rule (Siddiqi 2006: < 0.1 no shift, 0.1-0.25 moderate, > 0.25 major).
* **Modality, channels and spatial dimensions**: flagged when both are known and differ.

Temperature scaling (Guo et al. 2017, ``calibration.TemperatureScaler``) is fitted on ``n`` labelled cases of the new
site; the ECE is reported before and after on the remaining cases, never on the cases it was fitted on. Segmentation
(:func:`recalibration`): the first ``n`` cases, per-pixel top-label ECE. Classification and outcome
(:func:`case_recalibration`): ``n`` cases drawn at random by patient (one patient's images stay on one side), the
evaluation's own ECE (:mod:`medsight.evaluation.calibration`: positive-class for binary, top-label for multi-class,
pooled over labels for multi-label; equal-mass bins) with bootstrap CIs, since a few dozen scored cases leave it
uncertain.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup
from scipy import stats

from medsight.errors import MedsightError
from medsight.evaluation.calibration import (
    TemperatureScaler,
    calibration_report,
    calibration_target,
    expected_calibration_error,
)

ALPHA = 0.01
PSI_THRESHOLD = 0.25
ECE_BINS = 15
#: With too few new cases for any KS test to reach its threshold (one study against a few hundred training cases
#: cannot), a feature is flagged when more than this share of the new cases lies outside the training range.
RANGE_SHARE = 0.5
#: Pixels drawn per case to fit the temperature and to measure the ECE of a segmentation.
PIXELS_PER_CASE = 20000


@dataclass
class FeatureShift:
    """One feature compared: the statistic, its value, the threshold that flags it, and the two sides."""

    feature: str
    statistic: str
    value: float
    threshold: float
    flagged: bool
    p_value: float | None = None
    wasserstein_sd: float | None = None
    reference: str = ""
    current: str = ""
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def _summary(values: np.ndarray) -> str:
    if values.size == 0:
        return "—"
    lo, med, hi = np.percentile(values, [0, 50, 100])
    return f"median {med:.4g} (range {lo:.4g}–{hi:.4g}, n={values.size})"


def _ks_can_flag(n_reference: int, n_current: int, threshold: float) -> bool:
    """Whether two fully separated samples of these sizes would reach p < threshold (else KS can never flag)."""
    return bool(stats.ks_2samp(np.zeros(n_reference), np.ones(n_current)).pvalue < threshold)


def psi(reference_quantiles: Sequence[float], current_quantiles: Sequence[float], bins: int = 10) -> float:
    """Population stability index of the current distribution over the reference's ``bins`` equal-mass bins, both
    given as quantile sketches (``q[k]`` = the ``k``-th percentile)."""
    ref = np.asarray(reference_quantiles, float)
    cur = np.asarray(current_quantiles, float)
    levels = np.linspace(0, 1, ref.size)
    edges = np.interp(np.linspace(0, 1, bins + 1)[1:-1], levels, ref)
    cdf = np.interp(edges, cur, np.linspace(0, 1, cur.size), left=0.0, right=1.0)
    shares = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    expected = np.full(bins, 1.0 / bins)
    shares = np.clip(shares, 1e-4, None)  # an empty bin would make the index infinite; 1e-4 is the usual floor
    return float(np.sum((shares - expected) * np.log(shares / expected)))


def compare(
    reference: dict[str, Any], current: dict[str, Any], alpha: float = ALPHA, psi_threshold: float = PSI_THRESHOLD
) -> list[FeatureShift]:
    """Every feature both fingerprints hold, compared (see the module docstring for the statistics)."""
    out: list[FeatureShift] = []
    rm, cm = str(reference.get("modality", "unknown")), str(current.get("modality", "unknown"))
    known = {"", "unknown"}
    out.append(
        FeatureShift(
            "modality",
            "match",
            float(rm.upper() != cm.upper()),
            0.5,
            rm not in known and cm not in known and rm.upper() != cm.upper(),
            reference=rm,
            current=cm,
            note="" if rm not in known and cm not in known else "not compared: one side's modality is unknown",
        )
    )
    rc, cc = reference.get("n_channels", []), current.get("n_channels", [])
    out.append(
        FeatureShift(
            "channels", "match", float(rc != cc), 0.5, bool(rc and cc and rc != cc), reference=str(rc), current=str(cc)
        )
    )
    rd, cd = reference.get("spatial_dims", []), current.get("spatial_dims", [])
    if rd and cd:  # a 3D series for a 2D model (or the reverse) may share every size and intensity compared
        out.append(
            FeatureShift("spatial dims", "match", float(rd != cd), 0.5, rd != cd, reference=str(rd), current=str(cd))
        )
    names = [k for k in reference["cases"] if k in current["cases"]]
    m = max(len(names), 1)
    for name in names:
        r = np.asarray(reference["cases"][name], float)
        c = np.asarray(current["cases"][name], float)
        if r.size == 0 or c.size == 0:
            continue
        sd = float(r.std())
        w = float(stats.wasserstein_distance(r, c))
        if not _ks_can_flag(r.size, c.size, alpha / m):
            span = float(r.max() - r.min())
            tol = 1e-6 * max(span, abs(float(r.max())), 1.0)
            share = float(np.mean((c < r.min() - tol) | (c > r.max() + tol)))
            out.append(
                FeatureShift(
                    name,
                    "outside training range",
                    share,
                    RANGE_SHARE,
                    share > RANGE_SHARE,
                    wasserstein_sd=w / sd if sd > 0 else (0.0 if w == 0 else math.inf),
                    reference=_summary(r),
                    current=_summary(c),
                    note=f"{c.size} new case(s) are too few for a KS test to reach p < {alpha / m:.2g}: the share of "
                    "new cases outside the training range is shown instead",
                )
            )
            continue
        test = stats.ks_2samp(r, c)
        out.append(
            FeatureShift(
                name,
                "KS",
                float(test.statistic),
                alpha / m,
                bool(test.pvalue < alpha / m),
                p_value=float(test.pvalue),
                wasserstein_sd=w / sd if sd > 0 else (0.0 if w == 0 else math.inf),
                reference=_summary(r),
                current=_summary(c),
                note="flagged when p < threshold (Bonferroni over the per-case features)",
            )
        )
    for key, label in (("intensity_quantiles", "intensity (raw)"), ("standardised_quantiles", "intensity (z-scored)")):
        if key in reference and key in current:
            value = psi(reference[key], current[key])
            rq, cq = np.asarray(reference[key]), np.asarray(current[key])
            out.append(
                FeatureShift(
                    label,
                    "PSI",
                    value,
                    psi_threshold,
                    value > psi_threshold,
                    reference=f"median {rq[rq.size // 2]:.4g} (1st–99th pct {rq[1]:.4g}–{rq[-2]:.4g})",
                    current=f"median {cq[cq.size // 2]:.4g} (1st–99th pct {cq[1]:.4g}–{cq[-2]:.4g})",
                    note="over the training deciles; > 0.25 is a major shift",
                )
            )
    return out


# ----------------------------------------------------------------------------------------------- recalibration


def recalibration(
    probs: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    n_fit: int,
    rois: Sequence[np.ndarray | None] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Temperature scaling fitted on the first ``n_fit`` cases (per-pixel probabilities ``(K, *spatial)`` and label
    maps), top-label ECE before and after on the other cases. Pixels are drawn per case (inside the ROI when given)."""
    if n_fit < 1:
        raise MedsightError("--recalibrate takes the number of labelled cases to fit on (at least 1)")
    if len(probs) < n_fit + 1:
        raise MedsightError(
            f"--recalibrate {n_fit} needs more than {n_fit} labelled cases (the rest are scored); got {len(probs)}"
        )
    rng = np.random.default_rng(seed)

    def pixels(idx: range) -> tuple[np.ndarray, np.ndarray]:
        logits, ys = [], []
        for i in idx:
            p = np.asarray(probs[i], np.float64).reshape(probs[i].shape[0], -1)
            y = np.asarray(labels[i]).ravel()
            keep = np.arange(y.size)
            roi = rois[i] if rois is not None else None
            if roi is not None:
                keep = np.flatnonzero(np.asarray(roi).ravel())
            if keep.size > PIXELS_PER_CASE:
                keep = rng.choice(keep, PIXELS_PER_CASE, replace=False)
            logits.append(np.log(np.clip(p[:, keep].T, 1e-7, 1.0)))
            ys.append(y[keep])
        return np.concatenate(logits), np.concatenate(ys)

    fit_logits, fit_y = pixels(range(n_fit))
    test_logits, test_y = pixels(range(n_fit, len(probs)))
    scaler = TemperatureScaler().fit(fit_logits, fit_y)

    def ece(logits: np.ndarray, t: float) -> float:
        z = logits / t
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return expected_calibration_error(p.argmax(1) == test_y, p.max(1), n_bins=ECE_BINS)

    before, after = ece(test_logits, 1.0), ece(test_logits, scaler.temperature_)
    return {
        "n_fit": n_fit,
        "n_scored": len(probs) - n_fit,
        "temperature": scaler.temperature_,
        "ece_before": before,
        "ece_after": after,
        "restores_calibration": bool(after < before),
        "definition": f"top-label ECE over pixels ({PIXELS_PER_CASE} drawn per case, inside the ROI when there is "
        f"one), {ECE_BINS} bins; temperature fitted by NLL on the first {n_fit} case(s), ECE on the other "
        f"{len(probs) - n_fit}",
    }


def _fit_cases(n: int, n_fit: int, groups: Sequence[Any] | None, seed: int) -> np.ndarray:
    """A mask of the cases to fit on: whole patients drawn at random until at least ``n_fit`` cases are in."""
    units = np.asarray(list(groups)) if groups is not None else np.arange(n)
    chosen = np.zeros(n, bool)
    for unit in np.random.default_rng(seed).permutation(np.unique(units)):
        if chosen.sum() >= n_fit:
            break
        chosen |= units == unit
    return chosen


def case_recalibration(
    probs: np.ndarray,
    labels: np.ndarray,
    n_fit: int,
    task_type: str,
    positive_index: int | None = None,
    groups: Sequence[Any] | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Temperature scaling of per-case probabilities ``(N, K)`` (as the deployed model gives them, its own
    calibration applied) fitted on ``n_fit`` cases of the new site drawn by patient (``groups``), the ECE before and
    after on the other cases with 95% bootstrap CIs. Why on the deployed probabilities: "before" is what the site
    would get today; the fitted temperature is the correction on top of the bundle's."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels)
    if n_fit < 1:
        raise MedsightError("--recalibrate takes the number of labelled cases to fit on (at least 1)")
    if len(probs) < n_fit + 1:
        raise MedsightError(
            f"--recalibrate {n_fit} needs more than {n_fit} labelled cases (the rest are scored); got {len(probs)}"
        )
    fit = _fit_cases(len(probs), n_fit, groups, seed)
    if fit.all():
        raise MedsightError(f"--recalibrate {n_fit}: drawing whole patients left no case to score; give a smaller N")
    multilabel = task_type == "multilabel"
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    # logits up to a per-case constant, which neither softmax nor the fitted temperature sees
    logits = np.log(p) - np.log1p(-p) if multilabel else np.log(p)
    scaler = TemperatureScaler(multilabel=multilabel).fit(logits[fit], labels[fit])
    t = scaler.temperature_
    z = logits[~fit] / t
    if multilabel:
        after = 1.0 / (1.0 + np.exp(-z))
    else:
        after = np.exp(z - z.max(axis=1, keepdims=True))
        after /= after.sum(axis=1, keepdims=True)
    scored = labels[~fit]
    y, before_p, kind = calibration_target(task_type, scored, probs[~fit], positive_index)
    _, after_p, _ = calibration_target(task_type, scored, after, positive_index)
    report = calibration_report(y, before_p, after_p, kind, n_boot, scored if not multilabel else None, t, seed)
    ece_before, ece_after = report["before"]["ece"], report["after"]["ece"]
    n_scored = int((~fit).sum())
    return {
        "n_fit": int(fit.sum()),
        "n_scored": n_scored,
        "temperature": t,
        "ece_before": ece_before["value"],
        "ece_after": ece_after["value"],
        "ece_before_ci95": ece_before["ci95"],
        "ece_after_ci95": ece_after["ci95"],
        "brier_before": report["before"]["brier"]["value"],
        "brier_after": report["after"]["brier"]["value"],
        "restores_calibration": bool(ece_after["value"] < ece_before["value"]),
        "ece_kind": kind,
        "bins": report["bins"],
        "definition": f"{kind} ECE ({report['ece_definition']}), {report['bins']['n_bins']} equal-mass bins, 95% "
        f"bootstrap CIs over {n_boot} resamples; a temperature on top of the bundle's calibration fitted by NLL "
        f"on {int(fit.sum())} case(s) drawn at random by patient, ECE before (the deployed probabilities) and "
        f"after on the other {n_scored}",
    }


# ----------------------------------------------------------------------------------------------- the report


def shift_report(
    reference: dict[str, Any],
    current: dict[str, Any],
    *,
    reference_source: str,
    current_source: str,
    external: dict[str, Any] | None = None,
    internal: dict[str, Any] | None = None,
    internal_source: str = "",
    recalibrated: dict[str, Any] | None = None,
    alpha: float = ALPHA,
    psi_threshold: float = PSI_THRESHOLD,
) -> dict[str, Any]:
    """The shift report as JSON: every feature compared, what is flagged, the metrics side by side."""
    features = compare(reference, current, alpha, psi_threshold)
    flagged = [f.feature for f in features if f.flagged]
    metrics: list[dict[str, Any]] = []
    for key in sorted(set(external or {}) | set(internal or {})):
        ext, inn = (external or {}).get(key), (internal or {}).get(key)
        if isinstance(ext, dict | float | int) or isinstance(inn, dict | float | int):
            metrics.append({"metric": key, "external": _metric(ext), "internal": _metric(inn)})
    return {
        "reference": {"source": reference_source, "n_cases": reference["n_cases"]},
        "current": {"source": current_source, "n_cases": current["n_cases"]},
        "shifted": bool(flagged),
        "flagged": flagged,
        "features": [f.to_json() for f in features],
        "thresholds": {
            "ks_alpha": alpha,
            "ks_rule": "p < alpha / number of per-case features (Bonferroni)",
            "psi": psi_threshold,
            "psi_rule": "PSI over the training deciles above the threshold (Siddiqi 2006: > 0.25 is a major shift)",
        },
        "metrics": metrics,
        "internal_source": internal_source,
        "recalibration": recalibrated,
    }


def _metric(m: Any) -> dict[str, Any] | None:
    if isinstance(m, dict) and "value" in m:
        return {"value": m.get("value"), "ci95": m.get("ci95")}
    if isinstance(m, int | float):
        return {"value": float(m), "ci95": None}
    return None


def _fmt(m: dict[str, Any] | None) -> str:
    if not m or m.get("value") is None:
        return "—"
    ci = m.get("ci95")
    if ci and ci[0] is not None:
        return f"{m['value']:.4f} ({ci[0]:.4f}–{ci[1]:.4f})"
    return f"{m['value']:.4f}"


def render_html(report: dict[str, Any]) -> str:
    """``shift.html``: the report for a person, self-contained."""
    from medsight.evaluation.card import Section
    from medsight.evaluation.card import render_html as card_html

    rows: list[list[Any]] = [
        ["feature", "statistic", "value", "threshold", "p", "Wasserstein (sd)", "training", "new site", "flag"]
    ]
    for f in report["features"]:
        flag = Markup("<span class='flag'>shifted</span>") if f["flagged"] else "no"
        rows.append(
            [
                f["feature"],
                f["statistic"],
                "—" if f["value"] is None else f"{f['value']:.4g}",
                f"{f['threshold']:.3g}",
                "—" if f["p_value"] is None else f"{f['p_value']:.2g}",
                "—" if f["wasserstein_sd"] is None else f"{f['wasserstein_sd']:.3g}",
                f["reference"],
                f["current"],
                flag,
            ]
        )
    sections = [
        Section(
            "What differs",
            "Each feature of the new data compared with the training fingerprint. "
            + html.escape(report["thresholds"]["ks_rule"])
            + f" (alpha {report['thresholds']['ks_alpha']}); "
            + html.escape(report["thresholds"]["psi_rule"])
            + ".",
            rows,
        )
    ]
    if report["metrics"]:
        table: list[list[Any]] = [["metric", "new site", f"internal ({report['internal_source'] or 'bundle'})"]]
        table += [[m["metric"], _fmt(m["external"]), _fmt(m["internal"])] for m in report["metrics"]]
        sections.append(Section("Metrics beside the internal ones", "95% CIs where computed.", table))
    rec = report.get("recalibration")
    if rec:
        sections.append(
            Section(
                "Would recalibration restore calibration?",
                html.escape(rec["definition"]) + ".",
                [
                    ["temperature", "ECE before", "ECE after", "restores"],
                    [
                        f"{rec['temperature']:.3f}",
                        _fmt({"value": rec["ece_before"], "ci95": rec.get("ece_before_ci95")}),
                        _fmt({"value": rec["ece_after"], "ci95": rec.get("ece_after_ci95")}),
                        "yes" if rec["restores_calibration"] else "no",
                    ],
                ],
            )
        )
    verdict = (
        f"<span class='flag'>Shifted</span>: {', '.join(html.escape(f) for f in report['flagged'])}."
        if report["shifted"]
        else "No feature crosses its threshold."
    )
    intro = (
        f"New data: {html.escape(report['current']['source'])} ({report['current']['n_cases']} cases) against the "
        f"training fingerprint of {html.escape(report['reference']['source'])} "
        f"({report['reference']['n_cases']} cases). " + verdict
    )
    return card_html("Shift report", intro, sections)


def write_shift_report(folder: Path, report: dict[str, Any]) -> Path:
    """``shift.json`` and ``shift.html`` in ``folder`` (each written atomically); returns the HTML path."""
    from medsight.io.atomic import write_json, write_text

    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "shift.json", report)
    return write_text(folder / "shift.html", render_html(report))
