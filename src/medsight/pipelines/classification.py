"""Classification end to end: train a bundle, evaluate it into a model card, predict on new files."""

from __future__ import annotations

import html
import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from medsight import config
from medsight.data.dataset import ClassificationData
from medsight.data.sources import load_classification
from medsight.errors import MedsightError
from medsight.evaluation.calibration import TemperatureScaler, brier_score, expected_calibration_error
from medsight.evaluation.card import Figure, Section, card_record, fmt, subgroup_section, write_card, write_figures
from medsight.evaluation.metrics import (
    N_BOOTSTRAP,
    binary_metrics,
    bootstrap,
    multiclass_metrics,
    multilabel_metrics,
)
from medsight.evaluation.operating_point import choose_threshold
from medsight.evaluation.plots import (
    confusion_plot,
    overlay_grid,
    png_image,
    pr_plot,
    reliability_plot,
    roc_plot,
)
from medsight.evaluation.subgroups import audit
from medsight.explain.gradcam import gradcam, overlay, sanity_check
from medsight.io.atomic import atomic_dir, write_json
from medsight.io.images import is_dicom_file, read_image
from medsight.runtime.onnx_export import OnnxPredictor, export_onnx
from medsight.tasks import classification as task
from medsight.training.bundle import (
    BUNDLE_JSON,
    FORMAT,
    ONNX,
    WEIGHTS,
    Bundle,
    library_versions,
    load_bundle,
    now_iso,
)
from medsight.training.seed import seed_everything
from medsight.training.trainer import AugmentedArrays, TrainConfig, fit, predict_logits
from medsight.transforms import augmentation, prepare

log = logging.getLogger("medsight")


def train(
    spec: str,
    out: Path,
    seed: int = 0,
    epochs: int = 40,
    time_budget_s: float | None = None,
    batch_size: int = 128,
    lr: float = 2e-3,
    target_sensitivity: float | None = None,
    balanced: bool | None = None,
    width: int = 16,
    **_: Any,
) -> dict[str, Any]:
    """Train on ``spec``'s train split, select on val, calibrate and pick the operating point on val."""
    seed_everything(seed)
    torch.set_num_threads(config.num_threads())
    data = load_classification(spec, seed=seed)
    train_split, val_split = data.split("train"), _val_split(data)
    if balanced is None:
        balanced = task.is_imbalanced(data.task_type, train_split.labels)
    kwargs = task.plan_network(data.spatial_dims, data.spatial_size, data.n_channels, data.n_outputs, width)
    model = task.build_network(kwargs)
    cfg = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, time_budget_s=time_budget_s, seed=seed, device=config.device()
    )
    log.info(
        "training %s: %s, %d labels, %d train / %d val images of %s, %s on %s",
        data.name,
        data.task_type,
        data.n_outputs,
        len(train_split),
        len(val_split),
        "x".join(map(str, [data.n_channels, *data.spatial_size])),
        "ResNet",
        cfg.device,
    )
    started = time.monotonic()
    result = fit(
        model,
        AugmentedArrays(train_split.images, train_split.labels, augmentation(data.modality, data.spatial_dims, seed)),
        val_split.images,
        task.loss_fn(data.task_type, train_split.labels, balanced),
        lambda logits: _validation_score(data, val_split.labels, logits),
        cfg,
    )
    model.cpu().eval()
    val_logits = predict_logits(model, val_split.images, "cpu")
    scaler = TemperatureScaler(multilabel=data.task_type == "multilabel").fit(val_logits, val_split.labels)
    val_probs = task.probabilities(val_logits, data.task_type, scaler.temperature_)
    operating = _operating_point(data, val_split.labels, val_probs, target_sensitivity)
    val_metrics = summary_metrics(data.task_type, val_split.labels, val_probs, operating)

    meta: dict[str, Any] = {
        "format": FORMAT,
        "task": "classification",
        "task_type": data.task_type,
        "label_names": data.label_names,
        "input": {
            "spatial_dims": data.spatial_dims,
            "spatial_size": data.spatial_size,
            "n_channels": data.n_channels,
            "layout": "N,C," + ("D,H,W" if data.spatial_dims == 3 else "H,W"),
            "dtype": "float32",
        },
        "preprocessing": {
            "steps": [
                "channels: mean of colour channels for a 1-channel model, repeat grey for a 3-channel one",
                "ScaleIntensity(minv=0, maxv=1) per image",
                f"Resize(spatial_size={data.spatial_size}, mode=area when shrinking)",
            ],
            "augmentation": repr(augmentation(data.modality, data.spatial_dims, seed).transforms),
        },
        "network": {
            "name": task.NETWORK,
            "kwargs": kwargs,
            "parameters": int(sum(p.numel() for p in model.parameters())),
        },
        "data": {
            "source": data.name,
            "modality": data.modality,
            "split_method": data.split_method,
            "n": {k: len(v) for k, v in data.splits.items()},
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
            "optimizer": f"AdamW(lr={lr}, weight_decay={cfg.weight_decay}), warm-up + cosine",
            "batch_size": batch_size,
            "loss": ("class-balanced " if balanced else "")
            + ("BCE per label" if data.task_type == "multilabel" else "cross-entropy"),
            "device": cfg.device,
            "selection": "best validation " + ("AUC" if data.task_type != "multiclass" else "macro AUC"),
            "history": result.history,
        },
        "calibration": {"method": "temperature scaling", "fitted_on": "val", "temperature": scaler.temperature_},
        "operating_point": operating,
        "metrics": {"val": val_metrics},
        "versions": library_versions(),
        "created": now_iso(),
    }
    with atomic_dir(out) as tmp:
        torch.save(model.state_dict(), tmp / WEIGHTS)
        example = torch.as_tensor(val_split.images[: min(4, len(val_split))])
        meta["onnx"] = export_onnx(model, example, tmp / ONNX)
        write_json(tmp / BUNDLE_JSON, meta)
    log.info("bundle written to %s (best epoch %d, val AUC %.4f)", out, result.best_epoch, val_metrics["auc"])
    return meta


def _val_split(data: ClassificationData) -> Any:
    if "val" in data.splits:
        return data.splits["val"]
    raise MedsightError("no validation split: model selection and calibration need one", data.name)


def _validation_score(
    data: ClassificationData, labels: np.ndarray, logits: np.ndarray
) -> tuple[float, dict[str, float]]:
    probs = task.probabilities(logits, data.task_type)
    if data.task_type == "binary":
        m = binary_metrics(labels, probs[:, 1], 0.5)
    elif data.task_type == "multiclass":
        m = multiclass_metrics(labels, probs)
    else:
        m = multilabel_metrics(labels, probs)
    auc = m["auc"] if not np.isnan(m["auc"]) else m["accuracy"]
    return float(auc), {"val_auc": m["auc"], "val_accuracy": m["accuracy"]}


def _operating_point(
    data: ClassificationData, labels: np.ndarray, probs: np.ndarray, target_sensitivity: float | None
) -> dict[str, Any]:
    if data.task_type == "binary":
        op = choose_threshold(labels, probs[:, 1], target_sensitivity)
        return {**op, "chosen_on": "val", "applies_to": data.label_names[1]}
    if data.task_type == "multilabel":
        per = [choose_threshold(labels[:, k], probs[:, k], target_sensitivity) for k in range(labels.shape[1])]
        return {"method": per[0]["method"], "thresholds": [p["threshold"] for p in per], "chosen_on": "val"}
    return {"method": "argmax", "chosen_on": "none (multi-class decisions take the most probable class)"}


def summary_metrics(
    task_type: str, labels: np.ndarray, probs: np.ndarray, operating: dict[str, Any]
) -> dict[str, float]:
    """Point metrics at the operating point (no CIs): what bundle.json records for validation."""
    if task_type == "binary":
        return binary_metrics(labels, probs[:, 1], float(operating["threshold"]))
    if task_type == "multiclass":
        return multiclass_metrics(labels, probs)
    return multilabel_metrics(labels, probs, np.asarray(operating["thresholds"]))


# ----------------------------------------------------------------------------------------------- evaluation


def _like(bundle: Bundle) -> dict[str, Any]:
    return {**bundle.input, "label_names": bundle.label_names, "task_type": bundle.meta["task_type"]}


def _logits(bundle: Bundle, images: np.ndarray) -> np.ndarray:
    """Logits through ONNX Runtime (the deployed path), in batches."""
    runner = OnnxPredictor(bundle.onnx_path)
    return np.concatenate([runner.run(images[i : i + 256]) for i in range(0, len(images), 256)])


def evaluate(
    bundle_path: Path, spec: str, split: str, out: Path, n_boot: int = N_BOOTSTRAP, **_: Any
) -> dict[str, Any]:
    """Metrics with 95% bootstrap CIs, calibration, operating point, subgroups and Grad-CAM → metrics.json + card."""
    bundle = load_bundle(bundle_path)
    task_type = str(bundle.meta["task_type"])
    data = load_classification(spec, like=_like(bundle), seed=int(bundle.meta["training"]["seed"]))
    part = data.split(split)
    labels = part.labels
    temperature = float(bundle.meta["calibration"]["temperature"])
    logits = _logits(bundle, part.images)
    probs_raw = task.probabilities(logits, task_type)
    probs = task.probabilities(logits, task_type, temperature)
    operating = bundle.meta["operating_point"]
    names = bundle.label_names
    strata = labels if task_type != "multilabel" else None

    result: dict[str, Any] = {
        "split": split,
        "n": len(part),
        "data": data.name,
        "task_type": task_type,
        "bundle": str(bundle_path),
        "labels": names,
    }
    figures: list[Figure] = []
    if task_type == "binary":
        score, thr = probs[:, 1], float(operating["threshold"])
        decision = (score >= thr).astype(int)
        result["metrics"] = bootstrap(
            lambda ix: binary_metrics(labels[ix], score[ix], thr), len(labels), strata, n_boot
        )
        result["operating_point"] = {
            **operating,
            "at_0.5": bootstrap(lambda ix: binary_metrics(labels[ix], score[ix], 0.5), len(labels), strata, n_boot),
        }
        result["calibration"] = _calibration_effect(labels, probs_raw[:, 1], score, temperature)
        figures += [
            Figure(
                "ROC",
                roc_plot(
                    {names[1]: (labels, score)},
                    (result["metrics"]["sensitivity"]["value"], result["metrics"]["specificity"]["value"]),
                ),
            ),
            Figure("Precision-recall", pr_plot({names[1]: (labels, score)})),
            Figure(
                "Reliability",
                reliability_plot(labels, {"uncalibrated": probs_raw[:, 1], f"temperature {temperature:.2f}": score}),
                "Observed frequency of the positive class against predicted probability.",
            ),
            Figure("Confusion matrix", confusion_plot(labels, decision, names), f"threshold {thr:.3f}"),
        ]
        if part.attributes is not None and len(part.attributes.columns):
            result["subgroups"] = audit(labels, score, decision, part.attributes)
        else:
            result["subgroups"] = {}
    elif task_type == "multiclass":
        pred = probs.argmax(1)
        decision = pred
        result["metrics"] = bootstrap(lambda ix: multiclass_metrics(labels[ix], probs[ix]), len(labels), strata, n_boot)
        result["per_class"] = {
            name: bootstrap(partial(_one_vs_rest, labels, probs, pred, c), len(labels), strata, n_boot)
            for c, name in enumerate(names)
        }
        result["operating_point"] = operating
        result["calibration"] = _calibration_effect(labels, probs_raw, probs, temperature, multiclass=True)
        onehot = np.eye(len(names))[labels]
        figures += [
            Figure("ROC (one-vs-rest)", roc_plot({n: (onehot[:, c], probs[:, c]) for c, n in enumerate(names)})),
            Figure("Confusion matrix", confusion_plot(labels, pred, names)),
        ]
        result["subgroups"] = {}
    else:
        thresholds = np.asarray(operating["thresholds"])
        decision = (probs >= thresholds).astype(int)
        result["metrics"] = bootstrap(
            lambda ix: multilabel_metrics(labels[ix], probs[ix], thresholds), len(labels), None, n_boot
        )
        result["per_class"] = {
            name: bootstrap(partial(_label_metrics, labels, probs, thresholds, c), len(labels), None, n_boot)
            for c, name in enumerate(names)
        }
        result["operating_point"] = operating
        result["calibration"] = _calibration_effect(labels.ravel(), probs_raw.ravel(), probs.ravel(), temperature)
        result["subgroups"] = {}

    model = bundle.network("cpu")
    result["explanations"], overlay_png = _explain_sample(model, part.images, labels, decision, task_type, names)
    if overlay_png:
        figures.append(
            Figure(
                "Grad-CAM examples",
                overlay_png,
                "Where the model looked, for a sample of correct and incorrect decisions on the test images.",
            )
        )
    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", result)
        write_figures(tmp, figures)
        write_card(
            tmp,
            f"Model card: {bundle.meta['data']['source']} ({task_type} classification)",
            _intro(bundle, data.name, split),
            _card_sections(bundle, result, figures),
            card_record(bundle.meta, result),
        )
    return result


def _label_metrics(
    y: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, c: int, ix: np.ndarray
) -> dict[str, float]:
    return binary_metrics(y[ix, c], probs[ix, c], float(thresholds[c]))


def _one_vs_rest(y: np.ndarray, probs: np.ndarray, pred: np.ndarray, c: int, ix: np.ndarray) -> dict[str, float]:
    y, probs, pred = y[ix], probs[ix], pred[ix]
    m = binary_metrics((y == c).astype(int), probs[:, c], 0.5)
    hit = binary_metrics((y == c).astype(int), (pred == c).astype(float), 0.5)
    for k in ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1"):
        m[k] = hit[k]
    return m


def _calibration_effect(
    y: np.ndarray, before: np.ndarray, after: np.ndarray, temperature: float, multiclass: bool = False
) -> dict[str, Any]:
    def measures(p: np.ndarray) -> dict[str, float]:
        if multiclass:
            onehot = np.eye(p.shape[1])[y]
            return {
                "ece": expected_calibration_error(p.argmax(1) == y, p.max(1)),
                "brier": float(np.mean(np.sum((p - onehot) ** 2, axis=1))),
            }
        return {"ece": expected_calibration_error(y, p), "brier": brier_score(y, p)}

    return {
        "method": "temperature scaling",
        "fitted_on": "val",
        "temperature": temperature,
        "before": measures(before),
        "after": measures(after),
    }


def _explain_sample(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    decision: np.ndarray,
    task_type: str,
    names: list[str],
    per_cell: int = 2,
    n_sanity: int = 16,
) -> tuple[dict[str, Any], bytes | None]:
    """Grad-CAM overlays for TP/FP/TN/FN examples (binary) or correct/incorrect ones, plus the sanity check."""
    if task_type == "multilabel":
        truth, dec = labels[:, 0].astype(int), decision[:, 0]
    else:
        truth, dec = labels.astype(int), decision.astype(int)
    cells: dict[str, np.ndarray]
    if task_type == "binary" or task_type == "multilabel":
        cells = {
            "true positive": np.flatnonzero((truth == 1) & (dec == 1)),
            "false positive": np.flatnonzero((truth == 0) & (dec == 1)),
            "true negative": np.flatnonzero((truth == 0) & (dec == 0)),
            "false negative": np.flatnonzero((truth == 1) & (dec == 0)),
        }
    else:
        cells = {"correct": np.flatnonzero(truth == dec), "incorrect": np.flatnonzero(truth != dec)}
    chosen = [(cell, int(i)) for cell, ix in cells.items() for i in ix[:per_cell]]
    if not chosen:
        return {"examples": [], "sanity_check": None}, None
    target_of = (
        (lambda i: 1) if task_type in ("binary",) else (lambda i: 0 if task_type == "multilabel" else int(dec[i]))
    )
    idx = [i for _, i in chosen]
    maps = gradcam(model, task.gradcam_layer(model), images[idx], [target_of(i) for i in idx])
    panels = []
    for (cell, i), heat in zip(chosen, maps, strict=True):
        rgb = overlay(images[i], heat)
        scale = max(1, 112 // rgb.shape[0])
        panels.append((f"{cell}: true {names[truth[i]]}", np.kron(rgb, np.ones((scale, scale, 1), np.uint8))))
    rng = np.random.default_rng(0)
    sample = rng.choice(len(images), size=min(n_sanity, len(images)), replace=False)
    sanity = sanity_check(model, "layer4", images[sample], [target_of(int(i)) for i in sample])
    examples = [{"kind": cell, "index": i, "target_class": names[target_of(i)]} for cell, i in chosen]
    return {
        "method": "Grad-CAM (captum LayerGradCam on layer4)",
        "examples": examples,
        "sanity_check": sanity,
    }, overlay_grid(panels)


def _intro(bundle: Bundle, data_name: str, split: str) -> str:
    tr = bundle.meta["training"]
    return html.escape(
        f"Evaluated on the {split} split of {data_name}. Trained {tr['epochs_run']} epochs (best {tr['best_epoch']},"
        f" seed {tr['seed']}, {tr['seconds']} s on {tr['device']}). Every metric shows a 95% bootstrap confidence "
        "interval."
    )


def _card_sections(bundle: Bundle, r: dict[str, Any], figures: list[Figure]) -> list[Section]:
    m = r["metrics"]
    keys = [k for k in ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "brier", "ece") if k in m]
    table: list[list[Any]] = [["metric", "at the operating point" if r["task_type"] == "binary" else "value"]]
    if r["task_type"] == "binary":
        table[0].append("at threshold 0.5")
        for k in keys:
            table.append([k, fmt(m[k]), fmt(r["operating_point"]["at_0.5"][k])])
    else:
        table += [[k, fmt(m[k])] for k in keys]
    sections = [
        Section(
            "Performance",
            f"n = {r['n']} images ({r['split']} split).",
            table,
            [f for f in figures if "Grad-CAM" not in f.title and "Reliability" not in f.title],
        )
    ]
    if "per_class" in r:
        pk = ["auc", "sensitivity", "specificity", "ppv", "f1"]
        rows: list[list[Any]] = [["class", *pk]]
        rows += [[name, *[fmt(v.get(k)) for k in pk]] for name, v in r["per_class"].items()]
        sections.append(Section("Per class", "", rows))
    op = r["operating_point"]
    if "threshold" in op:
        sections.append(
            Section(
                "Operating point",
                html.escape(
                    f"Method {op['method']}, chosen on the validation split: threshold {op['threshold']:.4f} "
                    f"on p({op.get('applies_to')})"
                    f" (validation sensitivity {op['val_sensitivity']:.3f}, specificity {op['val_specificity']:.3f})."
                ),
            )
        )
    cal = r["calibration"]
    sections.append(
        Section(
            "Calibration",
            html.escape(f"Temperature scaling fitted on validation: T = {cal['temperature']:.3f}."),
            [
                ["", "ECE", "Brier"],
                ["before", fmt(cal["before"]["ece"]), fmt(cal["before"]["brier"])],
                ["after", fmt(cal["after"]["ece"]), fmt(cal["after"]["brier"])],
            ],
            [f for f in figures if "Reliability" in f.title],
        )
    )
    sections.append(subgroup_section(r.get("subgroups") or {}))
    ex = r.get("explanations") or {}
    sanity = ex.get("sanity_check") or {}
    text = (
        html.escape(
            f"{ex.get('method', '')}. Sanity check ({sanity.get('test')}): mean |Spearman rho| between maps of the "
            f"trained and a weight-randomised model = {sanity.get('mean_abs_spearman', float('nan')):.3f} over "
            f"{sanity.get('n_images')} images; passed: {sanity.get('passed')} (low correlation means the maps depend "
            "on what the model learned)."
        )
        if sanity
        else "No explanation examples."
    )
    sections.append(Section("Explanations", text, None, [f for f in figures if "Grad-CAM" in f.title]))
    d, tr = bundle.meta["data"], bundle.meta["training"]
    sections.append(
        Section(
            "Model and data",
            "",
            [
                ["item", "value"],
                [
                    "network",
                    f"{bundle.meta['network']['name']} ({bundle.meta['network'].get('parameters', '?')} parameters)",
                ],
                ["input", f"{bundle.input['n_channels']} x {bundle.input['spatial_size']}"],
                ["training data", f"{d['source']} ({d['modality']}), split: {d['split_method']}, n = {d['n']}"],
                ["optimiser", tr["optimizer"]],
                ["stopped by", tr["stopped_by"]],
                ["versions", ", ".join(f"{k} {v}" for k, v in bundle.meta["versions"].items())],
                ["ONNX vs PyTorch max |diff|", f"{bundle.meta['onnx']['max_abs_diff_vs_torch']:.2e}"],
            ],
        )
    )
    return sections


# ----------------------------------------------------------------------------------------------- prediction


def predict(bundle_path: Path, inputs: list[Path], out: Path, explain: bool = False, **_: Any) -> list[dict[str, Any]]:
    """Probabilities, the decision at the bundle's operating point, and (with ``explain``) a Grad-CAM heatmap.

    Every input is read and checked before anything is written; the output folder appears whole or not at all.
    """
    bundle = load_bundle(bundle_path)
    spec = bundle.input
    task_type, names = str(bundle.meta["task_type"]), bundle.label_names
    if not inputs:
        raise MedsightError("no input files given")
    raw = [read_image(p) for p in tqdm(inputs, desc="read", unit="file", disable=len(inputs) < 4)]
    for p, r in zip(inputs, raw, strict=True):
        if r.ndim - 1 != spec["spatial_dims"]:
            raise MedsightError(f"a {r.ndim - 1}D image, but the model takes {spec['spatial_dims']}D images", p)
    images = np.stack([prepare(r, spec["spatial_size"], spec["n_channels"]) for r in raw])
    probs = task.probabilities(_logits(bundle, images), task_type, float(bundle.meta["calibration"]["temperature"]))
    op = bundle.meta["operating_point"]
    model = bundle.network("cpu") if explain else None
    results: list[dict[str, Any]] = []
    with atomic_dir(out) as tmp:
        for k, (path, image, p) in enumerate(zip(inputs, images, probs, strict=True)):
            entry: dict[str, Any] = {
                "input": path.name,
                "probabilities": {n: float(v) for n, v in zip(names, p, strict=True)},
            }
            if task_type == "binary":
                entry["decision"] = names[int(p[1] >= op["threshold"])]
                entry["operating_point"] = {"threshold": op["threshold"], "method": op["method"], "on": names[1]}
                target = 1
            elif task_type == "multilabel":
                entry["decision"] = [n for n, v, t in zip(names, p, op["thresholds"], strict=True) if v >= t]
                target = int(np.argmax(p))
            else:
                entry["decision"] = names[int(np.argmax(p))]
                target = int(np.argmax(p))
            if model is not None:
                heat = gradcam(model, task.gradcam_layer(model), image[None], [target])[0]
                stem = f"{k:03d}_{_safe_stem(path)}"
                rgb = overlay(image, heat)
                scale = max(1, 224 // rgb.shape[0])
                (tmp / f"{stem}_gradcam.png").write_bytes(png_image(np.kron(rgb, np.ones((scale, scale, 1), np.uint8))))
                np.save(tmp / f"{stem}_gradcam.npy", heat)
                entry["heatmap"] = {
                    "image": f"{stem}_gradcam.png",
                    "array": f"{stem}_gradcam.npy",
                    "target": names[target],
                    "method": "Grad-CAM",
                }
            if path.is_file() and is_dicom_file(path):
                entry["dicom"] = _dicom_results(bundle, path, tmp, f"{k:03d}_{_safe_stem(path)}", entry)
            results.append(entry)
        write_json(
            tmp / "predictions.json",
            {"bundle": str(bundle_path), "model": bundle.meta["data"]["source"], "predictions": results},
        )
    return results


def _dicom_results(bundle: Bundle, path: Path, folder: Path, stem: str, entry: dict[str, Any]) -> dict[str, str]:
    """For a DICOM input: a TID 1500 SR of the class probabilities and, with a heatmap, a Secondary Capture
    of the heatmap over the full-resolution image, so a PACS viewer shows both beside the study."""
    from medsight.io.dicom import read_datasets, read_dicom_image
    from medsight.serving.dicom_objects import Finding, write_secondary_capture, write_sr

    source = read_datasets([path])[0]
    model_name = f"medsight {bundle.meta['data']['source']} classifier"
    findings = [Finding(label=name, probability=float(p)) for name, p in entry["probabilities"].items()]
    written = {"sr": f"{stem}_findings_sr.dcm"}
    write_sr(findings, [source], folder / written["sr"], model_name, str(bundle.meta["versions"]["medsight"]))
    if "heatmap" in entry:
        picture = read_dicom_image(path, voi=True)
        if picture.ndim == 2:
            heat = np.load(folder / entry["heatmap"]["array"])
            full = torch.nn.functional.interpolate(
                torch.as_tensor(heat)[None, None], size=picture.shape, mode="bilinear", align_corners=False
            )[0, 0].numpy()
            rgb = overlay(picture[None].astype(np.float32), np.clip(full, 0, 1))
            written["secondary_capture"] = f"{stem}_gradcam_sc.dcm"
            write_secondary_capture(rgb, source, folder / written["secondary_capture"])
    return written


def _safe_stem(path: Path) -> str:
    stem = path.name.split(".")[0] or "input"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:40]
