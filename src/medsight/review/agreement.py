"""How readers judge a model: agree/edit/disagree counts, the model's sensitivity and specificity against the
readers' verdicts with 95% Wilson intervals, and how both move week by week, as JSON and as an HTML page.

Why against the readers and not a ground truth: in clinical use the reader's final call is the reference the
model is held to (it is what reaches the patient's record), and how often readers overrule the model is the
number a department watches. These figures are *agreement with readers*, not accuracy against pathology or
follow-up, and the page says so. Each reader's newest verdict per finding counts once
(:func:`counted_verdicts`: a re-run's finding on the same images is the same finding). Wilson intervals
(statsmodels ``proportion_confint``) stay inside [0, 1] and behave with the small counts of a new deployment, where
the normal approximation does not.
"""

from __future__ import annotations

import base64
import io
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from medsight.review.verdicts import DECISIONS, Verdict, latest_per_finding


def wilson(successes: int, n: int) -> dict[str, Any]:
    """``{"value", "ci95", "n"}`` for a proportion: the estimate and its 95% Wilson interval (None when n = 0)."""
    if n == 0:
        return {"value": None, "ci95": [None, None], "n": 0}
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(successes, n, alpha=0.05, method="wilson")
    return {"value": successes / n, "ci95": [float(lo), float(hi)], "n": n}


@dataclass(frozen=True)
class Scores:
    """Counts, rates and the model's sensitivity/specificity against the readers for one set of verdicts."""

    counts: dict[str, int]
    rates: dict[str, dict[str, Any]]
    confusion: dict[str, int]
    sensitivity: dict[str, Any]
    specificity: dict[str, Any]

    @classmethod
    def of(cls, verdicts: Sequence[Verdict]) -> Scores:
        counts = Counter(v.decision for v in verdicts)
        n = len(verdicts)
        paired = [(v.ai_positive, v.reader_positive) for v in verdicts]
        paired = [(a, r) for a, r in paired if a is not None and r is not None]
        tp = sum(1 for a, r in paired if a and r)
        fn = sum(1 for a, r in paired if not a and r)
        fp = sum(1 for a, r in paired if a and not r)
        tn = sum(1 for a, r in paired if not a and not r)
        return cls(
            counts={d: counts.get(d, 0) for d in DECISIONS},
            rates={d: wilson(counts.get(d, 0), n) for d in DECISIONS},
            confusion={"tp": tp, "fp": fp, "fn": fn, "tn": tn},
            sensitivity=wilson(tp, tp + fn),
            specificity=wilson(tn, tn + fp),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "rates": dict(self.rates),
            "confusion": dict(self.confusion),
            "sensitivity": dict(self.sensitivity),
            "specificity": dict(self.specificity),
        }


@dataclass(frozen=True)
class Agreement:
    """A model's agreement with its readers, overall and per ISO week (weeks without verdicts are left out)."""

    model: str
    n_verdicts: int
    n_findings: int
    readers: int
    seconds_spent_median: float | None
    overall: Scores
    weeks: list[tuple[str, date, Scores]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "reference": "the readers' verdicts (agreement with readers, not accuracy against a ground truth)",
            "n_verdicts": self.n_verdicts,
            "n_findings": self.n_findings,
            "readers": self.readers,
            "seconds_spent_median": self.seconds_spent_median,
            **self.overall.to_json(),
            "weeks": [{"week": w, "start": start.isoformat(), **s.to_json()} for w, start, s in self.weeks],
        }


def _week(stamp: float) -> tuple[str, date]:
    day = datetime.fromtimestamp(stamp, UTC).date()
    year, week, weekday = day.isocalendar()
    return f"{year}-W{week:02d}", day - timedelta(days=weekday - 1)


def _case(v: Verdict) -> tuple[str, ...]:
    """What a verdict judged, across re-runs: the study, the images and the part of the result (label or structure
    index) a finding id names after its entry; the finding id itself when the verdict names no images."""
    if not v.source_sop_uids:
        return (v.study_uid, v.finding_id)
    return (v.study_uid, *sorted(v.source_sop_uids), "/", *v.finding_id.split("/")[2:])


def counted_verdicts(verdicts: Sequence[Verdict]) -> list[Verdict]:
    """Each reader's newest verdict per finding (:func:`latest_per_finding`), where a re-run's finding on the same
    images is the same finding: a reader who judged a study, then its re-run, is one reader on one case, not two
    (the older verdict judged a result the service no longer shows)."""
    newest: dict[tuple[str, tuple[str, ...]], Verdict] = {}
    for v in latest_per_finding(verdicts):  # oldest first: a later one replaces an earlier one
        newest[(v.reader, _case(v))] = v
    return sorted(newest.values(), key=lambda v: (v.submitted_at, v.verdict_id))


def agreement(model: str, verdicts: Sequence[Verdict]) -> Agreement:
    """Score ``model`` against its readers' verdicts (those of other models are ignored)."""
    counted = counted_verdicts([v for v in verdicts if v.model == model])
    weeks: dict[tuple[str, date], list[Verdict]] = {}
    for v in counted:
        weeks.setdefault(_week(v.submitted_at), []).append(v)
    spent = [v.seconds_spent for v in counted if v.seconds_spent is not None]
    return Agreement(
        model=model,
        n_verdicts=len(counted),
        n_findings=len({v.finding_id for v in counted}),
        readers=len({v.reader for v in counted}),
        seconds_spent_median=statistics.median(spent) if spent else None,
        overall=Scores.of(counted),
        weeks=[(w, start, Scores.of(vs)) for (w, start), vs in sorted(weeks.items(), key=lambda kv: kv[0][1])],
    )


# ---------------------------------------------------------------------------------------------------- the page


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(out.getvalue()).decode("ascii")


def plots(found: Agreement) -> dict[str, str]:
    """The page's figures as base64 PNGs: decisions per week (stacked) and sensitivity/specificity per week."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [w for w, _start, _s in found.weeks] or ["(none)"]
    x = list(range(len(labels)))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bottom = [0] * len(labels)
    colours = {"agree": "#2e7d32", "edit": "#f9a825", "disagree": "#c62828"}
    for d in DECISIONS:
        heights = [s.counts[d] for _w, _start, s in found.weeks] or [0]
        ax.bar(x, heights, bottom=bottom, label=d, color=colours[d])
        bottom = [a + h for a, h in zip(bottom, heights, strict=True)]
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set_ylabel("verdicts")
    ax.set_title(f"{found.model}: reader decisions per week")
    ax.legend(frameon=False, ncols=3)
    decisions = _png(fig)

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for key, offset, colour in (("sensitivity", -0.08, "#1565c0"), ("specificity", 0.08, "#6a1b9a")):
        xs, ys, lo, hi = [], [], [], []
        for i, (_w, _start, s) in enumerate(found.weeks):
            m = getattr(s, key)
            if m["value"] is not None:
                xs.append(i + offset)
                ys.append(m["value"])
                lo.append(m["value"] - m["ci95"][0])
                hi.append(m["ci95"][1] - m["value"])
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", capsize=3, label=key, color=colour)
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("against readers (95% CI)")
    ax.set_title(f"{found.model}: sensitivity and specificity per week")
    ax.legend(frameon=False)
    return {"decisions": decisions, "accuracy": _png(fig)}


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Agreement: {{ a.model }}</title>
<style>body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em 1em}</style></head>
<body><h1>Readers and {{ a.model }}</h1>
<p class="note">Reference: the readers' verdicts. These are agreement figures, not accuracy against a ground truth.
Each reader's newest verdict per finding counts once.</p>
<p>{{ a.n_verdicts }} verdict(s) on {{ a.n_findings }} finding(s) by {{ a.readers }} reader(s)
{%- if a.seconds_spent_median is not none %};
median time per verdict {{ "%.1f"|format(a.seconds_spent_median) }} s{% endif %}.</p>
<table><tr><th>decision</th><th>count</th><th>share (95% CI)</th></tr>
{% for d in decisions %}<tr><td>{{ d }}</td><td>{{ a.overall.counts[d] }}</td>
<td>{{ fmt(a.overall.rates[d]) }}</td></tr>
{% endfor %}</table>
<table><tr><th>model against readers</th><th>value (95% Wilson CI)</th><th>n</th></tr>
<tr><td>sensitivity</td><td>{{ fmt(a.overall.sensitivity) }}</td><td>{{ a.overall.sensitivity.n }}</td></tr>
<tr><td>specificity</td><td>{{ fmt(a.overall.specificity) }}</td><td>{{ a.overall.specificity.n }}</td></tr></table>
<p>Confusion (model vs readers): TP {{ a.overall.confusion.tp }}, FP {{ a.overall.confusion.fp }},
FN {{ a.overall.confusion.fn }}, TN {{ a.overall.confusion.tn }}.</p>
<h2>Over time</h2>
<img alt="reader decisions per week" src="data:image/png;base64,{{ figures.decisions }}">
<img alt="sensitivity and specificity per week" src="data:image/png;base64,{{ figures.accuracy }}">
<table><tr><th>week</th><th>agree</th><th>edit</th><th>disagree</th><th>sensitivity</th><th>specificity</th></tr>
{% for w, start, s in a.weeks %}<tr><td>{{ w }} ({{ start }})</td><td>{{ s.counts.agree }}</td>
<td>{{ s.counts.edit }}</td><td>{{ s.counts.disagree }}</td><td>{{ fmt(s.sensitivity) }}</td>
<td>{{ fmt(s.specificity) }}</td></tr>
{% endfor %}</table></body></html>
"""


def _fmt(metric: dict[str, Any]) -> str:
    if metric.get("value") is None:
        return "—"
    lo, hi = metric["ci95"]
    return f"{metric['value']:.3f} ({lo:.3f}–{hi:.3f})"


def render_page(found: Agreement) -> str:
    """The agreement page: tables and the plots as PNGs embedded in one self-contained HTML file (Jinja2)."""
    from jinja2 import Environment, select_autoescape

    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    return env.from_string(_TEMPLATE).render(a=found, figures=plots(found), decisions=DECISIONS, fmt=_fmt)
