"""The model card: one self-contained HTML file (inline CSS, figures as data URIs) plus card.json."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

from medsight.io.atomic import write_json, write_text

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;color:#222;
line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:left}th{background:#f3f3f3}.figs{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}
figcaption{font-size:.85em;color:#555;max-width:460px}.flag{color:#b00;font-weight:bold}.muted{color:#666}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em 1em}
"""


@dataclass
class Figure:
    title: str
    png: bytes
    caption: str = ""


@dataclass
class Section:
    title: str
    text: str = ""
    table: list[list[Any]] | None = None
    figures: list[Figure] = field(default_factory=list)
    raw_html: str = ""


def fmt(metric: dict[str, Any] | float | None, digits: int = 3) -> str:
    """'0.934 (0.912–0.955)' from ``{"value", "ci95"}``; '—' when undefined."""
    if metric is None:
        return "—"
    if isinstance(metric, dict):
        v, ci = metric.get("value"), metric.get("ci95") or [None, None]
        if v is None:
            return "—"
        if ci[0] is None:
            return f"{v:.{digits}f}"
        return f"{v:.{digits}f} ({ci[0]:.{digits}f}–{ci[1]:.{digits}f})"
    return f"{metric:.{digits}f}"


def render_html(title: str, intro: str, sections: list[Section]) -> str:
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p class='muted'>{intro}</p>",
    ]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.text:
            parts.append(f"<p>{s.text}</p>")
        if s.table:
            parts.append(html_table(s.table))
        if s.raw_html:
            parts.append(s.raw_html)
        if s.figures:
            parts.append("<div class='figs'>")
            for f in s.figures:
                data = base64.b64encode(f.png).decode("ascii")
                parts.append(
                    f"<figure><img alt='{html.escape(f.title)}' src='data:image/png;base64,{data}'>"
                    f"<figcaption><b>{html.escape(f.title)}</b> {html.escape(f.caption)}</figcaption></figure>"
                )
            parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_figures(folder: Path, figures: list[Figure]) -> None:
    """Each figure also as ``figures/<title>.png`` beside the card, for people who want the picture alone."""
    (folder / "figures").mkdir(exist_ok=True)
    for f in figures:
        slug = re.sub(r"[^a-z0-9]+", "_", f.title.lower()).strip("_")
        (folder / "figures" / f"{slug}.png").write_bytes(f.png)


def card_record(bundle_meta: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
    """What ``card.json`` holds: the bundle's description (without the per-epoch history) and the evaluation."""
    training = {k: v for k, v in bundle_meta.get("training", {}).items() if k != "history"}
    return {"bundle": bundle_meta | {"training": training}, "evaluation": evaluation}


def write_card(out_dir: Path, title: str, intro: str, sections: list[Section], card: dict[str, Any]) -> Path:
    """Write ``card.html`` and ``card.json`` (the same numbers) atomically; return the HTML path."""
    write_json(out_dir / "card.json", card)
    return write_text(out_dir / "card.html", render_html(title, intro, sections))


def write_evaluation(
    out: Path,
    metrics: dict[str, Any],
    figures: list[Figure],
    title: str,
    intro: str,
    sections: list[Section],
    record: dict[str, Any],
    extra_json: dict[str, Any] | None = None,
) -> Path:
    """What every ``evaluate`` writes: ``metrics.json``, the figures, ``card.html`` + ``card.json`` (and any
    ``extra_json`` files), in a temporary folder renamed onto ``out`` so it appears whole or not at all."""
    from medsight.io.atomic import atomic_dir

    with atomic_dir(out, written=("metrics.json",)) as tmp:
        write_json(tmp / "metrics.json", metrics)
        for name, content in (extra_json or {}).items():
            write_json(tmp / name, content)
        write_figures(tmp, figures)
        write_card(tmp, title, intro, sections, record)
    return out / "card.html"


def subgroup_section(sub: dict[str, Any]) -> Section:
    """The card section for ``evaluation.subgroups.audit`` output (or why there is none)."""
    if not sub:
        return Section(
            "Subgroups",
            "The data carry no attribute columns (sex, age, site...), so no subgroup audit "
            "could be run. Add them to the manifest to audit performance by group.",
        )
    first = next(iter(sub.values()))
    names = [k for k in next(iter(first["groups"].values())) if k not in ("n", "n_undefined")]
    rows: list[list[Any]] = [["attribute", "group", "n", *names]]
    gaps: list[list[Any]] = [
        ["attribute", "metric", "gap (high − low)", "95% CI", "groups", "p (raw)", "p (Holm)", "pairs", "flagged"]
    ]
    for attr, rep in sub.items():
        for g, v in rep["groups"].items():
            rows.append([attr, g, v["n"], *[fmt(v.get(k)) for k in names]])
        for metric, gap in rep["gaps"].items():
            flag = Markup("<span class='flag'>yes</span>") if gap["flagged"] else "no"
            gaps.append(
                [
                    attr,
                    metric,
                    fmt(gap["gap"]),
                    fmt({"value": 0, "ci95": gap["ci95"]}).split(" ", 1)[-1],
                    f"{gap['highest']} vs {gap['lowest']}",
                    _p(gap.get("p_raw")),
                    _p(gap.get("p_holm")),
                    gap.get("n_comparisons", 1),
                    flag,
                ]
            )
    return Section(
        "Subgroups",
        "Per-group metrics (fairlearn MetricFrame) with bootstrap CIs. Every pair of groups (of at least "
        f"{first.get('min_group_for_gaps', 10)} cases) is compared; the p-values are "
        "corrected for the number of pairs (Holm-Bonferroni) and a gap is flagged when its corrected p-value is "
        "below 0.05. The table shows the largest gap per metric.",
        rows,
        raw_html=html_table(gaps),
    )


def _p(p: float | None) -> str:
    return "—" if p is None else (f"{p:.1e}" if p < 0.001 else f"{p:.3f}")


def html_table(rows: list[list[Any]]) -> str:
    """A table from rows (the first is the header). Every cell is escaped unless the code marked it as HTML
    (``markupsafe.Markup``): cells hold class names, subgroup values and file names from the data, and a value
    such as ``<script>...`` must show as text, not run in the card a reader opens."""
    head, *body = rows
    out = "<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"
    for row in body:
        out += "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
    return out + "</table>"
