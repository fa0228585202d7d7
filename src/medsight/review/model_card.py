"""The model card a reader opens from a finding: the bundle's own ``card.html`` when it carries one, else a card
drawn from its ``bundle.json`` (what it was trained on, its validation figures and the rules it applies).

Why from the bundle and not from an evaluation folder: the service only knows bundles, and a reader must see the
card of the exact bundle that made the finding; ``bundle.json`` holds the validation metrics, operating point,
calibration and deferral rule every bundle is written with (``medsight evaluate`` writes the fuller test card,
which a site may copy into the bundle folder as ``card.html``).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from medsight.errors import MedsightError
from medsight.evaluation.card import Section, render_html

CARD_FILE = "card.html"


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, list | tuple):
        return ", ".join(_value(x) for x in v)
    return str(v)


def model_card_html(bundle: Path, name: str) -> str:
    """The card of ``bundle`` (route ``name``) as one self-contained HTML page."""
    from medsight.serving.provenance import bundle_checksum
    from medsight.training.bundle import load_bundle

    own = bundle / CARD_FILE
    if own.is_file():
        return own.read_text(encoding="utf-8")
    loaded = load_bundle(bundle)
    meta = loaded.meta
    try:
        checksum = bundle_checksum(loaded.path)
    except MedsightError:
        checksum = "unknown (bundle files missing)"
    data = meta.get("data", {})
    training = meta.get("training", {})
    about = [
        ["task", f"{meta.get('task')} ({meta.get('task_type', '')})"],
        ["labels", ", ".join(str(n) for n in meta.get("label_names", []))],
        ["trained on", f"{data.get('source', '?')} ({data.get('modality', 'modality not recorded')})"],
        [
            "cases (train / val / test)",
            " / ".join(str((data.get("n") or {}).get(k, "?")) for k in ("train", "val", "test")),
        ],
        ["created", str(meta.get("created", "?"))],
        ["medsight", str(meta.get("versions", {}).get("medsight", "?"))],
        ["epochs run", f"{training.get('epochs_run', '?')} (stopped by {training.get('stopped_by', '?')})"],
        ["bundle sha256", checksum],
    ]
    sections = [Section("The model", table=[["", ""], *about])]
    metrics = (meta.get("metrics") or {}).get("val") or {}
    if metrics:
        sections.append(
            Section(
                "Validation figures",
                "Measured on the validation split at training (used to choose the thresholds below); the test-set "
                "card comes from <code>medsight evaluate</code>.",
                table=[["metric", "value"], *[[k, _value(v)] for k, v in metrics.items() if not isinstance(v, dict)]],
            )
        )
    point = meta.get("operating_point") or {}
    rules = [[k, _value(v)] for k, v in point.items() if not isinstance(v, dict)]
    temperature = (meta.get("calibration") or {}).get("temperature")
    if temperature is not None:
        rules.append(["calibration temperature", _value(temperature)])
    deferral = (meta.get("selective_prediction") or {}).get("deferral") or {}
    rules.extend([f"deferral: {k}", _value(v)] for k, v in deferral.items() if not isinstance(v, dict | list))
    if rules:
        sections.append(Section("Operating point, calibration and deferral", table=[["setting", "value"], *rules]))
    warnings = training.get("warnings") or []
    if warnings:
        sections.append(Section("Warnings from training", "<br>".join(html.escape(str(w)) for w in warnings)))
    intro = html.escape(f"Model '{name}': the bundle at {loaded.path.name}, as the service runs it.")
    return render_html(f"Model card: {name}", intro, sections)
