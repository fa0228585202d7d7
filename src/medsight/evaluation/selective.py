"""Selective prediction: when the model keeps a case and when it defers it to the radiologist, and the
risk-coverage curve that shows what deferring buys.

Why: a model that says "I am not sure" on its hardest cases and is right on the rest is safer than one that
answers everything. The rule (fitted on validation at the end of training, stored in the bundle, only applied
afterwards):

* defer when the conformal prediction set (:mod:`medsight.evaluation.conformal`) holds more than one label
  ("ambiguous") or none ("no label probable enough");
* defer when the set's single label is not the label decided at the operating point (binary decisions use a
  threshold that need not be 0.5, so the two can disagree near the threshold);
* defer when the calibrated confidence (the probability of the decided label) is below a threshold chosen on
  validation: the lowest threshold (so the most cases kept) at which the validation cases the model keeps, after
  the set rule, have an error rate at or below ``target_error`` (default: the conformal ``alpha``). That
  threshold is an empirical choice on validation, not a guarantee; the test figures say how it held.

Multi-label models (:func:`assess_multilabel`, stored as :class:`MultilabelSelective`): each label has its own
conformal set over {absent, present} (:class:`medsight.evaluation.conformal.MultilabelConformal`); the labels present
for certain are the prediction, and a case is deferred when any label's set is not exactly one answer (or, given the
decisions at the operating point, when a label's certain answer differs from its decision), with a reason naming each
such label. There is no confidence threshold: the per-label sets already say which labels the model cannot tell.

The risk-coverage curve (Geifman & El-Yaniv 2017) ranks cases by confidence, most confident first; at each
confidence threshold it plots the error rate of the kept cases against the share kept. AURC is the mean of the
kept-case error over the ranks (lower is better: errors ranked last, i.e. deferred first, keep it low).
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsight.errors import MedsightError
from medsight.evaluation.card import Figure, Section, fmt
from medsight.evaluation.conformal import (
    DEFAULT_ALPHA,
    MultilabelConformal,
    Score,
    SplitConformal,
    certain,
    present,
    set_sizes,
)

REASON_AMBIGUOUS = "prediction set holds more than one label"
REASON_EMPTY = "prediction set is empty (no label probable enough)"
REASON_DISAGREES = "prediction set's label differs from the decision at the operating point"
REASON_LOW_CONFIDENCE = "confidence below the threshold chosen on validation"
#: An unreachable rule defers every case, including one more confident than any validation case.
REASON_UNREACHABLE = "no confidence threshold met the target error on validation"
#: Multi-label reasons, each written after the label's name ("effusion: both absent and present plausible").
REASON_LABEL_BOTH = "both absent and present plausible"
REASON_LABEL_NEITHER = "neither absent nor present probable enough"
REASON_LABEL_DISAGREES = "certain answer differs from the decision at the operating point"
#: ``selective_prediction.kind`` of a multi-label rule in bundle.json (single-label rules have no ``kind``).
MULTILABEL_KIND = "multilabel"


@dataclass
class DeferralRule:
    """The selective-prediction rule: defer on an ambiguous, empty or disagreeing set, or low confidence."""

    confidence_threshold: float
    target_error: float
    reachable: bool = True
    val_share_kept: float | None = None
    val_error_kept: float | None = None

    def reasons(self, in_set: np.ndarray, decided: int, confidence: float) -> list[str]:
        """Why one case is deferred (empty list: the model keeps it). ``in_set`` is its label-set membership."""
        members = np.flatnonzero(np.asarray(in_set))
        out = []
        if len(members) > 1:
            out.append(REASON_AMBIGUOUS)
        elif len(members) == 0:
            out.append(REASON_EMPTY)
        elif int(members[0]) != int(decided):
            out.append(REASON_DISAGREES)
        if confidence < self.confidence_threshold:
            out.append(REASON_LOW_CONFIDENCE)
        elif not self.reachable:  # the threshold lies just above every validation confidence; a test case may not
            out.append(REASON_UNREACHABLE)
        return out

    def defer(self, sets: np.ndarray, decided: np.ndarray, confidence: np.ndarray) -> np.ndarray:
        """Boolean deferral of every case."""
        return np.asarray([bool(self.reasons(s, d, c)) for s, d, c in zip(sets, decided, confidence, strict=True)])

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": "defer when the conformal set is not exactly the decided label, or confidence (calibrated "
            "probability of the decided label) < confidence_threshold",
            "confidence_threshold": self.confidence_threshold,
            "target_error": self.target_error,
            "threshold_rule": "lowest threshold whose kept validation cases have error <= target_error",
            "reachable": self.reachable,
            "val_share_kept": self.val_share_kept,
            "val_error_kept": self.val_error_kept,
            "chosen_on": "val",
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str | None = None) -> DeferralRule:
        try:
            return cls(
                float(d["confidence_threshold"]),
                float(d["target_error"]),
                bool(d.get("reachable", True)),
                None if d.get("val_share_kept") is None else float(d["val_share_kept"]),
                None if d.get("val_error_kept") is None else float(d["val_error_kept"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MedsightError(f"bundle.json 'selective_prediction.deferral' is incomplete ({exc!r})", where) from exc


def set_rule_keeps(sets: np.ndarray, decided: np.ndarray) -> np.ndarray:
    """Cases the set rule alone keeps: the set is exactly the decided label."""
    s = np.asarray(sets, bool)
    d = np.asarray(decided).astype(int)
    return np.asarray((s.sum(1) == 1) & s[np.arange(len(d)), d])


def fit_deferral(
    sets: np.ndarray, decided: np.ndarray, confidence: np.ndarray, correct: np.ndarray, target_error: float
) -> DeferralRule:
    """Choose the confidence threshold on validation (see the module docstring) and return the rule."""
    if not 0 <= target_error < 1:
        raise MedsightError(f"the deferral target error must lie in [0, 1) (got {target_error})")
    conf, ok = np.asarray(confidence, float), np.asarray(correct, bool)
    candidates = set_rule_keeps(sets, decided)
    n = len(conf)
    for c in np.unique(conf[candidates]):  # ascending: the first that meets the target keeps the most
        kept = candidates & (conf >= c)
        error = 1.0 - float(ok[kept].mean())
        if error <= target_error + 1e-12:
            return DeferralRule(float(c), target_error, True, float(kept.sum() / max(n, 1)), error)
    top = float(conf.max()) if n else 1.0
    return DeferralRule(float(np.nextafter(top, np.inf)), target_error, False, 0.0, None)


@dataclass
class RiskCoverage:
    """The risk-coverage curve: at each confidence threshold (descending), the share kept and their error rate."""

    thresholds: np.ndarray
    coverage: np.ndarray
    risk: np.ndarray
    aurc: float

    def to_json(self) -> dict[str, Any]:
        return {
            "aurc": self.aurc,
            "thresholds": self.thresholds.tolist(),
            "coverage": self.coverage.tolist(),
            "risk": self.risk.tolist(),
        }


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> RiskCoverage:
    """Kept-case error against the share kept, most confident first; tied confidences enter together."""
    conf, ok = np.asarray(confidence, float), np.asarray(correct, bool)
    n = len(conf)
    if n == 0:
        return RiskCoverage(np.zeros(0), np.zeros(0), np.zeros(0), float("nan"))
    if np.isnan(conf).any():
        raise MedsightError(f"{int(np.isnan(conf).sum())} confidence(s) are NaN: the cases cannot be ranked")
    order = np.argsort(-conf, kind="stable")
    errors = np.cumsum(~ok[order])
    ranks = np.arange(1, n + 1)
    sorted_conf = conf[order]
    # one point per distinct confidence: the last rank at which that confidence is still kept
    last = np.flatnonzero(np.r_[sorted_conf[1:] != sorted_conf[:-1], True])
    # Geifman et al.: the mean kept-case error over every rank. Tied cases have no order among themselves, so within
    # a tie the errors are their expectation over the tie's orderings (linear from one tie's end to the next), and
    # the AURC does not depend on the order the cases were given in
    expected = np.interp(ranks, np.r_[0, ranks[last]], np.r_[0, errors[last]])
    aurc = float(np.mean(expected / ranks))
    return RiskCoverage(sorted_conf[last], ranks[last] / n, errors[last] / ranks[last], aurc)


def risk_coverage_plot(curve: RiskCoverage, point: tuple[float, float] | None = None, title: str = "") -> bytes:
    """The curve as a PNG, with the deferral rule's operating point (share kept, error of kept) marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.step(curve.coverage, curve.risk, where="post", label=f"kept cases (AURC {curve.aurc:.3f})")
    if len(curve.risk):
        ax.axhline(curve.risk[-1], ls=":", color="grey", label="error with nothing deferred")
    if point is not None and not np.isnan(point[1]):
        ax.plot([point[0]], [point[1]], "ko", label="deferral rule")
    ax.set(xlabel="share of cases kept (coverage)", ylabel="error rate of kept cases", xlim=(0, 1.02))
    ax.set_title(title or "Risk-coverage (test)")
    ax.legend(fontsize=7, loc="upper left")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


@dataclass
class Assessment:
    """What the selective-prediction rule says about each case: its set, its confidence and why it is deferred."""

    sets: np.ndarray
    confidence: np.ndarray
    reasons: list[list[str]]

    @property
    def defer(self) -> np.ndarray:
        return np.asarray([bool(r) for r in self.reasons])


@dataclass
class SelectivePrediction:
    """Conformal sets plus the deferral rule, both fitted on validation and stored in ``bundle.json``."""

    conformal: SplitConformal
    deferral: DeferralRule

    @classmethod
    def fit(
        cls,
        probs: np.ndarray,
        labels: np.ndarray,
        decided: np.ndarray,
        alpha: float = DEFAULT_ALPHA,
        score: Score = "lac",
        groups: np.ndarray | None = None,
        target_error: float | None = None,
    ) -> SelectivePrediction:
        """Calibrate both on the validation cases (``decided`` = the label chosen at the operating point)."""
        conformal = SplitConformal(alpha, score).fit(probs, labels, groups)
        p, d = np.asarray(probs, float), np.asarray(decided).astype(int)
        confidence = p[np.arange(len(d)), d]
        correct = d == np.asarray(labels).astype(int)
        target = conformal.alpha if target_error is None else target_error
        return cls(conformal, fit_deferral(conformal.predict_sets(p), d, confidence, correct, target))

    def assess(self, probs: np.ndarray, decided: np.ndarray) -> Assessment:
        p, d = np.asarray(probs, float), np.asarray(decided).astype(int)
        sets = self.conformal.predict_sets(p)
        confidence = p[np.arange(len(d)), d]
        reasons = [self.deferral.reasons(s, k, c) for s, k, c in zip(sets, d, confidence, strict=True)]
        return Assessment(sets, confidence, reasons)

    def to_json(self) -> dict[str, Any]:
        return {"conformal": self.conformal.to_json(), "deferral": self.deferral.to_json()}

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str | None = None) -> SelectivePrediction:
        try:
            conformal, deferral = d["conformal"], d["deferral"]
        except (KeyError, TypeError) as exc:
            raise MedsightError(f"bundle.json 'selective_prediction' is incomplete ({exc!r})", where) from exc
        return cls(SplitConformal.from_json(conformal, where), DeferralRule.from_json(deferral, where))


@dataclass
class MultilabelAssessment:
    """A multi-label model's answer per case: each label's set, the labels present for certain, and why the case is
    deferred (a case is deferred when any label is uncertain; its certain labels are still reported)."""

    sets: np.ndarray  # (n, L, 2): "absent" / "present" plausible
    present: np.ndarray  # (n, L): set is exactly {"present"}
    reasons: list[list[str]]

    @property
    def defer(self) -> np.ndarray:
        return np.asarray([bool(r) for r in self.reasons])


def assess_multilabel(
    rule: MultilabelConformal, probs: np.ndarray, names: list[str], decided: np.ndarray | None = None
) -> MultilabelAssessment:
    """Apply a stored per-label conformal rule: every label whose set is not exactly one answer is a reason to defer
    (both answers plausible: ambiguous; neither: no answer probable enough), and so, when ``decided`` ``(n, L)`` (the
    decisions at the operating point) is given, is a certain answer that differs from the label's decision, as
    for single-label models. Nothing is refitted."""
    sets = rule.predict_sets(probs)
    if len(names) != sets.shape[1]:
        raise MedsightError(f"{len(names)} label names for a rule of {sets.shape[1]} labels")
    sure, sure_present = certain(sets), present(sets)
    differs = np.zeros_like(sure) if decided is None else sure & (sure_present != np.asarray(decided, bool))
    reasons = [
        [
            f"{names[k]}: "
            + (
                REASON_LABEL_DISAGREES
                if sure[i, k]
                else REASON_LABEL_BOTH
                if sets[i, k].all()
                else REASON_LABEL_NEITHER
            )
            for k in np.flatnonzero(~sure[i] | differs[i])
        ]
        for i in range(len(sets))
    ]
    return MultilabelAssessment(sets, sure_present, reasons)


def multilabel_confidence(probs: np.ndarray, decided: np.ndarray) -> np.ndarray:
    """``(n,)``: the calibrated probability of the decided answer of each case's least sure label; it ranks
    multi-label cases for the risk-coverage curve (a case is only as sure as its least sure label)."""
    p, d = np.asarray(probs, float), np.asarray(decided, bool)
    if len(p) == 0:
        return np.zeros(0)
    return np.asarray(np.where(d, p, 1.0 - p).min(axis=1))


@dataclass
class MultilabelSelective:
    """The multi-label rule stored in ``bundle.json`` under ``selective_prediction`` (with ``kind: multilabel``):
    per-label conformal sets fitted on validation; applied as :func:`assess_multilabel` with the decisions at the
    operating point."""

    conformal: MultilabelConformal

    @classmethod
    def fit(
        cls,
        probs: np.ndarray,
        labels: np.ndarray,
        alpha: float = DEFAULT_ALPHA,
        groups: np.ndarray | None = None,
    ) -> MultilabelSelective:
        """Calibrate on the validation cases' probabilities and 0/1 labels ``(n, L)`` (optionally patient groups)."""
        return cls(MultilabelConformal(alpha).fit(probs, labels, groups))

    def assess(self, probs: np.ndarray, names: list[str], decided: np.ndarray | None = None) -> MultilabelAssessment:
        return assess_multilabel(self.conformal, probs, names, decided)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": MULTILABEL_KIND,
            "conformal": self.conformal.to_json(),
            "deferral": {
                "rule": "defer when any label's conformal set is not exactly one answer (absent or present), or a "
                "label's certain answer differs from its decision at the operating point",
                "chosen_on": "val",
            },
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str | None = None) -> MultilabelSelective:
        if not isinstance(d, dict) or d.get("kind") != MULTILABEL_KIND or "conformal" not in d:
            raise MedsightError("bundle.json 'selective_prediction' is not a multi-label rule", where)
        return cls(MultilabelConformal.from_json(d["conformal"], where))


def case_metrics(
    assessment: Assessment, labels: np.ndarray, decided: np.ndarray
) -> tuple[Any, dict[str, Any], RiskCoverage]:
    """(metrics of a subset of cases ``fn(indices)`` for a bootstrap, reason counts, risk-coverage curve)."""
    y, d = np.asarray(labels).astype(int), np.asarray(decided).astype(int)
    covered = assessment.sets[np.arange(len(y)), y]
    sizes = set_sizes(assessment.sets)
    defer = assessment.defer
    wrong = d != y

    def fn(ix: np.ndarray) -> dict[str, float]:
        kept, deferred = ix[~defer[ix]], ix[defer[ix]]
        return {
            "coverage": float(covered[ix].mean()),
            "mean_set_size": float(sizes[ix].mean()),
            "share_deferred": float(defer[ix].mean()),
            "error_all": float(wrong[ix].mean()),
            "error_kept": float(wrong[kept].mean()) if len(kept) else float("nan"),
            "error_deferred": float(wrong[deferred].mean()) if len(deferred) else float("nan"),
        }

    reasons: dict[str, int] = {}
    for rs in assessment.reasons:
        for r in rs:
            reasons[r] = reasons.get(r, 0) + 1
    counts = {
        "n": len(y),
        "deferred": int(defer.sum()),
        "set_size_counts": {str(k): int((sizes == k).sum()) for k in np.unique(sizes)},
        "reasons": reasons,
    }
    return fn, counts, risk_coverage(assessment.confidence, ~wrong)


Resample = Callable[[Callable[[np.ndarray], dict[str, float]]], dict[str, dict[str, object]]]


def multilabel_report(
    rule: MultilabelSelective,
    probs: np.ndarray,
    labels: np.ndarray,
    decided: np.ndarray,
    names: list[str],
    resample: Resample,
) -> tuple[dict[str, Any], Figure]:
    """The evaluated split under a multi-label rule: coverage per label and of whole cases (every label covered),
    uncertain labels per case, share deferred, error (any label decided wrong at the operating point) of all, kept
    and deferred cases, with CIs from ``resample``; reason counts and the risk-coverage curve. Nothing is refitted."""
    y, d = np.asarray(labels).astype(int), np.asarray(decided).astype(bool)
    assessment = rule.assess(probs, names, d)
    covered = np.take_along_axis(assessment.sets, y[..., None], axis=-1)[..., 0]  # (n, L)
    uncertain = ~certain(assessment.sets)
    defer = assessment.defer
    wrong = (d != y.astype(bool)).any(axis=1)

    def fn(ix: np.ndarray) -> dict[str, float]:
        kept, deferred = ix[~defer[ix]], ix[defer[ix]]
        per = {f"coverage_label_{k}": float(covered[ix, k].mean()) for k in range(len(names))}
        return {
            "coverage": float(covered[ix].all(axis=1).mean()),
            **per,
            "mean_uncertain_labels": float(uncertain[ix].sum(axis=1).mean()),
            "share_deferred": float(defer[ix].mean()),
            "error_all": float(wrong[ix].mean()),
            "error_kept": float(wrong[kept].mean()) if len(kept) else float("nan"),
            "error_deferred": float(wrong[deferred].mean()) if len(deferred) else float("nan"),
        }

    metrics = resample(fn)
    per_label = {name: metrics.pop(f"coverage_label_{k}") for k, name in enumerate(names)}
    reasons: dict[str, int] = {}
    for rs in assessment.reasons:
        for r in rs:
            reasons[r] = reasons.get(r, 0) + 1
    rc = risk_coverage(multilabel_confidence(probs, d), ~wrong)
    point = (1 - _value(metrics["share_deferred"]), _value(metrics["error_kept"]))
    figure = Figure(
        "Risk-coverage",
        risk_coverage_plot(rc, point),
        "Error rate (any label decided wrong) of the cases the model keeps against the share it keeps, ranked by "
        "the probability of the decided answer of each case's least sure label; the dot is the per-label "
        "conformal rule fitted on validation.",
    )
    out = {
        "rule": rule.to_json(),
        "metrics": metrics,
        "coverage_per_label": per_label,
        "n": len(y),
        "deferred": int(defer.sum()),
        "uncertain_per_label": {name: int(uncertain[:, k].sum()) for k, name in enumerate(names)},
        "reasons": reasons,
        "aurc": rc.aurc,
        "risk_coverage": rc.to_json(),
    }
    return out, figure


def report(
    rule: SelectivePrediction, probs: np.ndarray, labels: np.ndarray, decided: np.ndarray, resample: Resample
) -> tuple[dict[str, Any], Figure]:
    """The evaluated split's coverage, set size, deferral and kept/deferred error (CIs from ``resample``, the
    task's bootstrap), the reason counts, and the risk-coverage curve with its figure. Nothing is refitted."""
    assessment = rule.assess(probs, decided)
    fn, counts, rc = case_metrics(assessment, labels, decided)
    metrics = resample(fn)
    point = (1 - _value(metrics["share_deferred"]), _value(metrics["error_kept"]))
    figure = Figure(
        "Risk-coverage",
        risk_coverage_plot(rc, point),
        "Error rate of the cases the model keeps against the share it keeps (most confident first); the dot is "
        "the deferral rule chosen on validation.",
    )
    out = {
        "rule": rule.to_json(),
        "metrics": metrics,
        **counts,
        "aurc": rc.aurc,
        "risk_coverage": rc.to_json(),
    }
    return out, figure


def _value(metric: dict[str, object]) -> float:
    v = metric.get("value")
    return float("nan") if v is None else float(v)  # type: ignore[arg-type]


def card_section(u: dict[str, Any] | None, figures: list[Figure], unit: str = "cases") -> Section:
    """The card section "Uncertainty and deferral" from :func:`report`'s output (or why there is none)."""
    if not u:
        return Section(
            "Uncertainty and deferral",
            "No prediction sets: the bundle holds no conformal rule (it was trained before conformal prediction, or, "
            "for a multi-label model, before per-label conformal prediction); retrain to get one.",
        )
    if u["rule"].get("kind") == MULTILABEL_KIND:
        return _multilabel_section(u, figures, unit)
    cp, rule, m = u["rule"]["conformal"], u["rule"]["deferral"], u["metrics"]
    unit_cal = "patients" if str(cp["calibration_unit"]).startswith("patient") else "images"
    whole = "; the validation set is too small for this alpha, so every set holds every label"
    unreachable = ": not reachable on validation, so every case is deferred"
    text = (
        f"Split conformal prediction ({str(cp['score']).upper()} score) calibrated on {cp['n_calibration']} "
        f"validation {unit_cal}: each prediction set should hold the true label for at least "
        f"{cp['coverage_target']:.0%} of {unit} (miscoverage alpha {cp['alpha']:g}, set with --alpha at training; "
        f"threshold {cp['quantile']:.4f}{whole if cp['whole_label_set'] else ''}"
        "). A case is deferred to the radiologist when its set is not exactly the decided label or its confidence "
        f"(calibrated probability of the decided label) is below {rule['confidence_threshold']:.4f}, chosen on "
        f"validation so that the kept validation cases err at most {rule['target_error']:.0%} of the time"
        f"{'' if rule['reachable'] else unreachable}. Nothing here was fitted on the evaluated split."
    )
    rows: list[list[Any]] = [
        ["measure", "value (95% CI)"],
        ["empirical coverage of the prediction sets", fmt(m["coverage"])],
        ["mean prediction-set size", fmt(m["mean_set_size"], 2)],
        *_deferral_rows(m, u["aurc"]),
    ]
    reasons = "; ".join(f"{k}: {v}" for k, v in u["reasons"].items()) or "none"
    sizes = ", ".join(f"size {k}: {v}" for k, v in u["set_size_counts"].items())
    return Section(
        "Uncertainty and deferral",
        html.escape(text),
        rows,
        [f for f in figures if f.title == "Risk-coverage"],
        raw_html="<p>"
        + html.escape(f"{u['deferred']} of {u['n']} deferred. Reasons: {reasons}. Sets: {sizes}.")
        + "</p>",
    )


def _deferral_rows(m: dict[str, Any], aurc: float) -> list[list[Any]]:
    """The rows both card sections share: how much is deferred and how often kept and deferred cases err."""
    return [
        ["share deferred to the radiologist", fmt(m["share_deferred"])],
        ["error rate of kept cases", fmt(m["error_kept"])],
        ["error rate of deferred cases", fmt(m["error_deferred"])],
        ["error rate with nothing deferred", fmt(m["error_all"])],
        ["AURC (area under the risk-coverage curve)", f"{aurc:.4f}"],
    ]


def _multilabel_section(u: dict[str, Any], figures: list[Figure], unit: str) -> Section:
    """The card section for a multi-label rule (:func:`multilabel_report`'s output)."""
    cp, m = u["rule"]["conformal"], u["metrics"]
    unit_cal = "patients" if str(cp["calibration_unit"]).startswith("patient") else "images"
    n_labels = len(u["coverage_per_label"])
    text = (
        f"Split conformal prediction per label (LAC over absent/present) calibrated on {cp['n_calibration']} "
        f"validation {unit_cal}: each label's set should hold its true answer for at least "
        f"{cp['coverage_target']:.0%} of {unit} (miscoverage alpha {cp['alpha']:g} per label, set with --alpha at "
        f"training; all {n_labels} labels of a case together at least {max(0.0, 1 - n_labels * cp['alpha']):.0%}). "
        "A label is certainly present, certainly absent or uncertain; a case is deferred to the radiologist when any "
        "label is uncertain or a certain answer differs from the label's decision at the operating point. "
        "Error counts a case wrong when any label is decided wrong. Nothing here was fitted on the evaluated split."
    )
    rows: list[list[Any]] = [
        ["measure", "value (95% CI)"],
        *[[f"empirical coverage: {name}", fmt(v)] for name, v in u["coverage_per_label"].items()],
        ["empirical coverage: every label of a case", fmt(m["coverage"])],
        ["mean uncertain labels per case", fmt(m["mean_uncertain_labels"], 2)],
        *_deferral_rows(m, u["aurc"]),
    ]
    reasons = "; ".join(f"{k}: {v}" for k, v in u["reasons"].items()) or "none"
    return Section(
        "Uncertainty and deferral",
        html.escape(text),
        rows,
        [f for f in figures if f.title == "Risk-coverage"],
        raw_html="<p>" + html.escape(f"{u['deferred']} of {u['n']} deferred. Reasons: {reasons}.") + "</p>",
    )
