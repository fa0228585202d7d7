"""Outcome prediction end to end: image-only CNN, clinical-only logistic regression and two fusions side by side on
one patient-level split; evaluate with patient-level bootstrap CIs, subgroup audit, Grad-CAM and clinical-field
importance; predict from images plus clinical fields.

Data: ``<covid_cxr_lung_boxes folder>#survival`` / ``#icu``, or an outcome task ``.json`` (see
``medsight.data.clinical``). Fusion is kept only when it beats both parts on the validation split; the test split
then reports all four models with CIs regardless.
"""

from __future__ import annotations

import html
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medsight import config
from medsight.data.clinical import ClinicalEncoder, is_outcome_spec, load_outcome
from medsight.errors import MedsightError
from medsight.evaluation.calibration import TemperatureScaler
from medsight.evaluation.card import Figure, Section, card_record, fmt, write_card, write_figures
from medsight.evaluation.metrics import N_BOOTSTRAP, binary_metrics, bootstrap
from medsight.evaluation.operating_point import choose_threshold
from medsight.evaluation.plots import overlay_grid, png_image, roc_plot
from medsight.evaluation.subgroups import audit
from medsight.explain.gradcam import gradcam, overlay, sanity_check
from medsight.io.atomic import atomic_dir, write_json
from medsight.io.images import is_dicom_file, read_image
from medsight.runtime.onnx_export import export_onnx
from medsight.tasks import classification as cls_task
from medsight.tasks import outcome as task
from medsight.training.bundle import BUNDLE_JSON, FORMAT, ONNX, WEIGHTS, Bundle, library_versions, load_bundle, now_iso
from medsight.training.seed import seed_everything
from medsight.training.trainer import AugmentedArrays, TrainConfig, fit
from medsight.transforms import augmentation, prepare

log = logging.getLogger("medsight")

DEFAULT_SIZE = 128
LABELS = {
    "image": "image only (CNN)",
    "clinical": "clinical only (logistic regression)",
    "fused_embedding": "fused: CNN embedding + clinical (logistic regression)",
    "fused_late": "fused: mean of calibrated probabilities",
}


def recognises(spec: str) -> bool:
    """``<folder with annotations.json>#<outcome>`` or an outcome task .json (with "target" and "fields")."""
    try:
        return is_outcome_spec(spec)
    except OSError:
        return False


def _images(paths: list[Path], size: int) -> np.ndarray:
    return np.stack(
        [
            prepare(read_image(p), [size, size], 1)
            for p in tqdm(paths, desc="read", unit="image", disable=len(paths) < 20)
        ]
    ).astype(np.float32)


# --------------------------------------------------------------------------------------------------- training


def train(
    spec: str,
    out: Path,
    seed: int = 0,
    epochs: int = 30,
    time_budget_s: float | None = None,
    batch_size: int = 32,
    lr: float = 1e-3,
    image_size: int = DEFAULT_SIZE,
    **_: Any,
) -> dict[str, Any]:
    """Train the four models on the train split; calibrate, select and pick the operating point on val."""
    seed_everything(seed)
    torch.set_num_threads(config.num_threads())
    data = load_outcome(spec)
    parts = data.split(seed)
    tr, va = parts["train"], parts["val"]
    images = _images(data.images, image_size)
    encoder = ClinicalEncoder(data.fields).fit(data.table.iloc[tr])
    x_clin = encoder.transform(data.table)
    y = data.y

    kwargs = cls_task.plan_network(2, [image_size, image_size], 1, 2)
    model = cls_task.build_network(kwargs)
    counts = np.bincount(y[tr], minlength=2).astype(float)
    weight = torch.as_tensor(counts.sum() / (2 * np.maximum(counts, 1)), dtype=torch.float32)
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        time_budget_s=time_budget_s,
        seed=seed,
        device=config.device(),
        patience=10,
    )

    def validate(logits: np.ndarray) -> tuple[float, dict[str, float]]:
        auc = binary_metrics(y[va], task.image_probability(logits, 1.0), 0.5)["auc"]
        return (0.0 if np.isnan(auc) else auc), {"val_auc": auc}

    started = time.monotonic()
    result = fit(
        model,
        AugmentedArrays(images[tr], y[tr], augmentation("xray", 2, seed)),
        images[va],
        torch.nn.CrossEntropyLoss(weight=weight),
        validate,
        cfg,
    )
    model.cpu().eval()
    logits, emb = task.image_outputs(model, images)
    scaler = TemperatureScaler().fit(logits[va], y[va])
    clinical = task.Linear.fit(x_clin[tr], y[tr], seed=seed)
    projection = task.Projection.fit(emb[tr], seed=seed)
    fused = task.Linear.fit(np.hstack([projection(emb[tr]), x_clin[tr]]), y[tr], seed=seed)
    params = {
        "temperature": scaler.temperature_,
        "encoder": encoder.to_json(),
        "clinical": clinical.to_json(),
        "projection": projection.to_json(),
        "fused_embedding": fused.to_json(),
    }
    probs = model_probabilities(params, logits, emb, x_clin)
    val_auc = {m: binary_metrics(y[va], p[va], 0.5)["auc"] for m, p in probs.items()}
    selection = select_model(val_auc)
    operating = {
        **choose_threshold(y[va], probs[selection["selected"]][va]),
        "chosen_on": "val",
        "applies_to": selection["selected"],
    }
    meta: dict[str, Any] = {
        "format": FORMAT,
        "task": "outcome",
        "task_type": "binary",
        "label_names": [f"not {data.target_name}", data.target_name],
        "target": {"name": data.target_name, "column": data.target, "time_to_event": data.time is not None},
        "input": {
            "spatial_dims": 2,
            "spatial_size": [image_size, image_size],
            "n_channels": 1,
            "layout": "N,C,H,W",
            "dtype": "float32",
            "clinical_fields": [{"name": f.name, "kind": f.kind} for f in data.fields],
        },
        "preprocessing": {
            "steps": [
                "image: mean of colour channels, ScaleIntensity to [0, 1], "
                f"Resize to {image_size}x{image_size} (area when shrinking; aspect ratio not kept)",
                "clinical: numeric -> (value or train median - train mean) / train std, plus a 0/1 missing "
                "indicator; categorical -> one-hot over train categories plus a 'missing' column",
            ],
            "augmentation": repr(augmentation("xray", 2, seed).transforms),
        },
        "network": {
            "name": cls_task.NETWORK,
            "kwargs": kwargs,
            "parameters": int(sum(p.numel() for p in model.parameters())),
        },
        "models": params,
        "selection": {**selection, "val_auc": val_auc},
        "data": {
            "source": data.name,
            "modality": "radiography",
            "split_method": f"patient-level 70/10/20 (StratifiedGroupKFold on the outcome), seed {seed}",
            "n": {k: len(v) for k, v in parts.items()},
            "n_patients": {k: len({data.patient_ids[i] for i in v}) for k, v in parts.items()},
            "positives": {k: int(y[v].sum()) for k, v in parts.items()},
            "excluded": data.excluded,
            "missing_rate_train": {
                f.name: float(data.table.iloc[tr][f.name].replace("", np.nan).isna().mean())
                for f in data.fields
                if f.name in data.table
            },
            "fingerprint": data.fingerprint,
        },
        "training": {
            "seed": seed,
            "epochs_requested": epochs,
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "stopped_by": result.stopped_by,
            "seconds": round(time.monotonic() - started, 1),
            "time_budget_s": time_budget_s,
            "optimizer": f"AdamW(lr={lr}, weight_decay={cfg.weight_decay}), "
            "warm-up + cosine, class-weighted cross-entropy",
            "batch_size": batch_size,
            "device": cfg.device,
            "selection": "best validation AUC (CNN)",
            "history": result.history,
            "clinical_model": "scikit-learn LogisticRegression(C=0.3, class_weight='balanced')",
            "fusion": f"embedding: PCA({task.EMBED_COMPONENTS}) of the CNN's penultimate features + clinical features "
            "-> LogisticRegression(C=0.3, balanced); late: mean of the temperature-scaled CNN probability and the "
            "clinical probability",
        },
        "calibration": {"method": "temperature scaling (CNN)", "fitted_on": "val", "temperature": scaler.temperature_},
        "operating_point": operating,
        "metrics": {"val": {f"auc_{m}": v for m, v in val_auc.items()}},
        "versions": library_versions(),
        "created": now_iso(),
    }
    with atomic_dir(out) as tmp:
        torch.save(model.state_dict(), tmp / WEIGHTS)
        meta["onnx"] = export_onnx(model, torch.as_tensor(images[va][:2]), tmp / ONNX)
        write_json(tmp / BUNDLE_JSON, meta)
    log.info("bundle written to %s (selected %s, val AUC %s)", out, selection["selected"], val_auc)
    return meta


def model_probabilities(
    params: dict[str, Any], logits: np.ndarray, emb: np.ndarray, x_clin: np.ndarray
) -> dict[str, np.ndarray]:
    """p(outcome) from each of the four models."""
    p_img = task.image_probability(logits, float(params["temperature"]))
    p_clin = task.Linear.from_json(params["clinical"]).proba(x_clin)
    proj = task.Projection.from_json(params["projection"])
    p_emb = task.Linear.from_json(params["fused_embedding"]).proba(np.hstack([proj(emb), x_clin]))
    return {"image": p_img, "clinical": p_clin, "fused_embedding": p_emb, "fused_late": (p_img + p_clin) / 2}


def select_model(val_auc: dict[str, float]) -> dict[str, Any]:
    """Keep a fusion only when its validation AUC beats both the image-only and the clinical-only model."""

    def v(m: str) -> float:
        x = val_auc.get(m, float("nan"))
        return -1.0 if x is None or np.isnan(x) else float(x)

    best_part = max(("image", "clinical"), key=v)
    best_fusion = max(("fused_embedding", "fused_late"), key=v)
    kept = v(best_fusion) > v("image") and v(best_fusion) > v("clinical")
    return {
        "selected": best_fusion if kept else best_part,
        "fusion_kept": bool(kept),
        "best_fusion": best_fusion,
        "rule": "a fusion is kept only if its validation AUC is above both the image-only and clinical-only AUCs",
    }


# ------------------------------------------------------------------------------------------------- evaluation


def _inputs(bundle: Bundle, images: np.ndarray, table: pd.DataFrame) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    model = bundle.network("cpu")
    logits, emb = task.image_outputs(model, images)
    x = ClinicalEncoder.from_json(bundle.meta["models"]["encoder"]).transform(table)
    return model, logits, emb, x


def evaluate(
    bundle_path: Path, spec: str, split: str, out: Path, n_boot: int = N_BOOTSTRAP, **_: Any
) -> dict[str, Any]:
    """All four models' AUCs with patient-level bootstrap CIs, the selected model's operating-point metrics,
    paired AUC differences, subgroup audit, Grad-CAM and clinical-field importance → metrics.json + card."""
    bundle = load_bundle(bundle_path)
    if bundle.task != "outcome":
        raise MedsightError(f"a {bundle.task} bundle, not an outcome one", bundle_path)
    data = load_outcome(spec)
    parts = data.split(int(bundle.meta["training"]["seed"]))
    if split not in parts:
        raise MedsightError(f"unknown split {split!r} (train, val or test)")
    idx = parts[split]
    size = int(bundle.input["spatial_size"][0])
    images = _images([data.images[i] for i in idx], size)
    table = data.table.iloc[idx].reset_index(drop=True)
    y = data.y[idx]
    params = bundle.meta["models"]
    model, logits, emb, x = _inputs(bundle, images, table)
    probs = model_probabilities(params, logits, emb, x)
    sel = bundle.meta["selection"]["selected"]
    best_fusion = bundle.meta["selection"]["best_fusion"]
    thr = float(bundle.meta["operating_point"]["threshold"])
    time_arr = data.time[idx] if data.time is not None else None

    pids = np.asarray([data.patient_ids[i] for i in idx])
    patients = np.unique(pids)
    rows_of = {p: np.flatnonzero(pids == p) for p in patients}
    patient_pos = np.asarray([int(y[rows_of[p]].max()) for p in patients])

    def fn(pix: np.ndarray) -> dict[str, float]:
        ix = np.concatenate([rows_of[patients[i]] for i in pix])
        yy = y[ix]
        out = {f"auc_{m}": binary_metrics(yy, p[ix], 0.5)["auc"] for m, p in probs.items()}
        out[f"delta_auc_{best_fusion}_minus_image"] = out[f"auc_{best_fusion}"] - out["auc_image"]
        out[f"delta_auc_{best_fusion}_minus_clinical"] = out[f"auc_{best_fusion}"] - out["auc_clinical"]
        sel_m = binary_metrics(yy, probs[sel][ix], thr)
        out.update({f"selected_{k}": v for k, v in sel_m.items() if k != "auc"})
        if time_arr is not None:
            out["c_index_selected"] = task.concordance_index(time_arr[ix], yy, probs[sel][ix])
        return out

    strata = patient_pos if len(np.unique(patient_pos)) == 2 else None
    metrics = bootstrap(fn, len(patients), strata, n_boot)
    decision = (probs[sel] >= thr).astype(int)
    attrs = _banded(data.attributes.iloc[idx].reset_index(drop=True))
    subgroups = audit(y, probs[sel], decision, attrs) if len(attrs.columns) and len(np.unique(y)) == 2 else {}
    importance = permutation_importance(params, logits, emb, table, y, sel, bundle)
    explanations, cam_png = _gradcam_examples(model, images, y, probs[sel], thr)
    result: dict[str, Any] = {
        "split": split,
        "n": len(idx),
        "n_patients": len(patients),
        "positives": int(y.sum()),
        "data": data.name,
        "target": bundle.meta["target"],
        "bundle": str(bundle_path),
        "metrics": metrics,
        "selection": bundle.meta["selection"],
        "operating_point": bundle.meta["operating_point"],
        "subgroups": subgroups,
        "importance": importance,
        "explanations": explanations,
        "excluded": data.excluded,
        "ci95": f"percentile bootstrap over patients ({n_boot} resamples, stratified by any positive outcome)",
    }
    figures = [
        Figure("ROC", roc_plot({LABELS[m]: (y, p) for m, p in probs.items()}), "All four models on this split."),
        Figure("Clinical field importance", _importance_plot(importance), "Permutation importance (AUC drop)."),
    ]
    if cam_png:
        figures.append(Figure("Grad-CAM examples", cam_png, "Image branch: where the CNN looked."))
    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", result)
        write_figures(tmp, figures)
        write_card(
            tmp,
            f"Model card: {data.name} outcome ({bundle.meta['target']['name']})",
            _intro(bundle, data.name, split),
            _card_sections(bundle, result, figures),
            card_record(bundle.meta, result),
        )
    return result


def _banded(attrs: pd.DataFrame) -> pd.DataFrame:
    """Age in the audit's bands (<18, 18-39, 40-59, 60-79, 80+), with missing ages as their own 'missing' group."""
    out = attrs.copy()
    for col in out.columns:
        if pd.api.types.is_numeric_dtype(out[col]):
            bands = pd.cut(
                out[col],
                [-np.inf, 18, 40, 60, 80, np.inf],
                right=False,
                labels=["<18", "18-39", "40-59", "60-79", "80+"],
            )
            out[col] = bands.astype(object).where(out[col].notna(), "missing").astype(str)
    return out


def permutation_importance(
    params: dict[str, Any],
    logits: np.ndarray,
    emb: np.ndarray,
    table: pd.DataFrame,
    y: np.ndarray,
    selected: str,
    bundle: Bundle,
    repeats: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """AUC drop when one declared clinical field (or the whole image) is shuffled across rows, for the clinical-only
    and the selected model; mean and std over ``repeats`` shuffles."""
    enc = ClinicalEncoder.from_json(params["encoder"])
    rng = np.random.default_rng(seed)
    base_x = enc.transform(table)
    base = {m: binary_metrics(y, p, 0.5)["auc"] for m, p in model_probabilities(params, logits, emb, base_x).items()}
    models = ["clinical"] + ([selected] if selected != "clinical" else [])
    out: dict[str, Any] = {"method": f"permutation, {repeats} repeats, AUC drop", "models": models, "fields": {}}
    if len(np.unique(y)) < 2:
        return out
    names = [f["name"] for f in bundle.input["clinical_fields"]] + ["(image)"]
    for name in names:
        drops: dict[str, list[float]] = {m: [] for m in models}
        for _ in range(repeats):
            perm = rng.permutation(len(y))
            if name == "(image)":
                p = model_probabilities(params, logits[perm], emb[perm], base_x)
            else:
                shuffled = table.copy()
                if name in shuffled:
                    shuffled[name] = shuffled[name].to_numpy()[perm]
                p = model_probabilities(params, logits, emb, enc.transform(shuffled))
            for m in models:
                drops[m].append(base[m] - binary_metrics(y, p[m], 0.5)["auc"])
        out["fields"][name] = {m: {"mean": float(np.mean(d)), "std": float(np.std(d))} for m, d in drops.items()}
    return out


def _importance_plot(imp: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import io

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


def _gradcam_examples(
    model: Any, images: np.ndarray, y: np.ndarray, score: np.ndarray, thr: float, per_cell: int = 2
) -> tuple[dict[str, Any], bytes | None]:
    dec = (score >= thr).astype(int)
    cells = {
        "true positive": np.flatnonzero((y == 1) & (dec == 1)),
        "false positive": np.flatnonzero((y == 0) & (dec == 1)),
        "true negative": np.flatnonzero((y == 0) & (dec == 0)),
        "false negative": np.flatnonzero((y == 1) & (dec == 0)),
    }
    chosen = [(c, int(i)) for c, ix in cells.items() for i in ix[:per_cell]]
    if not chosen:
        return {"examples": []}, None
    idx = [i for _, i in chosen]
    maps = gradcam(model, cls_task.gradcam_layer(model), images[idx], [1] * len(idx))
    panels = [(f"{c} (p={score[i]:.2f})", overlay(images[i], h)) for (c, i), h in zip(chosen, maps, strict=True)]
    sample = np.random.default_rng(0).choice(len(images), size=min(8, len(images)), replace=False)
    sanity = sanity_check(model, "layer4", images[sample], [1] * len(sample))
    return {
        "method": "Grad-CAM (captum LayerGradCam on layer4), target = outcome",
        "examples": [{"kind": c, "index": i} for c, i in chosen],
        "sanity_check": sanity,
    }, overlay_grid(panels)


def _intro(bundle: Bundle, data_name: str, split: str) -> str:
    tr = bundle.meta["training"]
    return html.escape(
        f"Outcome '{bundle.meta['target']['name']}' on the {split} split of {data_name}. "
        f"CNN trained {tr['epochs_run']} epochs (best {tr['best_epoch']}, seed {tr['seed']}, "
        f"{tr['seconds']} s on {tr['device']}). Every metric "
        "shows a 95% bootstrap confidence interval over patients. Not for clinical use: no clinical study."
    )


def _card_sections(bundle: Bundle, r: dict[str, Any], figures: list[Figure]) -> list[Section]:
    from medsight.evaluation.card import subgroup_section

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
            html.escape(
                f"n = {r['n']} images of {r['n_patients']} patients, "
                f"{r['positives']} positive. {fusion}. {sel['rule']}."
            ),
            models,
            [f for f in figures if f.title == "ROC"],
            raw_html=_table(deltas),
        ),
        Section(
            "Deployed model at the operating point",
            html.escape(
                f"Threshold {op['threshold']:.4f} on p({bundle.meta['target']['name']}), method "
                f"{op['method']}, chosen on validation."
            ),
            sel_rows,
        ),
        subgroup_section(r.get("subgroups") or {}),
        Section(
            "Explanations",
            html.escape(
                f"Clinical fields: {imp.get('method', '')}. Image branch: {ex.get('method', 'none')}; "
                f"sanity check passed: {sanity.get('passed')} (mean |rho| "
                f"{sanity.get('mean_abs_spearman', float('nan')):.3f})."
            ),
            imp_rows,
            [f for f in figures if f.title != "ROC"],
        ),
        Section(
            "Model and data",
            "",
            [
                ["item", "value"],
                ["CNN", f"{bundle.meta['network']['name']} ({bundle.meta['network']['parameters']} parameters)"],
                ["clinical fields", ", ".join(f"{f['name']} ({f['kind']})" for f in bundle.input["clinical_fields"])],
                ["missing values", "indicator columns + train median / 'missing' category; no patient dropped"],
                ["missing rate (train)", ", ".join(f"{k} {v:.0%}" for k, v in d["missing_rate_train"].items())],
                ["rows left out", ", ".join(f"{k}: {v}" for k, v in d["excluded"].items())],
                [
                    "split",
                    f"{d['split_method']}; images {d['n']}, patients {d['n_patients']}, positives {d['positives']}",
                ],
                ["fusion", bundle.meta["training"]["fusion"]],
                ["versions", ", ".join(f"{k} {v}" for k, v in bundle.meta["versions"].items())],
            ],
        ),
    ]


def _table(rows: list[list[Any]]) -> str:
    from medsight.evaluation.card import html_table

    return html_table(rows)


# ------------------------------------------------------------------------------------------------- prediction


def _read_inputs(inputs: list[Path], fields: list[str]) -> tuple[list[Path], pd.DataFrame, list[str]]:
    """Images and their clinical fields: a CSV (column ``image`` relative to the CSV, plus field columns), or image
    files with an optional sidecar ``<file>.json`` of field values. Absent fields are missing values."""
    paths: list[Path] = []
    rows: list[dict[str, Any]] = []
    names: list[str] = []
    for p in inputs:
        if p.suffix.lower() == ".csv":
            frame = pd.read_csv(p, dtype=str, keep_default_na=False)
            if "image" not in frame:
                raise MedsightError("a clinical CSV for predict needs an 'image' column", p)
            for _, row in frame.iterrows():
                paths.append(p.parent / str(row["image"]))
                rows.append({f: row.get(f, "") for f in fields})
                names.append(str(row["image"]))
        else:
            side = p.with_name(p.name + ".json")
            values = json.loads(side.read_text()) if side.is_file() else {}
            paths.append(p)
            rows.append({f: values.get(f, "") for f in fields})
            names.append(p.name)
    return paths, pd.DataFrame(rows, columns=fields), names


def predict(bundle_path: Path, inputs: list[Path], out: Path, explain: bool = False, **_: Any) -> list[dict[str, Any]]:
    """p(outcome) from all four models, the deployed model's decision, and (``explain``) a Grad-CAM heatmap."""
    bundle = load_bundle(bundle_path)
    if not inputs:
        raise MedsightError("no input files given")
    fields = [f["name"] for f in bundle.input["clinical_fields"]]
    paths, table, names = _read_inputs(inputs, fields)
    size = int(bundle.input["spatial_size"][0])
    images = _images(paths, size)
    model, logits, emb, x = _inputs(bundle, images, table)
    probs = model_probabilities(bundle.meta["models"], logits, emb, x)
    sel = bundle.meta["selection"]["selected"]
    thr = float(bundle.meta["operating_point"]["threshold"])
    target = bundle.meta["target"]["name"]
    results = []
    with atomic_dir(out) as tmp:
        for k, (path, name) in enumerate(zip(paths, names, strict=True)):
            p = float(probs[sel][k])
            missing = [f for f in fields if str(table.iloc[k][f]).strip() == ""]
            entry: dict[str, Any] = {
                "input": name,
                "probabilities": {m: float(v[k]) for m, v in probs.items()},
                "model": sel,
                "decision": target if p >= thr else f"not {target}",
                "operating_point": {"threshold": thr, "on": sel},
                "missing_fields": missing,
                "summary": f"p({target}) = {p:.3f} ({LABELS[sel]}) -> {'positive' if p >= thr else 'negative'} at "
                f"{thr:.3f}; {len(missing)} of {len(fields)} clinical fields missing",
            }
            stem = f"{k:03d}_" + "".join(c if c.isalnum() or c in "-_" else "_" for c in path.stem)[:40]
            if explain:
                heat = gradcam(model, cls_task.gradcam_layer(model), images[k : k + 1], [1])[0]
                rgb = overlay(images[k], heat)
                (tmp / f"{stem}_gradcam.png").write_bytes(png_image(np.kron(rgb, np.ones((2, 2, 1), np.uint8))))
                np.save(tmp / f"{stem}_gradcam.npy", heat)
                entry["heatmap"] = {
                    "image": f"{stem}_gradcam.png",
                    "array": f"{stem}_gradcam.npy",
                    "method": "Grad-CAM",
                    "target": target,
                }
            if path.is_file() and is_dicom_file(path):
                from medsight.io.dicom import read_datasets
                from medsight.serving.dicom_objects import Finding, write_sr

                write_sr(
                    [Finding(label=target, probability=p)],
                    [read_datasets([path])[0]],
                    tmp / f"{stem}_sr.dcm",
                    f"medsight {bundle.meta['data']['source']} outcome",
                    str(bundle.meta["versions"]["medsight"]),
                )
                entry["dicom"] = {"sr": f"{stem}_sr.dcm"}
            results.append(entry)
        write_json(
            tmp / "predictions.json",
            {"bundle": str(bundle_path), "model": bundle.meta["data"]["source"], "predictions": results},
        )
    return results
