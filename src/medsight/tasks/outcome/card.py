"""The outcome model card: the four models side by side, the deployed model at its operating point, subgroups,
explanations (field importance, Grad-CAM) and the data."""

from __future__ import annotations

import html
import io
from typing import Any

import numpy as np

from medsight.evaluation import selective
from medsight.evaluation.card import Figure, Section, fmt, html_table, subgroup_section
from medsight.tasks.outcome.models import LABELS
from medsight.training.bundle import Bundle


def intro(bundle: Bundle, data_name: str, split: str) -> str:
    tr = bundle.meta["training"]
    return html.escape(
        f"Outcome '{bundle.meta['target']['name']}' on the {split} split of {data_name}. "
        f"CNN trained {tr['epochs_run']} epochs (best {tr.get('best_epoch')}, seed {tr['seed']}, "
        f"{tr['seconds']} s on {tr.get('device')}). Every metric "
        "shows a 95% bootstrap confidence interval over patients. Not for clinical use: no clinical study."
    )


def _counts(r: dict[str, Any]) -> str:
    """Images and patients, and the events among each (patients have several images)."""
    c = r.get("counts")
    if not c:
        return f"n = {r['n']} images of {r['n_patients']} patients, {r['positives']} positive images"
    return (
        f"n = {c['images']} images of {c['patients']} patients ({c['images_per_patient']['mean']:.1f} images per "
        f"patient on average, at most {c['images_per_patient']['max']}); {c['patients_with_event']} patients with the "
        f"outcome ({c['images_with_event']} of their images)"
    )


def importance_plot(imp: dict[str, Any]) -> bytes:
    """Horizontal bars of the AUC drop per shuffled field, one bar per model, with the std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = imp.get("fields", {})
    fig, ax = plt.subplots(figsize=(5, 0.35 * max(len(fields), 3) + 1))
    for k, m in enumerate(imp.get("models", [])):
        vals = [fields[f][m]["mean"] for f in fields]
        errs = [fields[f][m]["std"] for f in fields]
        ax.barh(np.arange(len(fields)) + 0.4 * k, vals, 0.4, xerr=errs, label=m)
    ax.set_yticks(np.arange(len(fields)) + 0.2, list(fields), fontsize=7)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set(xlabel="AUC drop when shuffled", title="Permutation importance")
    ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def sections(bundle: Bundle, r: dict[str, Any], figures: list[Figure]) -> list[Section]:
    m, sel = r["metrics"], r["selection"]
    models: list[list[Any]] = [["model", "validation AUC", f"{r['split']} AUC (95% CI)", "deployed"]]
    for key, label in LABELS.items():
        models.append(
            [label, fmt(sel["val_auc"].get(key)), fmt(m[f"auc_{key}"]), "yes" if key == sel["selected"] else ""]
        )
    deltas = [["paired difference", "value (95% CI)"]] + [[k, fmt(v)] for k, v in m.items() if k.startswith("delta")]
    sel_rows: list[list[Any]] = [["metric (deployed model, operating point)", "value (95% CI)"]]
    sel_rows += [[k.removeprefix("selected_"), fmt(v)] for k, v in m.items() if k.startswith(("selected_", "c_index"))]
    op = r["operating_point"]
    fusion = (
        ("Fusion kept: " + LABELS[sel["selected"]])
        if sel["fusion_kept"]
        else (f"Fusion not kept: on validation neither fusion beat both parts; deployed: {LABELS[sel['selected']]}")
    )
    imp = r["importance"]
    imp_rows: list[list[Any]] = [["field", *[f"AUC drop: {x}" for x in imp.get("models", [])]]]
    for name, per in imp.get("fields", {}).items():
        imp_rows.append([name, *[f"{per[x]['mean']:.3f} ± {per[x]['std']:.3f}" for x in imp["models"]]])
    ex = r.get("explanations") or {}
    sanity = ex.get("sanity_check") or {}
    d = bundle.meta["data"]
    return [
        Section(
            "Models side by side",
            html.escape(f"{_counts(r)}. {fusion}. {sel['rule']}. Metrics are {r.get('metrics_unit', 'per image')}."),
            models,
            [f for f in figures if f.title == "ROC"],
            raw_html=html_table(deltas),
        ),
        Section(
            "Deployed model at the operating point",
            html.escape(
                f"Threshold {op['threshold']:.4f} on p({bundle.meta['target']['name']}), method "
                f"{op['method']}, chosen on validation."
            ),
            sel_rows,
        ),
        selective.card_section(r.get("selective_prediction"), figures, "patients"),
        subgroup_section(r.get("subgroups") or {}),
        Section(
            "Explanations",
            html.escape(
                f"Clinical fields: {imp.get('method', '')}. Image branch: {ex.get('method', 'none')}; "
                + (
                    f"sanity check ({sanity['test']}, {sanity['n_images']} images): "
                    f"{'passed' if sanity['passed'] else 'FAILED'}: {sanity['reason']}."
                    if sanity
                    else "no sanity check."
                )
            ),
            imp_rows,
            [f for f in figures if f.title not in ("ROC", "Risk-coverage")],
        ),
        Section(
            "Model and data",
            "",
            [
                ["item", "value"],
                ["CNN", f"{bundle.meta['network']['name']} ({bundle.meta['network'].get('parameters')} parameters)"],
                ["clinical fields", ", ".join(f"{f['name']} ({f['kind']})" for f in bundle.input["clinical_fields"])],
                ["missing values", "indicator columns + train median / 'missing' category; no patient dropped"],
                ["missing rate (train)", ", ".join(f"{k} {v:.0%}" for k, v in d["missing_rate_train"].items())],
                ["rows left out", ", ".join(f"{k}: {v}" for k, v in d["excluded"].items())],
                [
                    "split",
                    f"{d['split_method']}; images {d['n']}, patients {d['n_patients']}, images with the outcome "
                    f"{d['positives']}"
                    + (f", patients with the outcome {d['patients_with_event']}" if "patients_with_event" in d else ""),
                ],
                ["fusion", bundle.meta["training"]["fusion"]],
                ["versions", ", ".join(f"{k} {v}" for k, v in bundle.meta["versions"].items())],
            ],
        ),
    ]
