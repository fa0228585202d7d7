"""Training: fingerprint the data, plan, train on the fold's training cases with the one engine, decide the
post-processing on its validation cases, and write the bundle.

The engine runs patch-based training with nnU-Net's schedule (linear warm-up, then poly 0.9 over the planned
iterations, re-planned when the time budget shortens the run), gradient clipping at 12, AMP on CUDA and bf16
autocast on CPUs that compute it natively. The final weights are kept, as in nnU-Net; validation Dice is logged.
Batches are drawn per epoch from the patch sampler on a background thread, so augmentation overlaps the step.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsight import config
from medsight.data.fingerprint import case_hash, training_record
from medsight.data.fingerprint_stats import Sample, distribution_fingerprint
from medsight.data.folds import FOLDS_SEED, Folds
from medsight.io.atomic import atomic_dir, write_json, write_text
from medsight.runtime.onnx_export import export_onnx
from medsight.tasks.segmentation import network
from medsight.tasks.segmentation.augment import PatchSampler
from medsight.tasks.segmentation.data import (
    Loaded,
    SegmentationDataset,
    fingerprint,
    folds_for,
    heldout_ids,
    open_dataset,
    read_cases,
    training_items,
)
from medsight.tasks.segmentation.inference import (
    Predictor,
    case_summaries,
    decide_postprocessing,
    drop_summarised,
    keep_largest,
    onnx_predictor,
    predict_case,
    torch_predictor,
)
from medsight.tasks.segmentation.metrics import dice_per_case
from medsight.tasks.segmentation.plan import (
    BUDGETS,
    NETWORK,
    SegmentationOptions,
    SegmentationPlan,
    describe,
    make_plan,
    read_overrides,
)
from medsight.tasks.segmentation.threads import ThreadTuner
from medsight.tasks.segmentation.uncertainty import Mirrors, choose_threshold, disagreement
from medsight.training import warm_start
from medsight.training.bundle import FORMAT, ONNX, WEIGHTS, library_versions, now_iso, write_bundle_json
from medsight.training.engine import Engine, LRSchedule, Progress, State, TimeBudget, Validate, prefetch
from medsight.training.seed import seed_everything

log = logging.getLogger("medsight")

GRAD_CLIP = 12.0


def resolve_plan(
    fp: dict[str, Any], device: str, options: SegmentationOptions, base: SegmentationPlan | None = None
) -> SegmentationPlan:
    """The planned defaults (or ``base``, a fine-tuned parent's plan) with the override file and the options applied.

    ``--epochs`` alone trains that many epochs with no time limit; ``--time-budget`` alone trains until the budget
    (up to nnU-Net's 1000 epochs); neither keeps the plan's measured default (epochs and budget).
    """
    overrides = read_overrides(options.plan)
    if options.batch_size is not None:
        overrides["batch_size"] = int(options.batch_size)
    plan = make_plan(fp, device, overrides) if base is None else base.with_overrides(overrides)
    changes: dict[str, Any] = {}
    if options.lr is not None:
        changes["optimizer"] = {"lr": float(options.lr)}
    if options.epochs is not None:
        changes |= {"epochs": int(options.epochs), "time_budget_s": options.time_budget_s}
    elif options.time_budget_s is not None:
        changes |= {"epochs": max(plan.epochs, BUDGETS["cuda"].epochs), "time_budget_s": float(options.time_budget_s)}
    return plan.with_overrides(changes)


def train(data: str, out: Path, options: SegmentationOptions) -> dict[str, Any]:
    """Train on ``data`` and write the bundle to ``out``; ``options.max_cases`` (smoke tests only) caps the cases."""
    seed_everything(options.seed)
    torch.set_num_threads(config.num_threads())
    device = config.device()
    fold = options.fold if options.fold is not None else 0
    ds = open_dataset(data)
    folds = folds_for(ds)
    train_ids, val_ids = folds.train_val(fold)
    if options.max_cases is not None:
        train_ids, val_ids = train_ids[: options.max_cases], val_ids[: max(1, options.max_cases // 4)]
    cases = read_cases(ds, train_ids + val_ids)
    fp = fingerprint(ds, [cases[i] for i in train_ids + val_ids])
    absent = [name for k, (name, share) in enumerate(fp["class_frequency"].items()) if k and share == 0]
    if absent:  # declared but in no mask: it would score Dice 1 (true negative) on every case, lifting the mean
        log.warning(
            "class(es) %s are declared but in none of the %d training and validation masks: nothing to learn, and "
            "their Dice (1 on every case without them) lifts the mean Dice",
            ", ".join(absent),
            len(train_ids) + len(val_ids),
        )
    parent = _parent(options, ds)
    plan = resolve_plan(fp, device, options, parent.bundle.plan(SegmentationPlan) if parent else None)
    words = describe(plan, fp)
    log.info("plan for %s (%s layout, %s):", ds.name, ds.layout, ", ".join(ds.labels.values()))
    for line in [*ds.notes, *words]:
        log.info("  %s", line)
    log.info("  split: %s; fold %d: %d train / %d validation cases", folds.method, fold, len(train_ids), len(val_ids))
    log.info("  expected time: %s", _expected(plan))

    started = time.monotonic()
    items, hits = training_items(ds, cases, train_ids, fp, plan)
    prepared = time.monotonic() - started
    log.info("preprocessed %d training cases in %.1f s (%d from the cache)", len(items), prepared, hits)
    seed_everything(options.seed)  # the weights depend on the seed only, not on what ran before
    model = network.build(plan)
    if parent is not None:  # the parent's plan (spacing, normalisation, patch, network) with the options applied
        warm_start.check_network(parent, NETWORK, plan.network.kwargs())
        warm_start.load_weights(parent, model)
        log.info("fine-tuning from %s (bundle sha256 %s)", parent.path, parent.checksum[:12])
    val_cases = [cases[i] for i in val_ids]
    state = _fit(model, PatchSampler(items, plan, options.seed), val_cases, plan, device)
    model.cpu().eval()
    seconds = time.monotonic() - started

    with atomic_dir(out) as tmp:
        torch.save(model.state_dict(), tmp / WEIGHTS)
        example = torch.randn(2, plan.network.in_channels, *plan.patch_size)
        predictor = torch_predictor(model)
        try:
            onnx = export_onnx(model, example, tmp / ONNX)
            # decide on what will be deployed, with the thread count training found fastest on this machine now
            predictor = onnx_predictor(tmp / ONNX, torch.get_num_threads())
        except Exception as exc:  # the exporter's failures are many; the bundle still works through PyTorch
            log.warning("ONNX export failed (%s); predict and evaluate will use PyTorch", exc)
            onnx = {"error": f"{type(exc).__name__}: {exc}"}
        post, val_metrics, review = validation_postprocessing(ds, val_cases, plan, predictor)
        log.info("validation Dice (fold %d): %s", fold, ", ".join(f"{k} {v:.4f}" for k, v in val_metrics.items()))
        meta = _meta(ds, folds, fold, train_ids, val_ids, fp, plan, words, model, state, options, device)
        meta["data"] |= {
            "label_values": list(ds.declared_values),  # each class's value in the data's label files
            "split_seed": FOLDS_SEED,
            "case_hashes": training_record(
                [case_hash(cases[i].image) for i in train_ids], [case_hash(cases[i].image) for i in val_ids]
            ),
        }
        # the distribution fingerprint the shift report and the drift monitor compare new data with (docs/trust.md)
        meta["data"]["distribution"] = distribution_fingerprint(
            (Sample(cases[i].image, cases[i].spacing, cases[i].label) for i in train_ids),
            meta["label_names"],
            ds.modality,
        )
        meta["training"] |= {
            "seconds": round(seconds, 1),
            "preprocessing_s": round(prepared, 1),
            "cache_hits": hits,
            "until_bundle_s": round(time.monotonic() - started, 1),
        }
        meta |= {"postprocessing": post, "metrics": {"val": val_metrics}, "onnx": onnx, "uncertainty": review}
        if parent is not None:
            meta["parent"] = parent.record()
        write_json(tmp / "splits.json", folds.to_json())
        write_json(tmp / "plan.json", plan.to_json())
        write_text(tmp / "plan.txt", "\n".join(words) + "\n")
        write_bundle_json(tmp, meta)
    log.info("bundle written to %s (%d epochs, %.0f s)", out, state.epoch, seconds)
    return meta


def _parent(options: SegmentationOptions, ds: SegmentationDataset) -> warm_start.Parent | None:
    """The bundle to fine-tune from, checked against the data: same labels, dimensions and channels."""
    if options.init is None:
        return None
    parent = warm_start.open_parent(options.init, "segmentation")
    warm_start.check_labels(parent, [ds.labels.get(k, f"label_{k}") for k in range(ds.n_classes)])
    taken = parent.bundle.input
    if taken["spatial_dims"] != ds.spatial_dims:
        raise parent.fail(f"it takes {taken['spatial_dims']}D images, the data are {ds.spatial_dims}D")
    if len(ds.channel_names) and len(ds.channel_names) != taken["n_channels"]:
        raise parent.fail(f"it takes {taken['n_channels']} channel(s), the data have {len(ds.channel_names)}")
    return parent


def validation_postprocessing(
    ds: SegmentationDataset, val_cases: list[Loaded], plan: SegmentationPlan, predictor: Predictor
) -> tuple[dict[str, Any], dict[str, float], dict[str, Any]]:
    """nnU-Net's post-processing decision on the validation cases, their Dice after it, and the review threshold
    chosen on their test-time-mirroring uncertainty (``uncertainty.py``)."""
    masks: list[np.ndarray] = []
    summaries: list[np.ndarray] = []
    spread: list[float] = []
    passes: int | None = None
    for c in val_cases:
        mirrors = Mirrors()
        mask, probs = predict_case(c, plan, predictor, mirrors=mirrors)
        masks.append(mask)
        summaries.append(case_summaries(mask, probs, ds.n_classes))
        spread.append(disagreement(mirrors, ds.n_classes))
        passes = len(mirrors.masks)
    labels = [c.label for c in val_cases]
    assert all(lab is not None for lab in labels)
    post = decide_postprocessing(masks, labels, ds.n_classes, summaries)  # type: ignore[arg-type]
    final = [keep_largest(m, post["keep_largest_component"]) for m in masks]
    for m, c in zip(final, val_cases, strict=True):
        if c.roi is not None:
            m[~c.roi] = 0
    final = [drop_summarised(m, s, post) for m, s in zip(final, summaries, strict=True)]
    dice = dice_per_case(final, labels, ds.n_classes)  # type: ignore[arg-type]
    names = [ds.labels.get(k, f"label_{k}") for k in range(ds.n_classes)]
    metrics = {"dice": float(np.nanmean(dice))} | {
        f"dice_{names[k]}": float(np.nanmean(dice[:, k - 1])) for k in range(1, ds.n_classes)
    }
    return post, metrics, choose_threshold(spread, dice.mean(axis=1), passes)


def _expected(plan: SegmentationPlan) -> str:
    iterations = plan.epochs * plan.iterations_per_epoch
    text = f"{plan.epochs} epochs x {plan.iterations_per_epoch} iterations ({iterations} iterations)"
    if plan.time_budget_s:
        text += f", at most {plan.time_budget_s / 60:.0f} min of training (time budget)"
    return text + "; the measured speed and an estimate follow after the first iterations"


def _fit(
    model: torch.nn.Module, sampler: PatchSampler, val_cases: list[Loaded], plan: SegmentationPlan, device: str
) -> State:
    """Patch-based training on the engine: poly schedule with warm-up, periodic validation Dice, time budget."""
    from monai.data import set_track_meta

    loss_fn = network.loss_function()
    opt = plan.optimizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    bf16 = plan.cpu_bf16 and not device.startswith("cuda")

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = (t.to(device, non_blocking=True) for t in batch)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        return loss_fn(logits.float(), y), {}

    def validate() -> tuple[float, dict[str, float]]:
        predictor = torch_predictor(model, device, plan.mixed_precision or bf16)
        masks = [predict_case(c, plan, predictor, flips=False)[0] for c in val_cases]
        dice = float(np.nanmean(dice_per_case(masks, [c.label for c in val_cases], plan.network.out_channels)))  # type: ignore[misc]
        return dice, {"val_dice": dice}

    handlers: list[Any] = [LRSchedule(opt.lr, kind=opt.schedule, warmup_iterations=opt.warmup_iterations)]
    if val_cases and plan.validate_every > 0:
        handlers.append(Validate(validate, every=plan.validate_every))
    cores = torch.get_num_threads()
    if not device.startswith("cuda") and cores > 1:
        handlers.append(ThreadTuner([cores, 1]))
    handlers += [TimeBudget(plan.time_budget_s), Progress("train")]
    engine = Engine(
        model,
        optimizer,
        step,
        lambda epoch: prefetch(sampler.epoch(plan.iterations_per_epoch), depth=3),
        epochs=plan.epochs,
        iterations_per_epoch=plan.iterations_per_epoch,
        handlers=handlers,
        device=device,
        amp=plan.mixed_precision,
        grad_clip=GRAD_CLIP,
    )
    set_track_meta(False)
    try:
        return engine.run()
    finally:
        set_track_meta(True)


def _meta(
    ds: SegmentationDataset,
    folds: Folds,
    fold: int,
    train_ids: list[str],
    val_ids: list[str],
    fp: dict[str, Any],
    plan: SegmentationPlan,
    words: list[str],
    model: torch.nn.Module,
    state: State,
    options: SegmentationOptions,
    device: str,
) -> dict[str, Any]:
    names = [ds.labels.get(k, f"label_{k}") for k in range(ds.n_classes)]
    test_ids = heldout_ids(ds, folds)
    iterations = state.iteration
    return {
        "format": FORMAT,
        "task": "segmentation",
        "task_type": "semantic",
        "label_names": names,
        "input": {
            "spatial_dims": ds.spatial_dims,
            "n_channels": plan.network.in_channels,
            "patch_size": plan.patch_size,
            "spacing": plan.target_spacing,
            "layout": "N,C," + ("X,Y,Z" if ds.spatial_dims == 3 else "H,W"),
            "dtype": "float32",
        },
        "plan": plan.to_json(),
        "options": options.given(),
        "plan_in_words": words,
        "preprocessing": {
            "steps": [
                "channels matched to the model (grey repeated, colour averaged for a 1-channel model)",
                f"normalisation: {plan.normalisation.scheme}",
                f"resample to {plan.target_spacing}" if plan.resample else "no resampling",
            ]
        },
        "network": {
            "name": NETWORK,
            "kwargs": plan.network.kwargs(),
            "parameters": int(sum(p.numel() for p in model.parameters())),
        },
        "data": {
            "source": ds.name,
            "root": str(ds.root),
            "layout": ds.layout,
            "modality": ds.modality,
            "notes": ds.notes,
            "fingerprint": fp,
            "split_method": folds.method,
            "splits_file": "splits.json",
            "fold": fold,
            "train_ids": train_ids,
            "val_ids": val_ids,
            "test_ids": test_ids,
            "n": {"train": len(train_ids), "val": len(val_ids), "test": len(test_ids)},
        },
        "training": {
            "seed": options.seed,
            "epochs_requested": plan.epochs,
            "epochs_run": state.epoch,
            "iterations": iterations,
            "iterations_per_epoch": plan.iterations_per_epoch,
            "iterations_per_s": round(iterations / max(state.elapsed, 1e-9), 3),
            "stopped_by": state.stopped_by,
            "seconds": 0.0,
            "time_budget_s": plan.time_budget_s,
            "optimizer": plan.optimizer.describe(),
            "batch_size": plan.batch_size,
            "device": device,
            "precision": "fp16 autocast" if plan.mixed_precision else ("bf16 autocast" if plan.cpu_bf16 else "fp32"),
            "threads": torch.get_num_threads(),
            "selection": "final weights (as nnU-Net); validation Dice logged, not used to pick a checkpoint",
            "history": state.history,
            "warnings": list(state.warnings),
        },
        "versions": library_versions(),
        "created": now_iso(),
    }
