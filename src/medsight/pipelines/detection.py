"""Detection end to end: train a RetinaNet bundle, evaluate it (FROC, CPM, mAP@0.5, image AUC) into a model card,
predict boxes on new files (JSON, overlays, and a DICOM SR for DICOM input).

Data: a mini-MIAS folder or its ``Info.txt`` (lesions; FROC is the headline), or a COCO folder/``annotations.json``
(objects; mAP@0.5 per class). See ``medsight.data.detection`` for the coordinate conventions.
"""

from __future__ import annotations

import copy
import hashlib
import html
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from medsight import config
from medsight.data.detection import DetectionData, DetectionItem, is_coco, is_mias, load_detection
from medsight.errors import MedsightError
from medsight.evaluation.card import Figure, Section, card_record, fmt, write_card, write_figures
from medsight.evaluation.froc import FP_RATES, ImageMatch, detection_metrics, froc_curve, froc_plot, match_image
from medsight.evaluation.metrics import N_BOOTSTRAP, bootstrap
from medsight.evaluation.plots import overlay_grid, png_image
from medsight.evaluation.subgroups import audit
from medsight.io.atomic import atomic_dir, write_json
from medsight.io.images import is_dicom_file, read_image
from medsight.tasks import detection as task
from medsight.training.bundle import BUNDLE_JSON, FORMAT, ONNX, WEIGHTS, Bundle, library_versions, load_bundle, now_iso
from medsight.training.seed import seed_everything

log = logging.getLogger("medsight")

DEFAULT_SIZE = 256


def recognises(spec: str) -> bool:
    """A mini-MIAS folder or Info.txt, or a COCO annotations.json (or its folder); never an outcome spec (#)."""
    if "#" in str(spec):
        return False
    try:
        return is_mias(spec) or is_coco(spec)
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------ preparation


def prepare(raw: np.ndarray, size: int) -> tuple[np.ndarray, tuple[float, float]]:
    """(C, H, W) image → (1, size, size) float32 in [0, 1]: grey, resized keeping the aspect ratio so the longest
    side is ``size``, padded with zeros at the bottom/right. Returns the per-axis scale (sx, sy)."""
    if raw.ndim != 3:
        raise MedsightError(f"detection takes 2D images; got an array of shape {raw.shape}")
    grey = torch.as_tensor(np.asarray(raw, np.float32).mean(axis=0))
    lo, hi = float(grey.min()), float(grey.max())
    grey = (grey - lo) / (hi - lo if hi > lo else 1.0)
    h, w = grey.shape
    f = size / max(h, w)
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    small = torch.nn.functional.interpolate(grey[None, None], size=(nh, nw), mode="area" if f < 1 else "bilinear")
    out = torch.zeros(1, size, size)
    out[0, :nh, :nw] = small[0, 0]
    return out.numpy(), (nw / w, nh / h)


def _scale_boxes(boxes: np.ndarray, sx: float, sy: float) -> np.ndarray:
    return np.asarray(boxes, np.float64).reshape(-1, 4) * np.array([sx, sy, sx, sy])


def _load(items: list[DetectionItem], size: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    images, scales = [], []
    for it in tqdm(items, desc="read", unit="image", disable=len(items) < 20):
        arr, s = prepare(read_image(it.image), size)
        images.append(arr)
        scales.append(s)
    return np.stack(images), scales


def _split_digest(items: list[DetectionItem], idx: np.ndarray) -> str:
    return hashlib.sha256(",".join(sorted(items[i].key for i in idx)).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------- training


def train(
    spec: str,
    out: Path,
    seed: int = 0,
    epochs: int = 30,
    time_budget_s: float | None = None,
    batch_size: int = 4,
    lr: float = 1e-3,
    image_size: int = DEFAULT_SIZE,
    **_: Any,
) -> dict[str, Any]:
    """Train on the patient-level train split, keep the epoch with the best validation CPM (lesions) or mAP@0.5."""
    seed_everything(seed)
    torch.set_num_threads(config.num_threads())
    data = load_detection(spec)
    parts = data.split(seed)
    train_items = [data.items[i] for i in parts["train"]]
    val_items = [data.items[i] for i in parts["val"]]
    x_train, s_train = _load(train_items, image_size)
    x_val, s_val = _load(val_items, image_size)
    y_train = [_scale_boxes(it.boxes, *s) for it, s in zip(train_items, s_train, strict=True)]
    sizes = np.concatenate([np.stack([b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]], 1) for b in y_train if len(b)])
    plan, anchor_shapes = task.plan_network(2, len(data.class_names), sizes, (image_size, image_size))
    torch.manual_seed(seed)
    network = task.retinanet(**plan)
    detector = task.build_detector(network, plan, anchor_shapes)
    task.set_inference(detector, (image_size, image_size))
    started = time.monotonic()
    history, best_epoch, best_score, best_state, stopped_by = _fit(
        detector,
        data,
        x_train,
        y_train,
        train_items,
        x_val,
        val_items,
        s_val,
        epochs,
        time_budget_s,
        batch_size,
        lr,
        seed,
    )
    network.load_state_dict(best_state)
    detector.eval()
    val_dets = _detect(detector, x_val, s_val)
    val_matches = _matches(val_dets, val_items, data)
    operating = _operating_point(val_matches, data.kind)
    val_metrics = detection_metrics(val_matches, data.class_names, froc=data.kind == "lesions")
    meta: dict[str, Any] = {
        "format": FORMAT,
        "task": "detection",
        "task_type": data.kind,
        "label_names": data.class_names,
        "input": {
            "spatial_dims": 2,
            "spatial_size": [image_size, image_size],
            "n_channels": 1,
            "layout": "N,C,H,W",
            "dtype": "float32",
        },
        "preprocessing": {
            "steps": [
                "grey: mean of colour channels; min-max scaled to [0, 1] per image",
                f"resize keeping aspect ratio so the longest side is {image_size} (area when shrinking), "
                "zero-pad bottom/right to a square",
                "boxes scaled per axis by (new size / size read); predictions mapped back by the inverse",
            ],
            "augmentation": "random horizontal flip (lesions only; never for lateral objects such as lungs), "
            "random contrast/brightness (x U(0.85, 1.15) + U(-0.05, 0.05))",
            "box_convention": "[x1, y1, x2, y2], x = column, y = row, continuous pixel coordinates of the image read",
        },
        "network": {
            "name": task.NETWORK,
            "kwargs": plan,
            "parameters": int(sum(p.numel() for p in network.parameters())),
            "anchor_shapes": anchor_shapes,
            "detector": "monai.apps.detection RetinaNetDetector: ATSS matcher (4 candidates), hard-negative sampler "
            "(64 per image, 30% positive), BoxCoder, sliding-window inference, NMS 0.22, 50 detections per image",
        },
        "data": {
            "source": data.name,
            "modality": "mammography" if data.kind == "lesions" else "radiography",
            "split_method": "patient-level 70/10/20 (StratifiedGroupKFold on 'has any box'), seed " + str(seed),
            "n": {k: len(v) for k, v in parts.items()},
            "split_digest": {k: _split_digest(data.items, v) for k, v in parts.items()},
            "fingerprint": data.fingerprint,
            "excluded": data.excluded,
            "conventions": data.conventions,
            "kind": data.kind,
        },
        "training": {
            "seed": seed,
            "epochs_requested": epochs,
            "epochs_run": len(history),
            "best_epoch": best_epoch,
            "stopped_by": stopped_by,
            "seconds": round(time.monotonic() - started, 1),
            "time_budget_s": time_budget_s,
            "optimizer": f"AdamW(lr={lr}, weight_decay=1e-4), warm-up + cosine",
            "batch_size": batch_size,
            "device": "cpu",
            "selection": "best validation " + ("CPM" if data.kind == "lesions" else "mAP@0.5"),
            "history": history,
        },
        "operating_point": operating,
        "metrics": {"val": {k: v for k, v in val_metrics.items() if not (isinstance(v, float) and math.isnan(v))}},
        "versions": library_versions(),
        "created": now_iso(),
    }
    with atomic_dir(out) as tmp:
        torch.save(network.state_dict(), tmp / WEIGHTS)
        meta["onnx"] = _export_onnx(network, torch.as_tensor(x_val[:1]), tmp / ONNX)
        write_json(tmp / BUNDLE_JSON, meta)
    log.info("bundle written to %s (best epoch %d, val score %.4f)", out, best_epoch, best_score)
    return meta


def _augment(x: np.ndarray, boxes: np.ndarray, flip: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = x * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05)
    if flip and rng.random() < 0.5:
        w = x.shape[-1]
        x = x[..., ::-1]
        boxes = boxes.copy()
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    return np.ascontiguousarray(x, np.float32), boxes


def _fit(
    detector: Any,
    data: DetectionData,
    x_train: np.ndarray,
    y_train: list[np.ndarray],
    train_items: list[DetectionItem],
    x_val: np.ndarray,
    val_items: list[DetectionItem],
    s_val: list[tuple[float, float]],
    epochs: int,
    time_budget_s: float | None,
    batch_size: int,
    lr: float,
    seed: int,
) -> tuple[list[dict[str, float]], int, float, dict[str, torch.Tensor], str]:
    rng = np.random.default_rng(seed)
    network = detector.network
    params = [p for p in network.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    positives = np.flatnonzero([len(b) > 0 for b in y_train])
    negatives = np.flatnonzero([len(b) == 0 for b in y_train])
    per_epoch = len(positives) + min(len(negatives), max(len(positives), 8))
    steps_per_epoch = max(1, math.ceil(per_epoch / batch_size))
    planned = epochs
    history: list[dict[str, float]] = []
    best_score, best_epoch, best_state = -math.inf, 0, copy.deepcopy(network.state_dict())
    stopped_by = "epochs"
    start = time.monotonic()
    flip = data.kind == "lesions"
    bar = tqdm(total=planned, desc="train", unit="epoch")
    epoch = 0
    while epoch < planned:
        epoch_start = time.monotonic()
        detector.train()
        chosen = np.concatenate([positives, rng.permutation(negatives)[: per_epoch - len(positives)]]).astype(int)
        order = rng.permutation(chosen)
        total, count = {"classification": 0.0, "box_regression": 0.0}, 0
        for step in range(steps_per_epoch):
            batch = order[step * batch_size : (step + 1) * batch_size]
            if len(batch) == 0:
                break
            progress = (epoch + step / steps_per_epoch) / planned
            warm = min(1.0, (epoch * steps_per_epoch + step + 1) / (2 * steps_per_epoch))
            for g in opt.param_groups:
                g["lr"] = lr * warm * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
            images, targets = [], []
            for i in batch:
                xi, bi = _augment(x_train[i], y_train[i], flip, rng)
                images.append(torch.as_tensor(xi))
                targets.append({"boxes": task.to_monai(bi), "labels": torch.as_tensor(train_items[i].labels).long()})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                losses = detector(images, targets)
            loss = task.detection_loss(losses)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            for k in total:
                total[k] += float(losses[k].detach()) * len(batch)
            count += len(batch)
        detector.eval()
        matches = _matches(_detect(detector, x_val, s_val), val_items, data)
        m = detection_metrics(matches, data.class_names, froc=data.kind == "lesions")
        score = m["cpm"] if data.kind == "lesions" else m["map50"]
        score = -1.0 if math.isnan(score) else score
        epoch += 1
        entry = {
            "epoch": epoch,
            "train_loss": (total["classification"] + total["box_regression"]) / max(count, 1),
            "train_cls_loss": total["classification"] / max(count, 1),
            "train_box_loss": total["box_regression"] / max(count, 1),
            "val_score": score,
            "seconds": time.monotonic() - start,
        }
        history.append(entry)
        if score > best_score:
            best_score, best_epoch, best_state = score, epoch, copy.deepcopy(network.state_dict())
        bar.update(1)
        bar.set_postfix(loss=f"{entry['train_loss']:.3f}", val=f"{score:.3f}", best=f"{best_score:.3f}")
        if time_budget_s is not None:
            elapsed, took = time.monotonic() - start, time.monotonic() - epoch_start
            if elapsed + took > time_budget_s:
                stopped_by = "time budget" if epoch < planned else "epochs"
                break
            fits = epoch + int((time_budget_s - elapsed) // max(took, 1e-6))
            if fits < planned:
                planned = max(epoch + 1, fits)
                bar.total = planned
    bar.close()
    if stopped_by == "epochs" and planned < epochs:
        stopped_by = "time budget"  # the schedule was shortened to fit the budget
    return history, best_epoch, best_score, best_state, stopped_by


def _detect(
    detector: Any, images: np.ndarray, scales: list[tuple[float, float]], batch: int = 4
) -> list[dict[str, np.ndarray]]:
    """Boxes (in the pixels of each image read), scores and labels for every image."""
    out: list[dict[str, np.ndarray]] = []
    detector.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for start in range(0, len(images), batch):
            xb = torch.as_tensor(images[start : start + batch])
            for k, d in enumerate(detector(xb, use_inferer=True)):
                sx, sy = scales[start + k]
                boxes = task.from_monai(d["boxes"]).reshape(-1, 4) / np.array([sx, sy, sx, sy])
                out.append(
                    {
                        "boxes": boxes,
                        "scores": d["labels_scores"].detach().cpu().numpy().astype(np.float64),
                        "labels": d["labels"].detach().cpu().numpy().astype(int),
                    }
                )
    return out


def _matches(dets: list[dict[str, np.ndarray]], items: list[DetectionItem], data: DetectionData) -> list[ImageMatch]:
    return [
        match_image(d["boxes"], d["scores"], it.boxes, d["labels"], it.labels, criterion="centre")
        for d, it in zip(dets, items, strict=True)
    ]


def _operating_point(matches: list[ImageMatch], kind: str) -> dict[str, Any]:
    """Lesions: the lowest score threshold with ≤ 1 FP per image on validation. Objects: 0.5."""
    if kind != "lesions":
        return {"method": "fixed", "threshold": 0.5, "chosen_on": "none"}
    thr, fppi, sens = froc_curve(matches)
    ok = np.flatnonzero(fppi <= 1.0)
    if len(ok) == 0 or np.all(np.isnan(sens)):
        return {"method": "<=1 FP per image on val", "threshold": 0.5, "chosen_on": "val (no threshold qualified)"}
    i = int(ok[-1])
    return {
        "method": "<=1 FP per image on val",
        "threshold": float(thr[i]),
        "val_sensitivity": float(sens[i]),
        "val_fp_per_image": float(fppi[i]),
        "chosen_on": "val",
    }


class _Heads(torch.nn.Module):
    """The RetinaNet's raw head maps as a flat tuple (classification levels, then box-regression levels)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.network(x)
        return (*out["classification"], *out["box_regression"])


def _export_onnx(network: torch.nn.Module, example: torch.Tensor, path: Path) -> dict[str, Any]:
    """ONNX of the network's head maps (anchors, decoding and NMS stay in MONAI), checked with ONNX Runtime."""
    from medsight.runtime.onnx_export import OnnxPredictor, quiet_onnx_logs

    heads = _Heads(network).eval()
    try:
        with warnings.catch_warnings(), quiet_onnx_logs():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(heads, (example,), verbose=False)
            assert program is not None
            program.save(str(path), external_data=True)
        with torch.no_grad():
            expected = heads(example)
        import onnxruntime as ort

        session = OnnxPredictor(path).session
        got = session.run(None, {session.get_inputs()[0].name: example.numpy()})
        gap = max(float(np.max(np.abs(e.numpy() - g))) for e, g in zip(expected, got, strict=True))
        del ort
    except Exception as exc:  # the export is a convenience for deployment; the bundle works without it
        log.warning("ONNX export of the detector heads failed: %s", exc)
        return {"file": None, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    files = sorted(p.name for p in path.parent.glob(path.name + "*"))
    return {
        "file": path.name,
        "files": files,
        "outputs": "classification maps per level, then box-regression maps per level (pre-anchor decoding)",
        "max_abs_diff_vs_torch": gap,
        "checked_batch": int(example.shape[0]),
        "fixed_input_shape": list(example.shape[1:]),
    }


def _detector_from_bundle(bundle: Bundle) -> Any:
    network = bundle.network("cpu")
    plan = bundle.meta["network"]["kwargs"]
    detector = task.build_detector(network, plan, bundle.meta["network"]["anchor_shapes"])
    task.set_inference(detector, bundle.input["spatial_size"])
    return detector.eval()


# ------------------------------------------------------------------------------------------------- evaluation


def evaluate(
    bundle_path: Path, spec: str, split: str, out: Path, n_boot: int = N_BOOTSTRAP, **_: Any
) -> dict[str, Any]:
    """FROC/CPM (lesions), AP@0.5 per class and mAP, image-level AUC, each with a 95% bootstrap CI over images."""
    bundle = load_bundle(bundle_path)
    if bundle.task != "detection":
        raise MedsightError(f"a {bundle.task} bundle, not a detection one", bundle_path)
    data = load_detection(spec)
    seed = int(bundle.meta["training"]["seed"])
    parts = data.split(seed)
    if split not in parts:
        raise MedsightError(f"unknown split {split!r} (train, val or test)")
    idx = parts[split]
    recorded = bundle.meta["data"].get("split_digest", {}).get(split)
    same_split = recorded == _split_digest(data.items, idx)
    if recorded and not same_split:
        log.warning("the %s split differs from the one recorded at training (other data?)", split)
    items = [data.items[i] for i in idx]
    size = int(bundle.input["spatial_size"][0])
    images, scales = _load(items, size)
    detector = _detector_from_bundle(bundle)
    started = time.monotonic()
    dets = _detect(detector, images, scales)
    seconds = time.monotonic() - started
    matches = _matches(dets, items, data)
    names = bundle.label_names
    lesions = data.kind == "lesions"
    has = np.asarray([len(it.boxes) > 0 for it in items], int)
    strata = has if len(np.unique(has)) == 2 else None
    metrics = bootstrap(
        lambda ix: detection_metrics([matches[i] for i in ix], names, froc=lesions), len(items), strata, n_boot
    )
    op = bundle.meta["operating_point"]
    thr = float(op["threshold"])
    result: dict[str, Any] = {
        "split": split,
        "n": len(items),
        "n_boxes": int(sum(len(it.boxes) for it in items)),
        "data": data.name,
        "task_type": data.kind,
        "bundle": str(bundle_path),
        "labels": names,
        "split_matches_training": bool(same_split) if recorded else None,
        "metrics": metrics,
        "operating_point": op,
        "inference_seconds_per_image": seconds / max(len(items), 1),
        "definitions": {
            "froc_hit": "detection centre inside the ground-truth box; duplicates on one lesion are not FPs",
            "sensitivity_at_fp": "highest sensitivity with FP/image <= rate (step, no interpolation)",
            "cpm": "mean sensitivity at " + ", ".join(f"{r:g}" for r in FP_RATES) + " FP per image (LUNA16)",
            "ap50": "all-point interpolated AP, greedy matching at IoU >= 0.5, duplicates are FPs",
            "image_auc": "ROC AUC of the highest box score per image for 'any lesion'",
            "ci95": f"percentile bootstrap over images ({n_boot} resamples, stratified by 'has any box')",
        },
    }
    if lesions and len(np.unique(has)) == 2:
        score = np.asarray([m.max_score for m in matches])
        attrs = _attributes(items)
        result["subgroups"] = audit(has, score, (score >= thr).astype(int), attrs) if len(attrs.columns) else {}
    else:
        result["subgroups"] = {}
    figures = []
    if lesions:
        figures.append(Figure("FROC", froc_plot(matches), "Lesion sensitivity against false positives per image."))
    figures.append(
        Figure(
            "Detections",
            _overlays(items, dets, thr, names),
            f"Ground truth in green, detections scoring >= {thr:.3f} in red (score beside each).",
        )
    )
    result["examples"] = [it.key for it in _example_items(items)]
    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", result)
        write_json(
            tmp / "detections.json",
            [
                {
                    "key": it.key,
                    "boxes": np.round(d["boxes"], 2).tolist(),
                    "scores": np.round(d["scores"], 4).tolist(),
                    "labels": [names[int(c)] for c in d["labels"]],
                    "truth": np.round(it.boxes, 2).tolist(),
                }
                for it, d in zip(items, dets, strict=True)
            ],
        )
        write_figures(tmp, figures)
        write_card(
            tmp,
            f"Model card: {bundle.meta['data']['source']} (detection)",
            _intro(bundle, data.name, split),
            _card_sections(bundle, result, figures),
            card_record(bundle.meta, result),
        )
    return result


def _attributes(items: list[DetectionItem]) -> Any:
    import pandas as pd

    keys = [k for k in ("tissue", "sex", "age") if all(k in it.attributes for it in items)]
    frame = pd.DataFrame({k: [it.attributes[k] for it in items] for k in keys})
    if "age" in frame:
        frame["age"] = pd.to_numeric(frame["age"], errors="coerce")
    return frame


def _example_items(items: list[DetectionItem], n: int = 8) -> list[DetectionItem]:
    with_boxes = [it for it in items if len(it.boxes)]
    without = [it for it in items if not len(it.boxes)]
    return (with_boxes[: n - 2] + without[:2])[:n] if without else with_boxes[:n]


def draw_boxes(
    image: np.ndarray, truth: np.ndarray, boxes: np.ndarray, scale: float = 1.0, width: int = 2
) -> np.ndarray:
    """RGB uint8 of a (C, H, W) image with ground truth in green and detections in red."""
    grey = np.asarray(image, np.float32).mean(axis=0)
    g = (grey - grey.min()) / (np.ptp(grey) or 1.0)
    rgb = np.stack([g] * 3, -1)
    h, w = g.shape

    def rect(b: np.ndarray, colour: tuple[float, float, float]) -> None:
        x1, y1, x2, y2 = (np.asarray(b) * scale).round().astype(int)
        x1, x2 = np.clip([x1, x2 - 1], 0, w - 1)
        y1, y2 = np.clip([y1, y2 - 1], 0, h - 1)
        rgb[y1 : y1 + width, x1 : x2 + 1] = colour
        rgb[max(y2 - width + 1, 0) : y2 + 1, x1 : x2 + 1] = colour
        rgb[y1 : y2 + 1, x1 : x1 + width] = colour
        rgb[y1 : y2 + 1, max(x2 - width + 1, 0) : x2 + 1] = colour

    for b in np.asarray(truth).reshape(-1, 4):
        rect(b, (0.0, 1.0, 0.0))
    for b in np.asarray(boxes).reshape(-1, 4):
        rect(b, (1.0, 0.1, 0.1))
    return np.asarray(np.clip(rgb * 255, 0, 255), np.uint8)


def _overlays(items: list[DetectionItem], dets: list[dict[str, np.ndarray]], thr: float, names: list[str]) -> bytes:
    chosen = _example_items(items)
    panels = []
    for it in chosen:
        d = dets[items.index(it)]
        raw = read_image(it.image)
        keep = d["scores"] >= thr
        scale = 256 / max(raw.shape[1:])
        small = torch.nn.functional.interpolate(torch.as_tensor(raw)[None], scale_factor=scale, mode="area")[0]
        rgb = draw_boxes(small.numpy(), it.boxes, d["boxes"][keep], scale)
        top = ", ".join(
            f"{names[int(c)][:6]} {s:.2f}" for c, s in zip(d["labels"][keep][:3], d["scores"][keep][:3], strict=True)
        )
        panels.append((f"{it.key[:12]}: {top or 'none'}", rgb))
    return overlay_grid(panels)


def _intro(bundle: Bundle, data_name: str, split: str) -> str:
    tr = bundle.meta["training"]
    return html.escape(
        f"Evaluated on the {split} split of {data_name}. Trained {tr['epochs_run']} epochs (best {tr['best_epoch']}, "
        f"seed {tr['seed']}, {tr['seconds']} s on {tr['device']}). Every metric shows a 95% bootstrap confidence "
        "interval over images."
    )


def _card_sections(bundle: Bundle, r: dict[str, Any], figures: list[Figure]) -> list[Section]:
    from medsight.evaluation.card import subgroup_section

    m = r["metrics"]
    rows: list[list[Any]] = [["metric", "value (95% CI)"]]
    rows += [[k, fmt(v)] for k, v in m.items()]
    defs = r["definitions"]
    sections = [
        Section(
            "Performance",
            html.escape(
                f"n = {r['n']} images, {r['n_boxes']} boxes ({r['split']} split). FROC hit: {defs['froc_hit']}. "
                f"Sensitivity at a rate: {defs['sensitivity_at_fp']}. CPM: {defs['cpm']}. AP: {defs['ap50']}."
            ),
            rows,
            [f for f in figures if f.title == "FROC"],
        ),
        Section("Detections", "", None, [f for f in figures if f.title == "Detections"]),
    ]
    op = r["operating_point"]
    sections.append(
        Section(
            "Operating point",
            html.escape(
                f"Boxes are reported as findings when their score is >= {op['threshold']:.4f} ({op['method']}"
                + (
                    f"; validation sensitivity {op['val_sensitivity']:.3f} at {op['val_fp_per_image']:.2f} FP/image"
                    if "val_sensitivity" in op
                    else ""
                )
                + ")."
            ),
        )
    )
    if r["task_type"] == "lesions":
        sections.append(subgroup_section(r.get("subgroups") or {}))
    d, tr = bundle.meta["data"], bundle.meta["training"]
    onnx = bundle.meta.get("onnx") or {}
    sections.append(
        Section(
            "Model and data",
            "",
            [
                ["item", "value"],
                ["network", f"{bundle.meta['network']['name']} ({bundle.meta['network']['parameters']} parameters)"],
                ["detector", bundle.meta["network"]["detector"]],
                ["input", f"{bundle.input['n_channels']} x {bundle.input['spatial_size']}"],
                ["training data", f"{d['source']}, split: {d['split_method']}, n = {d['n']}"],
                ["excluded images", ", ".join(f"{e['key']} ({e['reason']})" for e in d["excluded"]) or "none"],
                ["coordinate conventions", "; ".join(d["conventions"])],
                ["optimiser", tr["optimizer"]],
                ["stopped by", tr["stopped_by"]],
                ["ONNX (head maps) vs PyTorch max |diff|", str(onnx.get("max_abs_diff_vs_torch", onnx.get("error")))],
                ["versions", ", ".join(f"{k} {v}" for k, v in bundle.meta["versions"].items())],
            ],
        )
    )
    return sections


# ------------------------------------------------------------------------------------------------- prediction


def predict(bundle_path: Path, inputs: list[Path], out: Path, explain: bool = False, **_: Any) -> list[dict[str, Any]]:
    """Boxes with scores per input (``predictions.json``), an overlay PNG each, and for DICOM input an SR."""
    bundle = load_bundle(bundle_path)
    if not inputs:
        raise MedsightError("no input files given")
    size = int(bundle.input["spatial_size"][0])
    raws = [read_image(p) for p in inputs]
    prepared = []
    for p, raw in zip(inputs, raws, strict=True):
        if raw.ndim != 3:
            raise MedsightError(f"a {raw.ndim - 1}D image, but the model takes 2D images", p)
        prepared.append(prepare(raw, size))
    images = np.stack([a for a, _ in prepared])
    dets = _detect(_detector_from_bundle(bundle), images, [s for _, s in prepared])
    names = bundle.label_names
    thr = float(bundle.meta["operating_point"]["threshold"])
    results = []
    with atomic_dir(out) as tmp:
        for k, (path, raw, d) in enumerate(zip(inputs, raws, dets, strict=True)):
            h, w = raw.shape[1:]
            boxes = np.clip(d["boxes"], 0, [w, h, w, h])
            found = [
                {
                    "label": names[int(c)],
                    "score": round(float(s), 4),
                    "box": [round(float(v), 2) for v in b],
                    "centre": [round(float((b[0] + b[2]) / 2), 2), round(float((b[1] + b[3]) / 2), 2)],
                }
                for b, s, c in zip(boxes, d["scores"], d["labels"], strict=True)
                if s >= thr
            ]
            stem = f"{k:03d}_{_safe_stem(path)}"
            scale = min(1.0, 512 / max(h, w))
            small = torch.nn.functional.interpolate(torch.as_tensor(raw)[None], scale_factor=scale, mode="area")[0]
            (tmp / f"{stem}_boxes.png").write_bytes(
                png_image(draw_boxes(small.numpy(), np.zeros((0, 4)), np.asarray([f["box"] for f in found]), scale))
            )
            entry: dict[str, Any] = {
                "input": path.name,
                "image_size": [int(w), int(h)],
                "box_convention": "[x1, y1, x2, y2] pixels of the input image (x = column, y = row)",
                "threshold": thr,
                "findings": found,
                "overlay": f"{stem}_boxes.png",
                "summary": f"{len(found)} finding(s) at score >= {thr:.3f}"
                + (
                    ": " + "; ".join(f"{f['label']} {f['score']:.2f} at {f['box']}" for f in found[:3]) if found else ""
                ),
            }
            if path.is_file() and is_dicom_file(path):
                entry["dicom"] = _dicom_results(bundle, path, tmp, stem, found, (int(w), int(h)))
            results.append(entry)
        write_json(
            tmp / "predictions.json",
            {"bundle": str(bundle_path), "model": bundle.meta["data"]["source"], "predictions": results},
        )
    return results


def _dicom_results(
    bundle: Bundle, path: Path, folder: Path, stem: str, found: list[dict[str, Any]], image_size: tuple[int, int]
) -> dict[str, str]:
    """A TID 1500 SR with one planar-ROI measurement group per finding: label, score and its box as a closed
    polyline on the source image. ``found`` boxes are ``[x1, y1, x2, y2]`` in the pixels of the image read
    (``image_size = (width, height)``); for a single-frame DICOM that is the stored pixel matrix, so they are
    DICOM 2D image coordinates (column, row; (0, 0) = top-left corner of the top-left pixel) as they are.
    The per-axis factor below maps them onto Columns x Rows should the image read ever differ in size."""
    from medsight.io.dicom import read_datasets
    from medsight.serving.dicom_objects import Finding, write_sr

    source = read_datasets([path])[0]
    if not found:
        return {"sr": "", "note": "no finding above the operating point; no SR written"}
    w, h = image_size
    fx, fy = int(source.Columns) / w, int(source.Rows) / h
    findings = [
        Finding(
            label=f["label"],
            probability=min(1.0, max(0.0, f["score"])),
            image_indices=(0,),
            box=(f["box"][0] * fx, f["box"][1] * fy, f["box"][2] * fx, f["box"][3] * fy),
        )
        for f in found
    ]
    name = f"sr_{stem}.dcm"
    write_sr(
        findings,
        [source],
        folder / name,
        f"medsight {bundle.meta['data']['source']} detector",
        str(bundle.meta["versions"]["medsight"]),
    )
    return {
        "sr": name,
        "coordinates": "each finding's box as a closed POLYLINE (SCOORD, column/row pixels) on the source image",
    }


def _safe_stem(path: Path) -> str:
    stem = path.name.split(".")[0] or "input"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:40]
