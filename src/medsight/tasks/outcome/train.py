"""Training: the CNN on the one engine (``medsight.training.trainer.fit``), then the clinical and fusion models on
train; temperature, model selection and the operating point on validation; a validated bundle out."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medsight import config
from medsight.data import splits
from medsight.data.clinical import ClinicalEncoder
from medsight.data.fingerprint import case_hashes, training_record
from medsight.data.fingerprint_stats import array_samples, distribution_fingerprint
from medsight.evaluation.calibration import TemperatureScaler
from medsight.evaluation.metrics import binary_metrics
from medsight.evaluation.selective import SelectivePrediction
from medsight.io.atomic import atomic_dir
from medsight.runtime.onnx_export import export_onnx
from medsight.tasks.classification.network import NETWORK, build_network
from medsight.tasks.outcome import data as outcome_data
from medsight.tasks.outcome.data import event_counts
from medsight.tasks.outcome.models import FittedModels, OperatingPoint, image_probability, select_model, two_class
from medsight.tasks.outcome.network import WithEmbedding, image_outputs
from medsight.tasks.outcome.plan import OutcomeOptions, OutcomePlan, OutcomePlanner
from medsight.training.bundle import FORMAT, ONNX, WEIGHTS, library_versions, now_iso, write_bundle_json
from medsight.training.seed import seed_everything
from medsight.training.trainer import AugmentedArrays, TrainConfig, TrainResult, fit
from medsight.transforms import augmentation

log = logging.getLogger("medsight")


def train(spec: str, out: Path, options: OutcomeOptions) -> dict[str, Any]:
    """Train the four models on the train split; calibrate, select and pick the operating point on val."""
    seed = options.seed
    seed_everything(seed)
    torch.set_num_threads(config.num_threads())
    data = outcome_data.load(spec)
    split_seed = splits.split_seed(options.split_seed)  # which cases are tested never depends on the training seed
    parts = data.split(split_seed)
    tr, va = parts["train"], parts["val"]
    y = data.y
    plan = OutcomePlanner(options, y[tr]).plan()
    # the planner names the training seed as the split's; the split seed is what split the data
    plan = dataclasses.replace(
        plan, split=f"patient-level 70/10/20 (StratifiedGroupKFold on the outcome), split seed {split_seed}"
    )
    log.info(
        "plan: %d px ResNet, batch %d, lr %g, up to %d epochs (patience %d, budget %s s), deployed model by %s",
        plan.image_size,
        plan.batch_size,
        plan.lr,
        plan.epochs,
        plan.patience,
        plan.time_budget_s,
        plan.selection_rule,
    )
    images = outcome_data.read_images(data.images, plan.image_size)
    encoder = ClinicalEncoder(data.fields).fit(data.table.iloc[tr])
    x_clin = encoder.transform(data.table)

    model = build_network(plan.network)
    device = config.device()
    result = _fit_cnn(model, images, y, tr, va, plan, seed, device)
    model.cpu().eval()
    logits, emb = image_outputs(model, images)
    scaler = TemperatureScaler().fit(logits[va], y[va])
    fitted = FittedModels.fit(
        scaler.temperature_, encoder, emb[tr], x_clin[tr], y[tr], plan.clinical_c, plan.embed_components, seed
    )
    probs = fitted.probabilities(logits, emb, x_clin)
    val_auc = {m: binary_metrics(y[va], p[va], 0.5)["auc"] for m, p in probs.items()}
    selection = select_model(val_auc, plan.selection_rule)
    operating = OperatingPoint.choose(y[va], probs[selection.selected][va], plan.target_sensitivity, selection.selected)
    rule = fit_selective(probs[selection.selected][va], y[va], operating.threshold, data.patient_ids, va, plan.alpha)
    meta = _meta(data, parts, plan, options, model, fitted, selection.to_json(), operating.to_json(), result, device)
    meta["selective_prediction"] = rule.to_json()
    meta["data"] |= {
        "split_seed": split_seed,
        "case_hashes": training_record(case_hashes(images[tr]), case_hashes(images[va])),
        # what the shift report compares another site's images and outcome share with (docs/trust.md)
        "distribution": distribution_fingerprint(
            array_samples(images[tr], np.asarray(y[tr]).astype(int)), meta["label_names"], meta["data"]["modality"]
        ),
    }
    with atomic_dir(out) as tmp:
        torch.save(model.state_dict(), tmp / WEIGHTS)
        onnx = export_onnx(WithEmbedding(model), torch.as_tensor(images[va][:2]), tmp / ONNX)
        meta["onnx"] = {**onnx, "outputs": {"logits": [0, 2], "embedding": [2, 2 + int(emb.shape[1])]}}
        write_bundle_json(tmp, meta)
    log.info("bundle written to %s (selected %s, val AUC %s)", out, selection.selected, val_auc)
    return meta


def missing_rates(encoder: ClinicalEncoder, table: pd.DataFrame) -> dict[str, float]:
    """Share of ``table``'s rows where each field is missing as the encoder reads it (empty, NA, ?, ...)."""
    described = encoder.describe(table)
    return {
        f.name: float(np.mean([f.name in missing for missing, _ in described])) if described else 0.0
        for f in encoder.fields
        if f.name in table
    }


def fit_selective(
    p: np.ndarray, y: np.ndarray, threshold: float, patient_ids: list[str], rows: np.ndarray, alpha: float
) -> SelectivePrediction:
    """Conformal sets over {not outcome, outcome} and the deferral rule on the validation rows ``rows`` of the
    deployed model; calibrated per patient (a patient's images are one unit, see ``evaluation.conformal``)."""
    two = two_class(p)
    decided = (np.asarray(p) >= threshold).astype(int)
    groups = np.asarray([patient_ids[i] for i in rows])
    return SelectivePrediction.fit(two, y, decided, alpha, groups=groups)


def _fit_cnn(
    model: torch.nn.Module,
    images: np.ndarray,
    y: np.ndarray,
    tr: np.ndarray,
    va: np.ndarray,
    plan: OutcomePlan,
    seed: int,
    device: str,
) -> TrainResult:
    """Class-weighted cross-entropy, warm-up + cosine, best validation AUC kept (``trainer.fit`` on the engine)."""
    cfg = TrainConfig(
        epochs=plan.epochs,
        batch_size=plan.batch_size,
        lr=plan.lr,
        weight_decay=plan.weight_decay,
        patience=plan.patience,
        time_budget_s=plan.time_budget_s,
        seed=seed,
        device=device,
        warmup_epochs=plan.warmup_epochs,
    )

    def validate(logits: np.ndarray) -> tuple[float, dict[str, float]]:
        auc = binary_metrics(y[va], image_probability(logits, 1.0), 0.5)["auc"]
        return (0.0 if np.isnan(auc) else auc), {"val_auc": auc}

    weight = torch.as_tensor(plan.class_weights, dtype=torch.float32)
    return fit(
        model,
        AugmentedArrays(images[tr], y[tr], augmentation(plan.augmentation, 2, seed)),
        images[va],
        torch.nn.CrossEntropyLoss(weight=weight.to(device)),
        validate,
        cfg,
    )


def _meta(
    data: outcome_data.OutcomeData,
    parts: dict[str, np.ndarray],
    plan: OutcomePlan,
    options: OutcomeOptions,
    model: torch.nn.Module,
    fitted: FittedModels,
    selection: dict[str, Any],
    operating: dict[str, Any],
    result: TrainResult,
    device: str,
) -> dict[str, Any]:
    tr = parts["train"]
    y = data.y
    size = plan.image_size
    return {
        "format": FORMAT,
        "task": "outcome",
        "task_type": "binary",
        "label_names": [f"not {data.target_name}", data.target_name],
        "target": {"name": data.target_name, "column": data.target, "time_to_event": data.time is not None},
        "input": {
            "spatial_dims": 2,
            "spatial_size": [size, size],
            "n_channels": 1,
            "layout": "N,C,H,W",
            "dtype": "float32",
            "clinical_fields": [{"name": f.name, "kind": f.kind} for f in data.fields],
        },
        "plan": plan.to_json(),
        "options": options.given(),
        "preprocessing": {
            "steps": [
                "image: mean of colour channels, ScaleIntensity to [0, 1], "
                f"Resize to {size}x{size} (area when shrinking; aspect ratio not kept)",
                "clinical: numeric -> (value or train median - train mean) / train std, plus a 0/1 missing "
                "indicator; categorical -> one-hot over train categories plus a 'missing' column",
            ],
            "augmentation": repr(augmentation(plan.augmentation, 2, options.seed).transforms),
        },
        "network": {
            "name": NETWORK,
            "kwargs": plan.network,
            "parameters": int(sum(p.numel() for p in model.parameters())),
        },
        "models": fitted.to_json(),
        "selection": selection,
        "data": {
            "source": data.name,
            "modality": "radiography",
            "split_method": plan.split,
            "n": {k: len(v) for k, v in parts.items()},
            "n_patients": {k: len({data.patient_ids[i] for i in v}) for k, v in parts.items()},
            "positives": {k: int(y[v].sum()) for k, v in parts.items()},
            "patients_with_event": {
                k: event_counts(y[v], [data.patient_ids[i] for i in v])["patients_with_event"] for k, v in parts.items()
            },
            "excluded": data.excluded,
            "missing_rate_train": missing_rates(fitted.encoder, data.table.iloc[tr]),
            "fingerprint": data.fingerprint,
        },
        "training": {
            "seed": options.seed,
            "epochs_requested": plan.epochs,
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "stopped_by": result.stopped_by,
            "seconds": round(result.seconds, 1),
            "time_budget_s": plan.time_budget_s,
            "optimizer": f"AdamW(lr={plan.lr}, weight_decay={plan.weight_decay}), "
            "warm-up + cosine, class-weighted cross-entropy",
            "batch_size": plan.batch_size,
            "device": device,
            "selection": "best validation AUC (CNN)",
            "history": result.history,
            "warnings": result.warnings,
            "clinical_model": f"scikit-learn LogisticRegression(C={plan.clinical_c}, class_weight='balanced')",
            "fusion": f"embedding: PCA({plan.embed_components}) of the CNN's penultimate features + clinical "
            f"features -> LogisticRegression(C={plan.clinical_c}, balanced); late: mean of the temperature-scaled "
            "CNN probability and the clinical probability",
        },
        "calibration": {"method": "temperature scaling (CNN)", "fitted_on": "val", "temperature": fitted.temperature},
        "operating_point": operating,
        "metrics": {"val": {f"auc_{m}": v for m, v in selection["val_auc"].items()}},
        "versions": library_versions(),
        "created": now_iso(),
    }
