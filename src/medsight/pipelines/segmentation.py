"""Segmentation end to end, self-configuring in the manner of nnU-Net: a folder in, a planned, trained and
post-processed model out (train), scored with CIs into a model card (evaluate), applied to NIfTI, PNG/TIFF and
DICOM series with masks in the input's own geometry (predict)."""

from __future__ import annotations

import html
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from medsight import config
from medsight.data import segmentation as segdata
from medsight.data.folds import Folds, stored_folds
from medsight.data.segmentation import Loaded, SegmentationDataset, fingerprint, load_case, open_dataset
from medsight.errors import MedsightError
from medsight.evaluation.card import Figure, Section, card_record, fmt, write_card, write_figures
from medsight.evaluation.metrics import N_BOOTSTRAP
from medsight.evaluation.plots import overlay_grid, png_image
from medsight.io.atomic import atomic_dir, write_json, write_text
from medsight.runtime.onnx_export import export_onnx
from medsight.tasks import segmentation as task
from medsight.tasks import segmentation_metrics as segm
from medsight.tasks.registry import build_network
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

log = logging.getLogger("medsight")

PLAN_ENV = "MEDSIGHT_SEG_PLAN"
WARMUP_ITERATIONS = 50
COLOURS = np.asarray(
    [[0, 0, 0], [0, 230, 60], [40, 120, 255], [255, 200, 0], [255, 60, 60], [200, 80, 255]], dtype=np.float32
)


def recognises(spec: str) -> bool:
    """An MSD / nnU-Net folder or an image + mask folder pair (DRIVE-like)."""
    try:
        return segdata.recognises(spec)
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------------------------------- training


def _overrides(plan_overrides: dict[str, Any] | str | Path | None) -> dict[str, Any]:
    """Plan overrides from the argument (a dict or a JSON file) or ``$MEDSIGHT_SEG_PLAN`` (a JSON file)."""
    source: Any = plan_overrides if plan_overrides is not None else os.environ.get(PLAN_ENV)
    if source is None or source == "":
        return {}
    if isinstance(source, dict):
        return dict(source)
    path = Path(source)
    try:
        loaded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MedsightError(f"cannot read plan overrides ({exc})", path) from exc
    if not isinstance(loaded, dict):
        raise MedsightError("plan overrides must be a JSON object", path)
    return loaded


def folds_for(ds: SegmentationDataset) -> Folds:
    """The stored patient-level folds of ``ds`` (its official test split kept apart when it has one)."""
    ids = [c.id for c in ds.train]
    official = [c.id for c in ds.test] if ds.official_test else None
    return stored_folds(ds.root, ids, None, official)


def heldout_ids(ds: SegmentationDataset, folds: Folds) -> list[str]:
    return [c.id for c in ds.test] if ds.official_test else list(folds.test)


def _load_all(ds: SegmentationDataset, ids: list[str], desc: str) -> dict[str, Loaded]:
    return {i: load_case(ds, ds.case(i)) for i in tqdm(ids, desc=desc, unit="case", disable=len(ids) < 8)}


def _training_item(case: Loaded, plan: dict[str, Any]) -> dict[str, Any]:
    assert case.label is not None
    image, label = task.preprocess(case.image, case.spacing, plan, case.label, case.roi)
    assert label is not None
    roi = case.roi
    if roi is not None and roi.shape != label.shape:
        roi = task.resize(roi[None].astype(np.float32), label.shape, label=True)[0] > 0
    flat = label.ravel()
    fg = np.flatnonzero(flat > 0)
    bg = np.flatnonzero((flat == 0) & (roi.ravel() if roi is not None else True))
    return {"image": image, "label": label[None].astype(np.float32), "fg": fg, "bg": bg}


def train(
    spec: str,
    out: Path,
    seed: int = 0,
    epochs: int | None = None,
    time_budget_s: float | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    fold: int = 0,
    plan_overrides: dict[str, Any] | str | Path | None = None,
    max_cases: int | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Fingerprint the data, plan, train on the fold's training cases, decide post-processing on its validation
    cases, and write the bundle. ``max_cases`` (smoke tests only) caps the training cases."""
    seed_everything(seed)
    torch.set_num_threads(config.num_threads())
    device = config.device()
    ds = open_dataset(spec)
    folds = folds_for(ds)
    train_ids, val_ids = folds.train_val(fold)
    if max_cases is not None:
        train_ids, val_ids = train_ids[:max_cases], val_ids[: max(1, max_cases // 4)]
    loaded = _load_all(ds, train_ids + val_ids, "read")
    fp = fingerprint(ds, [loaded[i] for i in train_ids + val_ids])
    overrides = _overrides(plan_overrides)
    if batch_size is not None:
        overrides["batch_size"] = int(batch_size)
    plan = task.make_plan(fp, device, overrides)
    if lr is not None:
        plan["optimizer"]["lr"] = float(lr)
    if epochs is None:
        epochs = int(plan["epochs"])
        if time_budget_s is None:
            time_budget_s = plan["time_budget_s"]
    plan["epochs"], plan["time_budget_s"] = int(epochs), time_budget_s
    words = task.describe(plan, fp)
    log.info("plan for %s (%s layout, %s):", ds.name, ds.layout, ", ".join(ds.labels.values()))
    for line in [*ds.notes, *words]:
        log.info("  %s", line)
    log.info("  split: %s; fold %d: %d train / %d validation cases", folds.method, fold, len(train_ids), len(val_ids))

    items = [_training_item(loaded[i], plan) for i in train_ids]
    model = build_network({"name": task.NETWORK, "kwargs": plan["network"]})
    started = time.monotonic()
    history, stopped_by, epochs_run = _fit(model, items, [loaded[i] for i in val_ids], plan, seed, device)
    model.cpu().eval()
    seconds = time.monotonic() - started

    predictor = task.torch_predictor(model)
    val_preds = [_predict_case(loaded[i], plan, predictor) for i in val_ids]
    masks = [m for m, _ in val_preds]
    val_labels = [loaded[i].label for i in val_ids]
    post = task.decide_postprocessing(masks, val_labels, ds.n_classes)  # type: ignore[arg-type]
    final = [task.keep_largest(m, post["keep_largest_component"]) for m in masks]
    for m, c in zip(final, (loaded[i] for i in val_ids), strict=True):
        if c.roi is not None:
            m[~c.roi] = 0
    dice = segm.dice_per_case(final, val_labels, ds.n_classes)  # type: ignore[arg-type]
    names = [ds.labels.get(k, f"label_{k}") for k in range(ds.n_classes)]
    val_metrics = {"dice": float(np.nanmean(dice))} | {
        f"dice_{names[k]}": float(np.nanmean(dice[:, k - 1])) for k in range(1, ds.n_classes)
    }
    log.info("validation Dice (fold %d): %s", fold, ", ".join(f"{k} {v:.4f}" for k, v in val_metrics.items()))

    meta: dict[str, Any] = {
        "format": FORMAT,
        "task": "segmentation",
        "task_type": "semantic",
        "label_names": names,
        "input": {
            "spatial_dims": ds.spatial_dims,
            "n_channels": plan["network"]["in_channels"],
            "patch_size": plan["patch_size"],
            "spacing": plan["target_spacing"],
            "layout": "N,C," + ("X,Y,Z" if ds.spatial_dims == 3 else "H,W"),
            "dtype": "float32",
        },
        "plan": plan,
        "plan_in_words": words,
        "preprocessing": {
            "steps": [
                "channels matched to the model (grey repeated, colour averaged for a 1-channel model)",
                f"normalisation: {plan['normalisation']['scheme']}",
                f"resample to {plan['target_spacing']}" if plan["resample"] else "no resampling",
            ]
        },
        "network": {
            "name": task.NETWORK,
            "kwargs": plan["network"],
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
            "test_ids": heldout_ids(ds, folds),
            "n": {"train": len(train_ids), "val": len(val_ids), "test": len(heldout_ids(ds, folds))},
        },
        "training": {
            "seed": seed,
            "epochs_requested": epochs,
            "epochs_run": epochs_run,
            "iterations_per_epoch": plan["iterations_per_epoch"],
            "stopped_by": stopped_by,
            "seconds": round(seconds, 1),
            "time_budget_s": time_budget_s,
            "optimizer": f"{plan['optimizer']['name']}(lr={plan['optimizer']['lr']:g}, "
            f"weight_decay={plan['optimizer']['weight_decay']:g}), {plan['optimizer']['schedule']}",
            "batch_size": plan["batch_size"],
            "device": device,
            "threads": torch.get_num_threads(),
            "selection": "final weights (as nnU-Net); validation Dice logged, not used to pick a checkpoint",
            "history": history,
        },
        "postprocessing": post,
        "metrics": {"val": val_metrics},
        "versions": library_versions(),
        "created": now_iso(),
    }
    with atomic_dir(out) as tmp:
        torch.save(model.state_dict(), tmp / WEIGHTS)
        example = torch.randn(2, plan["network"]["in_channels"], *plan["patch_size"])
        try:
            meta["onnx"] = export_onnx(model, example, tmp / ONNX)
        except Exception as exc:  # the exporter's failures are many; the bundle still works through PyTorch
            log.warning("ONNX export failed (%s); predict and evaluate will use PyTorch", exc)
            meta["onnx"] = {"error": f"{type(exc).__name__}: {exc}"}
        write_json(tmp / "splits.json", folds.to_json())
        write_json(tmp / "plan.json", plan)
        write_text(tmp / "plan.txt", "\n".join(words) + "\n")
        write_json(tmp / BUNDLE_JSON, meta)
    log.info("bundle written to %s (%d epochs, %.0f s)", out, epochs_run, seconds)
    return meta


def _lr(base: float, it: int, total: int, warmup: int = WARMUP_ITERATIONS) -> float:
    if it < warmup:
        return base * max((it + 1) / warmup, 0.05)
    return base * (1 - min(it / max(total, 1), 0.999)) ** 0.9


def _fit(
    model: torch.nn.Module,
    items: list[dict[str, Any]],
    val_cases: list[Loaded],
    plan: dict[str, Any],
    seed: int,
    device: str,
) -> tuple[list[dict[str, float]], str, int]:
    """Patch-based training: poly learning rate over the planned iterations, shrunk to fit a time budget."""
    from monai.data import set_track_meta
    from monai.losses import DiceCELoss

    set_track_meta(False)
    model.to(device).train()
    transforms = task.train_transforms(plan, seed)
    rng = np.random.default_rng(seed)
    opt_cfg = plan["optimizer"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt_cfg["lr"], weight_decay=opt_cfg["weight_decay"])
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    amp = bool(plan["mixed_precision"]) and device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    iters, planned = int(plan["iterations_per_epoch"]), int(plan["epochs"])
    budget = plan.get("time_budget_s")
    val_every = int(plan.get("validate_every", 10))
    history: list[dict[str, float]] = []
    start = time.monotonic()
    stopped_by, epoch, it = "epochs", 0, 0
    bar = tqdm(total=planned, desc="train", unit="epoch")
    try:
        while epoch < planned:
            epoch_start, total = time.monotonic(), 0.0
            model.train()
            for _ in range(iters):
                for group in optimizer.param_groups:
                    group["lr"] = _lr(opt_cfg["lr"], it, planned * iters, int(plan.get("warmup_iterations", 50)))
                batch = [transforms(items[i])[0] for i in rng.integers(len(items), size=plan["batch_size"])]
                x = torch.stack([torch.as_tensor(b["image"]) for b in batch]).float().to(device)
                y = torch.stack([torch.as_tensor(b["label"]) for b in batch]).float().to(device)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device_type=device.split(":")[0], enabled=amp):
                    loss = loss_fn(model(x), y)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
                scaler.step(optimizer)
                scaler.update()
                total += float(loss.detach())
                it += 1
            epoch += 1
            entry = {"epoch": epoch, "train_loss": total / iters, "lr": optimizer.param_groups[0]["lr"]}
            last = epoch >= planned
            if val_cases and val_every > 0 and (epoch % val_every == 0 or last):
                entry["val_dice"] = _quick_val_dice(model, val_cases, plan, device)
                model.train()
            entry["seconds"] = time.monotonic() - start
            history.append(entry)
            bar.update(1)
            bar.set_postfix(
                loss=f"{entry['train_loss']:.4f}",
                val=f"{entry['val_dice']:.3f}" if "val_dice" in entry else "-",
            )
            if budget is not None:
                elapsed, per_epoch = time.monotonic() - start, time.monotonic() - epoch_start
                if elapsed + per_epoch > budget:
                    stopped_by = "time budget"
                    break
                fits = epoch + int((budget - elapsed) // max(per_epoch, 1e-6))
                if fits < planned:
                    planned = max(epoch + 1, fits)
                    bar.total = planned
    finally:
        bar.close()
        set_track_meta(True)
    return history, stopped_by, epoch


def _quick_val_dice(model: torch.nn.Module, cases: list[Loaded], plan: dict[str, Any], device: str) -> float:
    """Mean foreground Dice on the validation cases (sliding window, no flips), for the training log."""
    model.eval()
    predictor = task.torch_predictor(model, device, bool(plan["mixed_precision"]))
    preds = [_predict_case(c, plan, predictor, flips=False)[0] for c in cases]
    dice = segm.dice_per_case(preds, [c.label for c in cases], plan["network"]["out_channels"])  # type: ignore[misc]
    return float(np.nanmean(dice))


# ----------------------------------------------------------------------------------------------- inference


def _predict_case(
    case: Loaded, plan: dict[str, Any], predictor: task.Predictor, flips: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(mask, probabilities)`` on the case's own grid (before post-processing; outside the ROI set to 0)."""
    image, _ = task.preprocess(case.image, case.spacing, plan)
    probs = task.sliding_probabilities(image, predictor, plan, flips)
    probs = task.resize(probs, case.image.shape[1:], label=False)
    mask = probs.argmax(0).astype(np.uint8)
    if case.roi is not None:
        mask[~case.roi] = 0
    return mask, probs


def _predictor(bundle: Bundle) -> tuple[task.Predictor, str]:
    """ONNX Runtime (the deployed path) when the bundle has a checked export, else PyTorch."""
    onnx_info = bundle.meta.get("onnx") or {}
    if "error" not in onnx_info and bundle.onnx_path.is_file():
        return task.onnx_predictor(bundle.onnx_path, config.num_threads()), "ONNX Runtime"
    return task.torch_predictor(bundle.network("cpu")), "PyTorch"


def _postprocess(mask: np.ndarray, bundle: Bundle, roi: np.ndarray | None = None) -> np.ndarray:
    mask = task.keep_largest(mask, bundle.meta["postprocessing"]["keep_largest_component"])
    if roi is not None:
        mask[~roi] = 0
    return mask


# ----------------------------------------------------------------------------------------------- evaluation


def _split_ids(bundle: Bundle, ds: SegmentationDataset, split: str) -> list[str]:
    data = bundle.meta["data"]
    if split == "test":
        ids = [c.id for c in ds.test] if ds.official_test else list(folds_for(ds).test)
        if Path(data["root"]).resolve() == ds.root.resolve():
            seen = set(data["train_ids"]) | set(data["val_ids"])
            leaked = sorted(set(ids) & seen)
            if leaked:
                raise MedsightError(f"{len(leaked)} test case(s) were used in training, e.g. {leaked[0]}", ds.root)
        return ids
    if split in ("val", "validation"):
        return list(data["val_ids"])
    raise MedsightError(f"unknown split {split!r} for segmentation (use test or val)")


def evaluate(
    bundle_path: Path, spec: str, split: str = "test", out: Path | None = None, n_boot: int = N_BOOTSTRAP, **_: Any
) -> dict[str, Any]:
    """Dice, HD95 and NSD per class and case with 95% bootstrap CIs over cases; for binary tasks also pixel AUC,
    F1, sensitivity, specificity and accuracy inside the ROI, and a second observer scored the same way."""
    if out is None:
        raise MedsightError("an output folder is needed")
    bundle = load_bundle(bundle_path)
    plan = bundle.meta["plan"]
    ds = open_dataset(spec)
    names = bundle.label_names
    n_classes = len(names)
    ids = _split_ids(bundle, ds, split)
    if not ids:
        raise MedsightError(f"the {split} split is empty", ds.root)
    predictor, engine = _predictor(bundle)
    tol = float(plan.get("nsd_tolerance", 1.0))
    per_case: list[dict[str, Any]] = []
    arrays: list[dict[str, np.ndarray]] = []
    binary = n_classes == 2
    pixels, observer = segm.PixelCounts(), segm.PixelCounts()
    observer_cases: list[dict[str, np.ndarray]] = []
    views: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    started = time.monotonic()
    for cid in tqdm(ids, desc="evaluate", unit="case"):
        case = load_case(ds, ds.case(cid))
        if case.label is None:
            raise MedsightError("case has no label to score against", ds.case(cid).images[0])
        mask, probs = _predict_case(case, plan, predictor)
        mask = _postprocess(mask, bundle, case.roi)
        m = segm.case_metrics(mask, case.label, n_classes, case.spacing, tol)
        arrays.append(m)
        entry: dict[str, Any] = {"id": cid}
        for k, name in enumerate(names[1:]):
            entry[name] = {key: _num(m[key][k]) for key in ("dice", "hd95", "nsd")}
        if binary:
            score = probs[1]
            if case.roi is not None:
                score = np.where(case.roi, score, 0.0)
            pixels.add(score, case.label, case.roi)
            if case.second is not None:
                observer.add(case.second.astype(np.float64), case.label, case.roi)
                observer_cases.append(segm.case_metrics(case.second, case.label, n_classes, case.spacing, tol))
        per_case.append(entry)
        views.append(_view(case.image, case.label, mask))
    metrics, per_class = segm.summarise(arrays, names[1:], n_boot)
    result: dict[str, Any] = {
        "split": split,
        "n": len(ids),
        "data": ds.name,
        "bundle": str(bundle_path),
        "labels": names,
        "engine": engine,
        "seconds": round(time.monotonic() - started, 1),
        "metrics": metrics,
        "per_class": per_class,
        "per_case": per_case,
        "definitions": {
            "dice": "mean over cases of the mean over foreground classes (MONAI DiceMetric)",
            "hd95": "95th percentile Hausdorff distance in "
            + ("mm" if ds.spatial_dims == 3 else "pixels")
            + " (MONAI HausdorffDistanceMetric); undefined when a class is empty in prediction or reference",
            "nsd": f"normalised surface Dice at tolerance {tol:g} "
            + ("mm" if ds.spatial_dims == 3 else "pixel")
            + " (MONAI SurfaceDiceMetric)",
            "ci95": f"percentile bootstrap over cases, {n_boot} resamples",
        },
        "postprocessing": bundle.meta["postprocessing"]["keep_largest_component"],
    }
    if binary:
        pm = pixels.summary(n_boot)
        for key, value in pm.items():
            result["metrics"][f"pixel_{key}"] = value
        result["definitions"]["pixel"] = (
            "pixels pooled over all images, inside the region-of-interest mask when the data have one (DRIVE's FOV);"
            " p(foreground) >= 0.5 for F1, sensitivity, specificity, accuracy"
        )
        if observer.counts:
            om = observer.summary(n_boot)
            om.pop("auc")  # a binary rater has no ROC curve worth the name
            oseg, _ = segm.summarise(observer_cases, names[1:], n_boot)
            result["second_observer"] = {
                "n": len(observer.counts),
                "metrics": {f"pixel_{k}": v for k, v in om.items()} | {k: oseg[k] for k in ("dice", "hd95", "nsd")},
                "note": "the second manual annotation scored against the first, exactly as the model is",
            }
    figures = _case_figures(per_case, views, names)
    assert out is not None
    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", result)
        write_figures(tmp, figures)
        write_card(
            tmp,
            f"Model card: {bundle.meta['data']['source']} ({ds.spatial_dims}D segmentation)",
            _intro(bundle, ds.name, split, len(ids), engine),
            _card_sections(bundle, result, figures),
            card_record(bundle.meta, {k: v for k, v in result.items() if k != "per_case"}),
        )
    return result


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


def _grey(image: np.ndarray) -> np.ndarray:
    """``(C, *spatial)`` → RGB-ready float in 0..1 (colour kept for 3-channel images)."""
    x = image if image.shape[0] == 3 else image[:1]
    lo, hi = np.percentile(x, [0.5, 99.5])
    x = np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.repeat(x, 3, axis=0) if x.shape[0] == 1 else x


def _view(image: np.ndarray, label: np.ndarray | None, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 2D view: the image, or for 3D the slice (last axis) with the most reference or predicted foreground."""
    if image.ndim == 3:
        lab = label if label is not None else np.zeros(mask.shape, np.int64)
        return image, lab, mask
    ref = label if label is not None else mask
    k = int(np.argmax((ref > 0).sum(axis=(0, 1)) + (mask > 0).sum(axis=(0, 1))))
    lab = label[..., k] if label is not None else np.zeros(mask.shape[:2], np.int64)
    return image[..., k], lab, mask[..., k]


def overlay(image: np.ndarray, mask: np.ndarray, label: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8: prediction filled in class colours, the reference (if given) outlined in white."""
    from scipy import ndimage

    rgb = np.moveaxis(_grey(image), 0, -1) * 255
    colours = COLOURS[np.minimum(mask, len(COLOURS) - 1)]
    alpha = (mask > 0)[..., None] * 0.45
    rgb = rgb * (1 - alpha) + colours * alpha
    if label is not None:
        edge = (label > 0) & ~ndimage.binary_erosion(label > 0)
        rgb[edge] = 255
    out = np.clip(rgb, 0, 255).astype(np.uint8)
    if max(out.shape[:2]) < 160:  # small 3D slices: enlarge for the card
        scale = max(1, 160 // max(out.shape[:2]))
        out = np.kron(out, np.ones((scale, scale, 1), np.uint8))
    return out


def _case_figures(
    per_case: list[dict[str, Any]], views: list[tuple[np.ndarray, np.ndarray, np.ndarray]], names: list[str]
) -> list[Figure]:
    scores = []
    for c in per_case:
        values = [c[n]["dice"] for n in names[1:] if c[n]["dice"] is not None]
        scores.append(float(np.mean(values)) if values else float("nan"))
    order = [i for i in np.argsort(np.nan_to_num(np.asarray(scores), nan=-1.0))]
    if not order:
        return []
    picks = {"worst": order[0], "median": order[len(order) // 2], "best": order[-1]}
    panels = []
    for kind, i in picks.items():
        img, lab, pred = views[i]
        panels.append((f"{kind}: {per_case[i]['id']} (Dice {scores[i]:.3f})", overlay(img, pred, lab)))
    return [
        Figure(
            "Best median and worst cases",
            overlay_grid(panels, columns=3),
            "Prediction filled in colour, reference outlined in white (3D: the slice with the most foreground).",
        )
    ]


def _intro(bundle: Bundle, data_name: str, split: str, n: int, engine: str) -> str:
    tr = bundle.meta["training"]
    return html.escape(
        f"Evaluated on the {split} split of {data_name} ({n} cases, {engine}). Trained {tr['epochs_run']} epochs of "
        f"{tr['iterations_per_epoch']} iterations (seed {tr['seed']}, {tr['seconds']} s on {tr['device']}, stopped by "
        f"{tr['stopped_by']}). Every metric shows a 95% bootstrap confidence interval over cases."
    )


def _card_sections(bundle: Bundle, r: dict[str, Any], figures: list[Figure]) -> list[Section]:
    m = r["metrics"]
    rows: list[list[Any]] = [["class", "Dice", "HD95", "NSD"]]
    rows += [[name, fmt(v["dice"]), fmt(v["hd95"], 2), fmt(v["nsd"])] for name, v in r["per_class"].items()]
    rows.append(["mean", fmt(m["dice"]), fmt(m["hd95"], 2), fmt(m["nsd"])])
    sections = [Section("Performance", html.escape(r["definitions"]["ci95"]) + ".", rows, figures)]
    if "pixel_auc" in m:
        keys = ["auc", "f1", "sensitivity", "specificity", "accuracy"]
        prow: list[list[Any]] = [["", *keys]]
        prow.append(["model", *[fmt(m[f"pixel_{k}"], 4) for k in keys]])
        if "second_observer" in r:
            so = r["second_observer"]["metrics"]
            prow.append(["2nd observer", *[fmt(so.get(f"pixel_{k}"), 4) for k in keys]])
        sections.append(
            Section("Pixel metrics inside the region of interest", html.escape(r["definitions"]["pixel"]), prow)
        )
    post = bundle.meta["postprocessing"]
    chosen = [bundle.label_names[k] for k in post["keep_largest_component"]] or ["none"]
    sections.append(
        Section(
            "Plan and post-processing",
            html.escape(
                "; ".join(bundle.meta["plan_in_words"])
                + f". Post-processing: keep the largest component for {', '.join(chosen)} ({post['rule']}, "
                f"decided on {post['decided_on']})."
            ),
        )
    )
    d, tr = bundle.meta["data"], bundle.meta["training"]
    onnx = bundle.meta.get("onnx") or {}
    sections.append(
        Section(
            "Model and data",
            "",
            [
                ["item", "value"],
                ["network", f"{bundle.meta['network']['name']} ({bundle.meta['network']['parameters']} parameters)"],
                ["training data", f"{d['source']} ({d['modality']}), {d['split_method']}, n = {d['n']}"],
                ["optimiser", tr["optimizer"]],
                ["stopped by", f"{tr['stopped_by']} after {tr['epochs_run']} epochs, {tr['seconds']} s"],
                ["versions", ", ".join(f"{k} {v}" for k, v in bundle.meta["versions"].items())],
                [
                    "ONNX",
                    f"max |diff| vs PyTorch {onnx['max_abs_diff_vs_torch']:.2e}"
                    if "max_abs_diff_vs_torch" in onnx
                    else str(onnx.get("error", "not exported")),
                ],
            ],
        )
    )
    return sections


# ----------------------------------------------------------------------------------------------- prediction


def _read_input(path: Path) -> dict[str, Any]:
    """Image ``(C, *spatial)``, spacing, and what is needed to write results in the input's own geometry."""
    name = path.name.lower()
    if path.is_dir() or (name.endswith(".dcm") or (path.is_file() and _is_dicom(path))):
        from medsight.io.dicom import read_series, to_metatensor

        volume = read_series(path)
        if volume.geometry is None or volume.array.ndim != 3:
            raise MedsightError("DICOM input must be a greyscale series with patient geometry", path)
        mt = to_metatensor(volume)
        affine = np.asarray(mt.affine, dtype=float)
        return {
            "kind": "dicom",
            "image": np.asarray(mt.detach().cpu().numpy(), dtype=np.float32),
            "spacing": segdata.spacing_of(affine),
            "affine": affine,
            "volume": volume,
        }
    if name.endswith(segdata.VOLUME_SUFFIXES):
        arr, affine = segdata._read_volume(path)
        arr = np.asarray(arr, dtype=np.float32)
        image = np.moveaxis(arr, -1, 0) if arr.ndim == 4 else arr[None]
        return {
            "kind": "nifti" if ".nii" in name else "volume",
            "image": image,
            "spacing": segdata.spacing_of(affine),
            "affine": affine,
        }
    if name.endswith(segdata.RASTER_SUFFIXES):
        return {"kind": "raster", "image": segdata._read_raster(path), "spacing": (1.0, 1.0), "affine": np.eye(4)}
    raise MedsightError("not an input segmentation can read (NIfTI, NRRD/MHA, PNG/TIFF/GIF/JPEG, DICOM)", path)


def _is_dicom(path: Path) -> bool:
    from medsight.io.images import is_dicom_file

    return is_dicom_file(path)


def _segment(image: np.ndarray, spacing: tuple[float, ...], bundle: Bundle, predictor: task.Predictor) -> np.ndarray:
    plan = bundle.meta["plan"]
    dims = int(plan["spatial_dims"])
    if image.ndim - 1 == dims:
        case = Loaded("input", image, None, spacing, np.eye(4))
        return _predict_case(case, plan, predictor)[0]
    if dims == 2 and image.ndim == 4:  # a 2D model on a volume: slice by slice along the last axis
        out = np.zeros(image.shape[1:], np.uint8)
        for k in range(image.shape[-1]):
            case = Loaded("input", image[..., k], None, spacing[:2], np.eye(4))
            out[..., k] = _predict_case(case, plan, predictor)[0]
        return out
    raise MedsightError(f"a {image.ndim - 1}D image, but the model segments {dims}D images")


def predict(bundle_path: Path, inputs: list[Path], out: Path, explain: bool = False, **_: Any) -> list[dict[str, Any]]:
    """Masks in each input's own geometry: NIfTI in → NIfTI (same affine and shape); PNG/TIFF in → label PNG; DICOM
    series in → DICOM SEG referencing the series (plus a NIfTI); and a PNG overlay for every input."""
    bundle = load_bundle(bundle_path)
    if not inputs:
        raise MedsightError("no input files given")
    names = bundle.label_names
    read = [_read_input(Path(p)) for p in tqdm(inputs, desc="read", unit="input", disable=len(inputs) < 4)]
    predictor, engine = _predictor(bundle)
    masks = []
    for r in tqdm(read, desc="segment", unit="input", disable=len(read) < 2):
        masks.append(_postprocess(_segment(r["image"], r["spacing"], bundle, predictor), bundle))
    results: list[dict[str, Any]] = []
    with atomic_dir(out) as tmp:
        for k, (path, r, mask) in enumerate(zip(inputs, read, masks, strict=True)):
            stem = f"{k:03d}_{_safe_stem(Path(path))}"
            entry: dict[str, Any] = {"input": Path(path).name, "engine": engine, "outputs": {}}
            unit = "mm³" if len(r["spacing"]) == 3 else ("mm²" if r["kind"] != "raster" else "pixels")
            size = float(np.prod(r["spacing"])) if r["kind"] != "raster" else 1.0
            amounts = {names[c]: float((mask == c).sum()) * size for c in range(1, len(names))}
            entry["amounts"] = {"unit": unit, **amounts}
            entry["summary"] = ", ".join(f"{n} {v:.0f} {unit}" for n, v in amounts.items()) + f" ({engine})"
            if r["kind"] == "raster":
                from PIL import Image

                name = f"{stem}_mask.png"
                import io as _io

                buf = _io.BytesIO()
                Image.fromarray(mask.astype(np.uint8)).save(buf, format="PNG")
                (tmp / name).write_bytes(buf.getvalue())
                entry["outputs"]["mask"] = name
            else:
                import nibabel as nib

                name = f"{stem}_seg.nii.gz"
                header: Any = None
                if r["kind"] == "nifti":
                    header = nib.load(str(path)).header.copy()
                    header.set_data_dtype(np.uint8)
                nib.save(nib.Nifti1Image(mask.astype(np.uint8), r["affine"], header), str(tmp / name))
                entry["outputs"]["mask"] = name
            if r["kind"] == "dicom":
                from medsight.io.dicom import read_datasets
                from medsight.serving.dicom_objects import write_seg

                volume = r["volume"]
                seg_name = f"{stem}_seg.dcm"
                write_seg(
                    np.ascontiguousarray(np.transpose(mask, (2, 1, 0))).astype(np.uint8),
                    read_datasets(volume.files),
                    names[1:],
                    tmp / seg_name,
                    model_name=f"medsight {bundle.meta['data']['source']} segmentation",
                    model_version=str(bundle.meta["versions"]["medsight"]),
                )
                entry["outputs"]["dicom_seg"] = seg_name
            img, _unused, shown = _view(r["image"], None, mask)
            (tmp / f"{stem}_overlay.png").write_bytes(png_image(overlay(img, shown)))
            entry["outputs"]["overlay"] = f"{stem}_overlay.png"
            results.append(entry)
        write_json(
            tmp / "predictions.json",
            {
                "bundle": str(bundle_path),
                "model": bundle.meta["data"]["source"],
                "labels": names,
                "predictions": results,
            },
        )
    return results


def _safe_stem(path: Path) -> str:
    stem = path.name.split(".")[0] or "input"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:40]
