"""The comparison's report: ``compare.json`` and a self-contained ``compare.html`` with its plots, written whole
or not at all. The HTML reuses the model card's renderer (``evaluation/card.py``), so it reads like a card."""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from medsight.evaluation.card import Figure, Section, fmt, render_html, write_figures
from medsight.io.atomic import atomic_dir, write_json, write_text


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def differences_plot(result: dict[str, Any]) -> bytes:
    """Each metric's paired difference NEW - OLD with its 95% CI (a forest plot); the primary metric first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in result["metrics"] if result["metrics"][m]["difference"]["value"] is not None]
    fig, ax = plt.subplots(figsize=(5, 0.6 + 0.45 * len(names)))
    for row, m in enumerate(reversed(names)):
        d = result["metrics"][m]["difference"]
        lo, hi = d["ci95"]
        ax.plot([lo, hi], [row, row], color="#1f77b4", lw=2)
        ax.plot([d["value"]], [row], "o", color="#1f77b4")
    ax.axvline(0, color="grey", ls=":")
    ax.set_yticks(range(len(names)), list(reversed(names)))
    ax.set(xlabel="NEW − OLD (95% CI, paired bootstrap)", title=f"{result['split']} split, n = {result['n']}")
    return _png(fig)


def pairs_plot(result: dict[str, Any]) -> bytes | None:
    """Per case, OLD's score against NEW's (Dice, or the probability of the true class / finding): points above the
    diagonal are cases NEW does better on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["per_case"]
    key = "dice" if result["task"] == "segmentation" else "score"
    if not rows or f"{key}_new" not in rows[0]:
        return None
    new = np.asarray([r[f"{key}_new"] for r in rows])
    old = np.asarray([r[f"{key}_old"] for r in rows])
    fig, ax = plt.subplots(figsize=(4.2, 4))
    if "truth" in rows[0] and result.get("task_type") == "binary":
        truth = np.asarray([r["truth"] for r in rows])
        for value, colour, label in ((1, "#d62728", result.get("positive_class", "positive")), (0, "#2ca02c", "other")):
            sel = truth == value
            ax.scatter(old[sel], new[sel], s=12, alpha=0.7, color=colour, label=str(label))
        ax.legend(fontsize=7)
        what = f"p({result.get('positive_class', 'positive')})"
    else:
        ax.scatter(old, new, s=12, alpha=0.7)
        what = "Dice" if key == "dice" else "p(true class)"
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel=f"OLD {what}", ylabel=f"NEW {what}", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title="per case")
    return _png(fig)


def _p(test: dict[str, Any] | None) -> str:
    if not test or test.get("p") is None:
        return "—"
    p = float(test["p"])
    return f"{test['test']}: p = {p:.2e}" if p < 0.001 else f"{test['test']}: p = {p:.3f}"


def render(result: dict[str, Any]) -> tuple[str, list[Figure]]:
    """The HTML page and its figures."""
    figures = [
        Figure("Paired differences", differences_plot(result), "NEW − OLD per metric with the 95% bootstrap CI."),
    ]
    pairs = pairs_plot(result)
    if pairs is not None:
        figures.append(Figure("Per case", pairs, "Above the diagonal: NEW scores the case better."))
    v = result["verdict"]
    colour = {"better": "#1b7f1b", "worse": "#b00", "no_difference": "#555"}.get(v["outcome"], "#555")
    rows: list[list[Any]] = [["metric", "NEW", "OLD", "NEW − OLD (95% CI)", "paired test"]]
    for m, parts in result["metrics"].items():
        rows.append([m, fmt(parts["new"]), fmt(parts["old"]), fmt(parts["difference"]), _p(result["tests"].get(m))])
    who = [
        ["", "folder", "bundle sha256", "parent sha256", "created"],
        *[
            [k.upper(), b["path"], b["checksum"][:16] + "…", (b["parent"] or "—")[:16], b["created"] or "—"]
            for k, b in (("new", result["new"]), ("old", result["old"]))
        ],
    ]
    sections = [
        Section(
            "Verdict",
            raw_html=f"<p style='font-size:1.2em;color:{colour}'><b>{html.escape(v['text'])}</b></p>"
            f"<p class='muted'>Rule: {html.escape(v['rule'])}.</p>"
            + (f"<p class='note'>{html.escape(result['caveat'])}</p>" if result.get("caveat") else ""),
        ),
        Section(
            "Scores on the same cases",
            f"{result['n']} cases of the {html.escape(result['split'])} split; "
            f"{html.escape(result['bootstrap']['method'])}, {result['bootstrap']['resamples']} resamples.",
            rows,
            figures=figures,
        ),
        Section("Bundles", html.escape(result["lineage"]) + ".", who),
        Section(
            "Leakage check",
            "Neither bundle was trained on any compared case (content hashes): "
            + html.escape("; ".join(f"{k.upper()} {r.get('status')}" for k, r in result["leakage"].items())),
        ),
    ]
    title = f"medsight compare: {result['task']}, {result['split']} split"
    return render_html(title, html.escape(f"data: {result['data']}"), sections), figures


def write_report(out: Path, result: dict[str, Any]) -> Path:
    """``out/compare.json``, ``out/compare.html`` and ``out/figures/*.png``, atomically."""
    page, figures = render(result)
    with atomic_dir(out, written=("compare.json",)) as tmp:
        write_json(tmp / "compare.json", result)
        write_text(tmp / "compare.html", page)
        write_figures(tmp, figures)
    return out / "compare.html"
