"""Train a classification bundle: plan from the data and measured speed, run the engine, calibrate, export.

Selection, calibration and the operating point all use the validation split; the test split is never read.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medsight import config
from medsight.data import splits
from medsight.data.dataset import ClassificationData, SplitData
from medsight.data.fingerprint import case_hashes, training_record
from medsight.data.fingerprint_stats import array_samples, distribution_fingerprint
from medsight.distributed import ddp
from medsight.errors import MedsightError
from medsight.evaluation.calibration import TemperatureScaler
from medsight.evaluation.conformal import DEFAULT_ALPHA
from medsight.evaluation.metrics import binary_metrics, multiclass_metrics, multilabel_metrics, ordinal_metrics
from medsight.evaluation.operating_point import choose_threshold
from medsight.evaluation.selective import MultilabelSelective, SelectivePrediction
from medsight.io.atomic import atomic_dir
from medsight.runtime.onnx_export import export_onnx
from medsight.tasks import registry
from medsight.tasks.classification import ordinal, recipes
from medsight.tasks.classification.data import load, load_like, positive_class, val_split
from medsight.tasks.classification.network import (
    LOGIT_AVERAGE,
    VIEW_AVERAGE,
    LogitAverage,
    ViewAverage,
    ensemble_spec,
    loss_fn,
    probabilities,
    unwrapped,
    view_candidates,
    view_names,
    view_spec,
)
from medsight.tasks.classification.plan import ClassificationOptions, ClassificationPlan, ClassificationPlanner
from medsight.tasks.classification.predict import decided_labels
from medsight.tasks.classification.steps import EVAL_BATCH, epoch_batches, loader, make_step
from medsight.training import warm_start
from medsight.training.bundle import FORMAT, ONNX, WEIGHTS, library_versions, now_iso, write_bundle_json
from medsight.training.engine import (
    AveragedWeights,
    EarlyStopping,
    Engine,
    KeepBest,
    LRSchedule,
    Progress,
    State,
    TimeBudget,
    Validate,
)
from medsight.training.seed import seed_everything
from medsight.training.trainer import predict_logits
from medsight.transforms import augmentation

log = logging.getLogger("medsight.train")


def train(spec: str, out: Path, options: ClassificationOptions) -> dict[str, Any]:
    """Train on ``spec``'s train split, select on val, calibrate and pick the operating point on val."""
    started = time.monotonic()
    seed_everything(options.seed)
    torch.set_num_threads(config.num_threads())
    device = config.device()
    split_seed = splits.split_seed(options.split_seed)  # which cases are tested never depends on the training seed
    parent = warm_start.open_parent(options.init, "classification") if options.init is not None else None
    data = load(spec, split_seed) if parent is None else _load_for(parent, spec, split_seed)
    positive = positive_class(data, options.positive or (parent.bundle.meta.get("positive_class") if parent else None))
    train_split, val = data.split("train"), val_split(data)
    log.info(
        "training %s: %s, %d labels, %d train / %d val images of %s",
        data.name,
        data.task_type,
        data.n_outputs,
        len(train_split),
        len(val),
        "x".join(map(str, [data.n_channels, *data.spatial_size])),
    )
    plan = ClassificationPlanner(data, options, device, started).plan()
    log.info(plan.summary())
    for warning in plan.warnings:
        log.warning(warning)

    compared = recipes.candidates(plan.losses or [plan.loss], plan.balance_choices or [plan.balanced_loss])
    runs = [_train_recipe(recipe, data, plan, options, parent, positive) for recipe in compared]
    ensemble = options.ensemble or "auto"
    # a fine-tuned model keeps its parent's network (training/warm_start.py): one model stays one, an ensemble stays
    # an ensemble (each recipe then fine-tunes all its members); seed members only ever join the ensemble
    # the plan holds one seed per recipe under --ensemble off and fine-tuning (plan.determine_seed_members)
    trained = runs + [
        _train_recipe(member, data, plan, options, parent, positive)
        for member in recipes.seed_members(compared, plan.seed_members)
    ]
    if ensemble != "off" and len(trained) > 1 and parent is None:
        runs.append(_ensemble_run(trained, data, plan, positive))
    elif ensemble == "on":
        log.warning("--ensemble on: no ensemble built (one recipe trained, or fine-tuning keeps the parent's network)")
    metric = recipes.selection_metric(data.task_type, data.ordinal)
    forced = ensemble == "on" and bool(runs[-1].recipe.members)
    chosen = (
        len(runs) - 1 if forced else recipes.choose([r.recipe for r in runs], [r.val_metrics for r in runs], metric)
    )
    run, views = _with_views(runs[chosen], data, plan, positive, options.tta or "auto", metric, parent)
    model, state, scaler, val_probs, operating, val_metrics = (
        run.model,
        run.state,
        run.scaler,
        run.val_probs,
        run.operating,
        run.val_metrics,
    )
    plan = dataclasses.replace(plan, balanced_loss=run.recipe.balanced, loss=run.recipe.loss)
    selection = recipes.record(
        [r.recipe for r in runs], [r.val_metrics for r in runs], metric, chosen, plan.class_balance
    )
    if forced:
        selection["rule"] = "the ensemble, as asked (--ensemble on); the candidates' validation scores are recorded"
    if len(runs) > 1:
        log.info(
            "recipes compared on validation %s: %s; kept %s",
            metric,
            ", ".join(f"{r.recipe.name} {r.val_metrics.get(metric, float('nan')):.4f}" for r in runs),
            run.recipe.name,
        )
    meta = _meta(data, plan, options, model, state, time.monotonic() - started, scaler.temperature_)
    meta |= {"operating_point": operating, "metrics": {"val": val_metrics}}
    meta["network"] = {**network_spec(model, plan), "parameters": meta["network"]["parameters"]}
    meta["training"]["recipe_selection"] = selection
    meta["training"]["test_time_views"] = views
    if run.recipe.members:
        meta["training"]["loss"] = run.recipe.name
        meta["training"]["ensemble_members"] = [
            {
                "recipe": r.recipe.name,
                "epochs_run": r.state.epoch,
                "best_epoch": r.state.best_epoch,
                "stopped_by": r.state.stopped_by,
                "weights": kept_weights(plan, r.state),
            }
            for r in trained
            if r.recipe in run.recipe.members
        ]
    if data.ordinal:
        meta["ordinal"] = {
            "grades": data.label_names,
            "loss": run.recipe.name if run.recipe.members else run.recipe.loss,
            "decoding": operating["decoding"],
            "chosen_on": "val",
            "val_qwk": val_metrics["qwk"],
        }
    meta["data"] |= {
        "split_seed": split_seed,
        "case_hashes": training_record(case_hashes(train_split.images), case_hashes(val.images)),
        # what the shift report and the drift monitor compare new data with (docs/trust.md)
        "distribution": distribution_fingerprint(
            array_samples(train_split.images, train_split.labels), data.label_names, data.modality
        ),
    }
    if positive is not None:
        meta["positive_class"] = positive
    if parent is not None:
        meta["parent"] = parent.record()
    if data.task_type == "multilabel":
        meta["selective_prediction"] = fit_multilabel_selective(val, val_probs, options.alpha)
    else:
        meta["selective_prediction"] = fit_selective(val, val_probs, operating, data.task_type, options.alpha)
    with atomic_dir(out) as tmp:
        torch.save(model.state_dict(), tmp / WEIGHTS)
        meta["onnx"] = export_onnx(model, torch.as_tensor(val.images[: min(4, len(val))]), tmp / ONNX)
        write_bundle_json(tmp, meta)
    log.info(
        "bundle written to %s (best epoch %d, val AUC %.4f, %.0f s in all; %.0f s expected)",
        out,
        state.best_epoch,
        val_metrics["auc"],
        time.monotonic() - started,
        plan.expected_seconds,
    )
    return meta


@dataclass
class RecipeRun:
    """One recipe trained and fitted on validation: its model, temperature, decision rule and validation scores."""

    recipe: recipes.Recipe
    model: nn.Module
    state: State
    scaler: TemperatureScaler
    val_probs: np.ndarray
    operating: dict[str, Any]
    val_metrics: dict[str, float]


def _train_recipe(
    recipe: recipes.Recipe,
    data: ClassificationData,
    plan: ClassificationPlan,
    options: ClassificationOptions,
    parent: warm_start.Parent | None,
    positive: str | None,
) -> RecipeRun:
    """Train ``recipe`` from the seed, then fit what the bundle keeps on the validation split: temperature, the
    operating point (the ordinal decoding for ordered grades), and the validation scores the recipes compete on."""
    seed = recipes.seed_of(recipe, options.seed)
    # every recipe (and the planner's measurement) starts from the run's seed; each seed member from its own
    seed_everything(seed)
    model = registry.build_network(_planned_network(plan, parent))
    if parent is not None:
        warm_start.load_weights(parent, model)
        model = unwrapped(model)  # trained without its test-time views; they are put back after (_with_views)
        log.info("fine-tuning from %s (bundle sha256 %s)", parent.path, parent.checksum[:12])
    if len(plan.losses or [plan.loss]) * len(plan.balance_choices or [plan.balanced_loss]) * plan.seed_members > 1:
        log.info("training %s: %s", "seed member" if recipe.seed_member else "recipe", recipe.name)
    state = fit(model, data, plan, seed, recipe)
    return _fitted_on_val(recipe, model, state, data, plan, positive)


def _planned_network(plan: ClassificationPlan, parent: warm_start.Parent | None) -> dict[str, Any]:
    """The network to build: the planned ResNet, or, fine-tuning, the parent's arrangement of planned ResNets (an
    ensemble, test-time views), checked against the parent; training then unwraps the views."""
    spec: dict[str, Any] = {"name": plan.network.name, "kwargs": plan.network.kwargs()}
    if parent is None:
        return spec
    theirs = parent.bundle.meta["network"]
    inner = theirs["kwargs"].get("network") or {} if theirs["name"] == VIEW_AVERAGE else theirs
    if inner.get("name") == LOGIT_AVERAGE:
        spec = ensemble_spec(plan.network.kwargs(), int(inner["kwargs"].get("n_members", 0)))
    if theirs["name"] == VIEW_AVERAGE:
        spec = view_spec(spec, bool(theirs["kwargs"].get("flip")), int(theirs["kwargs"].get("shift", 0)))
    warm_start.check_network(parent, spec["name"], spec["kwargs"])
    return spec


def network_spec(model: nn.Module, plan: ClassificationPlan) -> dict[str, Any]:
    """bundle.json's ``network`` (name and constructor arguments) of a trained model."""
    if isinstance(model, ViewAverage):
        return view_spec(network_spec(model.model, plan), model.flip, model.shift)
    if isinstance(model, LogitAverage):
        return ensemble_spec(plan.network.kwargs(), len(model.members))
    return {"name": plan.network.name, "kwargs": plan.network.kwargs()}


def _with_views(
    run: RecipeRun,
    data: ClassificationData,
    plan: ClassificationPlan,
    positive: str | None,
    switch: str,
    metric: str,
    parent: warm_start.Parent | None,
) -> tuple[RecipeRun, dict[str, Any]]:
    """The kept model with or without test-time augmentation (:class:`ViewAverage`), and what bundle.json keeps of
    the choice. The image alone and each set of views (:func:`view_candidates`, fewest first) are fitted on
    validation and compared by the recipes' rule (a tie goes to the higher validation AUC, then to fewer views);
    ``on`` drops the image alone from the comparison. Fine-tuning keeps the parent's views, as it keeps the rest of
    its network."""
    options = view_candidates(data.modality, data.spatial_size)
    decided_on = {"auto": "val", "on": "val, among the sets of views (--tta on)", "off": "none (--tta off)"}[switch]
    if parent is not None:
        theirs = parent.bundle.meta["network"]
        switch = "on" if theirs["name"] == VIEW_AVERAGE else "off"
        options = [{"flip": bool(theirs["kwargs"].get("flip")), "shift": int(theirs["kwargs"].get("shift", 0))}]
        decided_on = "the parent bundle's (fine-tuning keeps its network)"
    if switch == "off":
        return run, {"views": ["image"], "decided_on": decided_on}
    spec = network_spec(run.model, plan)
    fitted = [run]
    for views in options:
        model = ViewAverage(spec, views["flip"], views["shift"])
        model.model.load_state_dict(run.model.state_dict())
        fitted.append(_fitted_on_val(run.recipe, model, run.state, data, plan, positive))
    names = [view_names(r.model) for r in fitted]
    compared = fitted if switch == "auto" else fitted[1:]
    kept = compared[recipes.choose([run.recipe] * len(compared), [r.val_metrics for r in compared], metric)]
    log.info(
        "test-time augmentation on validation %s: %s; kept %d view(s)",
        metric,
        ", ".join(
            f"{len(n)} view(s) {r.val_metrics.get(metric, float('nan')):.4f}"
            for n, r in zip(names, fitted, strict=True)
        ),
        len(view_names(kept.model)),
    )
    keys = ("qwk", "accuracy", "auc", "mae")
    record = {
        "views": view_names(kept.model),
        "decided_on": decided_on,
        "rule": f"best validation {metric}; within {recipes.TIE} is a tie, won by the higher validation AUC, then "
        "by fewer views",
        "candidates": [
            {"views": n, **{k: round(float(m[k]), 4) for k in keys if k in m and not np.isnan(float(m[k]))}}
            for n, m in zip(names, (r.val_metrics for r in fitted), strict=True)
        ],
        "forward_passes_per_image": len(view_names(kept.model)),
    }
    return kept, record


def _ensemble_run(
    runs: list[RecipeRun], data: ClassificationData, plan: ClassificationPlan, positive: str | None
) -> RecipeRun:
    """The candidate averaging the logits of every model trained (each recipe's and its seed members'), fitted on
    validation like the others (the training record it carries is the first member's; bundle.json lists every
    member's)."""
    model = LogitAverage(plan.network.kwargs(), len(runs))
    for member, run in zip(model.members, runs, strict=True):
        member.load_state_dict(run.model.state_dict())
    log.info("ensemble candidate: mean logits of %s", ", ".join(r.recipe.name for r in runs))
    return _fitted_on_val(recipes.ensemble([r.recipe for r in runs]), model, runs[0].state, data, plan, positive)


def _fitted_on_val(
    recipe: recipes.Recipe,
    model: nn.Module,
    state: State,
    data: ClassificationData,
    plan: ClassificationPlan,
    positive: str | None,
) -> RecipeRun:
    """Temperature, operating point (ordinal decoding) and the validation scores the candidates compete on."""
    model.cpu().eval()
    val = val_split(data)
    val_logits = predict_logits(model, val.images, "cpu", EVAL_BATCH)
    scaler = TemperatureScaler(multilabel=data.task_type == "multilabel").fit(val_logits, val.labels)
    val_probs = probabilities(val_logits, data.task_type, scaler.temperature_)
    if data.ordinal:
        operating = ordinal.operating_point(*ordinal.choose_decoding(val.labels, val_probs))
    else:
        operating = operating_point(data, val.labels, val_probs, plan.target_sensitivity, positive)
    val_metrics = summary_metrics(data.task_type, val.labels, val_probs, operating)
    return RecipeRun(recipe, model, state, scaler, val_probs, operating, val_metrics)


def _load_for(parent: warm_start.Parent, spec: str, split_seed: int) -> ClassificationData:
    """``spec`` prepared as the parent's model takes it (size, channels, labels, task type), or an error naming
    the parent bundle and the mismatch."""
    try:
        return load_like(parent.bundle, spec, split_seed)
    except MedsightError as exc:
        raise parent.fail(f"the data do not fit it ({exc})") from exc


def fit(
    model: nn.Module,
    data: ClassificationData,
    plan: ClassificationPlan,
    seed: int,
    recipe: recipes.Recipe | None = None,
) -> State:
    """Run the engine: warm-up + cosine, validation AUC every epoch, best weights kept, early stopping, budget
    (the plan's loss and class balance unless ``recipe`` names others)."""
    train_split, val = data.split("train"), val_split(data)
    augment = augmentation(data.modality, data.spatial_dims, seed)
    batches = loader(train_split.images, train_split.labels, augment, plan.batch_size, seed, plan.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.lr, weight_decay=plan.weight_decay)
    recipe = recipe or recipes.Recipe(plan.loss, plan.balanced_loss)
    loss = loss_fn(data.task_type, train_split.labels, recipe.balanced, recipe.loss, data.n_outputs)
    device = plan.device
    averaged = AveragedWeights(model, plan.weight_average_decay, device) if plan.weight_average_decay else None

    def score() -> tuple[float, dict[str, float]]:
        """Validation of the trained weights and, beside them, of their average: the better is the epoch's model."""
        trained = validation_score(data, val, predict_logits(model, val.images, device, EVAL_BATCH))
        if averaged is None:
            return trained
        average = validation_score(data, val, predict_logits(averaged.module, val.images, device, EVAL_BATCH))
        averaged.better = _finite(average[0]) > _finite(trained[0])  # a tie keeps the trained weights
        kept = average if averaged.better else trained
        return kept[0], {
            **kept[1],
            "val_score_trained": trained[0],
            "val_score_averaged": average[0],
            "averaged_weights": float(averaged.better),
        }

    engine = Engine(
        model,
        optimizer,
        make_step(model, loss, device, plan.mixup_alpha, seed),
        epoch_batches(batches),
        plan.epochs,
        len(batches),
        handlers=[
            LRSchedule(
                plan.lr, plan.schedule, warmup_iterations=plan.warmup_epochs * len(batches), warmup_from_zero=True
            ),
            *([averaged] if averaged is not None else []),
            Validate(score),
            KeepBest(source=(lambda: averaged.kept(model)) if averaged is not None else None),
            EarlyStopping(plan.patience),
            TimeBudget(plan.time_budget_s),
            Progress("train"),
        ],
        device=device,
        rank_batches=ddp.active(),  # the loader gives each rank its part (steps.loader)
    )
    return engine.run()


def _finite(score: float) -> float:
    return -np.inf if score is None or np.isnan(score) else float(score)


def kept_weights(plan: ClassificationPlan, state: State) -> dict[str, Any]:
    """Which weights the bundle holds: the trained ones or their average, as validation chose at the best epoch."""
    if not plan.weight_average_decay:
        return {"kept": "trained", "average": None}
    best = next((h for h in state.history if int(h.get("epoch", 0)) == state.best_epoch), {})
    return {
        "kept": "average" if best.get("averaged_weights") else "trained",
        "average": f"exponential moving average, decay {plan.weight_average_decay}, updated every step",
        "chosen_on": "val",
        "val_score_trained": best.get("val_score_trained"),
        "val_score_averaged": best.get("val_score_averaged"),
    }


def validation_score(data: ClassificationData, val: SplitData, logits: np.ndarray) -> tuple[float, dict[str, float]]:
    """What selects the best epoch: validation AUC (macro for multi-class/-label), accuracy when AUC is undefined."""
    probs = probabilities(logits, data.task_type)
    if data.task_type == "binary":
        m = binary_metrics(val.labels, probs[:, 1], 0.5)
    elif data.task_type == "multiclass":
        m = multiclass_metrics(val.labels, probs)
    else:
        m = multilabel_metrics(val.labels, probs)
    auc = m["auc"] if not np.isnan(m["auc"]) else m["accuracy"]
    return float(auc), {"val_auc": m["auc"], "val_accuracy": m["accuracy"]}


def operating_point(
    data: ClassificationData,
    labels: np.ndarray,
    probs: np.ndarray,
    target_sensitivity: float | None,
    positive: str | None = None,
) -> dict[str, Any]:
    """The decision rule chosen on validation: a threshold (binary, on p(positive class)), one per label
    (multi-label), or arg-max."""
    if data.task_type == "binary":
        k = data.label_names.index(positive if positive is not None else data.label_names[1])
        op = choose_threshold((labels == k).astype(int), probs[:, k], target_sensitivity)
        return {**op, "chosen_on": "val", "applies_to": data.label_names[k], "positive_index": k}
    if data.task_type == "multilabel":
        per = [choose_threshold(labels[:, k], probs[:, k], target_sensitivity) for k in range(labels.shape[1])]
        return {"method": per[0]["method"], "thresholds": [p["threshold"] for p in per], "chosen_on": "val"}
    return {"method": "argmax", "chosen_on": "none (multi-class decisions take the most probable class)"}


def fit_selective(
    val: SplitData, probs: np.ndarray, operating: dict[str, Any], task_type: str, alpha: float | None
) -> dict[str, Any]:
    """Conformal prediction sets and the deferral rule, calibrated on the validation split (single-label tasks);
    images of one patient are calibrated as one unit (see :mod:`medsight.evaluation.conformal`)."""
    decided = decided_labels(task_type, probs, operating)
    a = DEFAULT_ALPHA if alpha is None else alpha
    return SelectivePrediction.fit(probs, val.labels, decided, a, groups=patient_groups(val)).to_json()


def fit_multilabel_selective(val: SplitData, probs: np.ndarray, alpha: float | None) -> dict[str, Any]:
    """One conformal threshold per label, calibrated on the validation split (patients as one unit, as for
    single-label tasks); predict defers a case when any label is uncertain."""
    a = DEFAULT_ALPHA if alpha is None else alpha
    return MultilabelSelective.fit(probs, val.labels, a, groups=patient_groups(val)).to_json()


def patient_groups(val: SplitData) -> np.ndarray | None:
    """Patient ids as calibration groups when some patient has several images (None: every image its own unit)."""
    ids = val.patient_ids
    return np.asarray(ids) if ids is not None and len(set(ids)) < len(ids) else None


def summary_metrics(
    task_type: str, labels: np.ndarray, probs: np.ndarray, operating: dict[str, Any]
) -> dict[str, float]:
    """Point metrics at the operating point (no CIs): what bundle.json records for validation."""
    if task_type == "binary":
        k = int(operating.get("positive_index", 1))
        return binary_metrics((labels == k).astype(int), probs[:, k], float(operating["threshold"]))
    if task_type == "multiclass":
        if "decoding" in operating:  # ordinal grades: QWK and grade error of the decoded grades too
            return ordinal_metrics(labels, probs, decided_labels(task_type, probs, operating))
        return multiclass_metrics(labels, probs)
    return multilabel_metrics(labels, probs, np.asarray(operating["thresholds"]))


def _meta(
    data: ClassificationData,
    plan: ClassificationPlan,
    options: ClassificationOptions,
    model: nn.Module,
    state: State,
    seconds: float,
    temperature: float,
) -> dict[str, Any]:
    """bundle.json (less the operating point, metrics and ONNX record, added once known)."""
    return {
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
        "plan": plan.to_json(),
        "options": options.given(),
        "preprocessing": {
            "steps": [
                "channels: mean of colour channels for a 1-channel model, repeat grey for a 3-channel one",
                "ScaleIntensity(minv=0, maxv=1) per image",
                f"Resize(spatial_size={data.spatial_size}, mode=area when shrinking)",
            ],
            "augmentation": plan.augmentation,
        },
        "network": {
            "name": plan.network.name,
            "kwargs": plan.network.kwargs(),
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
            "seed": options.seed,
            "epochs_requested": plan.epochs,
            "epochs_run": state.epoch,
            "best_epoch": state.best_epoch,
            "stopped_by": state.stopped_by,
            "seconds": round(seconds, 1),
            "expected_seconds": plan.expected_seconds,
            "time_budget_s": plan.time_budget_s,
            "optimizer": f"AdamW(lr={plan.lr}, weight_decay={plan.weight_decay}), warm-up + {plan.schedule}",
            "batch_size": plan.batch_size,
            "loss": ("class-balanced " if plan.balanced_loss else "")
            + ("BCE per label" if data.task_type == "multilabel" else plan.loss),
            "device": plan.device,
            "selection": "best validation " + ("AUC" if data.task_type != "multiclass" else "macro AUC"),
            "weights": kept_weights(plan, state),
            "history": state.history,
            "warnings": [*plan.warnings, *state.warnings],
        },
        "calibration": {"method": "temperature scaling", "fitted_on": "val", "temperature": temperature},
        "versions": library_versions(),
        "created": now_iso(),
    }
