"""Train a RetinaNet bundle on the one training engine: all positives + sampled negatives per epoch, warm-up then
cosine, the epoch with the best validation CPM (lesions) or mAP@0.5 (objects) kept, then the operating point, the
ONNX of the head maps and ``bundle.json``."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsight import config
from medsight.data import splits
from medsight.data.fingerprint import case_hashes, training_record
from medsight.evaluation.froc import detection_metrics
from medsight.io.atomic import atomic_dir
from medsight.tasks.detection import test_time, uncertainty
from medsight.tasks.detection.data import EpochSampler, load_detection, read_items, split_digest
from medsight.tasks.detection.evaluate import errors_at, match, operating_point
from medsight.tasks.detection.network import (
    NETWORK,
    Detections,
    build_detector,
    build_network,
    detect,
    detection_loss,
    export_heads,
    to_monai,
)
from medsight.tasks.detection.plan import DetectionOptions, DetectionPlan, DetectionPlanner
from medsight.training.bundle import FORMAT, ONNX, WEIGHTS, library_versions, now_iso, write_bundle_json
from medsight.training.engine import Engine, KeepBest, LRSchedule, Progress, TimeBudget, Validate, prefetch
from medsight.training.seed import seed_everything

log = logging.getLogger("medsight")

Batch = list[tuple[np.ndarray, np.ndarray, np.ndarray]]


def train(spec: str, out: Path, options: DetectionOptions) -> dict[str, Any]:
    """Train on the patient-level train split, keep the epoch with the best validation score, write the bundle."""
    seed = options.seed
    seed_everything(seed)
    torch.set_num_threads(config.num_threads())
    device = config.device()
    data = load_detection(spec)
    split_seed = splits.split_seed(options.split_seed)  # which cases are tested never depends on the training seed
    parts = data.split(split_seed)
    planner = DetectionPlanner(options, data.kind, len(data.class_names))
    size = planner.determine_image_size()
    train_set = read_items([data.items[i] for i in parts["train"]], size)
    val_set = read_items([data.items[i] for i in parts["val"]], size)
    n_pos = sum(len(b) > 0 for b in train_set.boxes)
    plan = planner.plan(train_set.box_sizes(), n_pos, len(train_set.items) - n_pos)
    log.info("%s", plan.describe())

    torch.manual_seed(seed)
    network = build_network(plan.network)
    detector = build_detector(network, plan)

    def validate() -> tuple[float, dict[str, float]]:
        m = detection_metrics(
            match(detect(detector, val_set.images, val_set.scales), val_set.items, data.kind),
            data.class_names,
            froc=plan.kind == "lesions",
        )
        score = float(m[plan.selection])
        return (-1.0 if math.isnan(score) else score), {}  # an undefined score ranks below any defined one

    def step(batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        images = [torch.as_tensor(x, device=device) for x, _, _ in batch]
        targets = [
            {"boxes": to_monai(b).to(device), "labels": torch.as_tensor(labels).long().to(device)}
            for _, b, labels in batch
        ]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            losses = detector(images, targets)
        logged = {
            "train_cls_loss": float(losses["classification"].detach()),
            "train_box_loss": float(losses["box_regression"].detach()),
        }
        return detection_loss(losses), logged

    sampler = EpochSampler(train_set, plan.negatives_per_epoch, plan.batch_size, plan.flip, np.random.default_rng(seed))
    optimizer = torch.optim.AdamW(
        [p for p in network.parameters() if p.requires_grad], lr=plan.lr, weight_decay=plan.weight_decay
    )
    engine = Engine(
        detector,
        optimizer,
        step,
        lambda epoch: prefetch(sampler(epoch)),
        plan.epochs,
        plan.iterations_per_epoch,
        handlers=[
            LRSchedule(plan.lr, "cosine", warmup_iterations=plan.warmup_epochs * plan.iterations_per_epoch),
            Validate(validate),
            KeepBest(network),
            TimeBudget(plan.time_budget_s),
            Progress("train"),
        ],
        device=device,
        grad_clip=plan.grad_clip,
    )
    state = engine.run()

    detector.eval()
    lesions = plan.kind == "lesions"

    def val_score(dets: Sequence[Detections]) -> float:
        m = detection_metrics(match(list(dets), val_set.items, data.kind), data.class_names, froc=lesions)
        score = float(m[plan.selection])
        return -1.0 if math.isnan(score) else score  # as in epoch selection: undefined ranks below any score

    val_first = detect(detector, val_set.images, val_set.scales)
    val_second = uncertainty.second_pass(
        lambda images, scales: detect(detector, images, scales), val_set.images, val_set.scales, plan.flip
    )
    # the test-time flip, the operating point and the review threshold are all decided on validation
    val_both = test_time.merged(val_first, val_second) if plan.flip else None
    flip_choice = test_time.decide(plan.flip, val_first, val_both, val_score, plan.selection)
    val_dets = val_both if val_both is not None and flip_choice["kept"] else val_first
    if plan.flip:
        log.info(
            "test-time flip on validation %s: image %.4f, with its mirror merged %.4f; %s",
            plan.selection,
            *(c[plan.selection] for c in flip_choice["candidates"]),
            "kept" if flip_choice["kept"] else "not kept",
        )
    val_matches = match(val_dets, val_set.items, data.kind)
    val_metrics = detection_metrics(val_matches, data.class_names, froc=lesions)
    operating = operating_point(val_matches, data.kind)
    review = uncertainty.choose_review_threshold(
        uncertainty.spread(val_first, val_second),
        errors_at(val_matches, float(operating["threshold"]), data.kind),
        plan.flip,
    )
    network.cpu()
    meta: dict[str, Any] = {
        "format": FORMAT,
        "task": "detection",
        "task_type": data.kind,
        "label_names": data.class_names,
        "input": {
            "spatial_dims": 2,
            "spatial_size": [plan.image_size, plan.image_size],
            "n_channels": 1,
            "layout": "N,C,H,W",
            "dtype": "float32",
        },
        "plan": plan.to_json(),
        "options": options.given(),
        "preprocessing": {
            "steps": [
                "grey: mean of colour channels; min-max scaled to [0, 1] per image",
                f"resize keeping aspect ratio so the longest side is {plan.image_size} (area when shrinking), "
                "zero-pad bottom/right to a square",
                "boxes scaled per axis by (new size / size read); predictions mapped back by the inverse",
            ],
            "augmentation": ("random horizontal flip, " if plan.flip else "no flip (lateral objects), ")
            + "random contrast/brightness (x U(0.85, 1.15) + U(-0.05, 0.05))",
            "box_convention": "[x1, y1, x2, y2], x = column, y = row, continuous pixel coordinates of the image read",
        },
        "network": {
            "name": NETWORK,
            "kwargs": plan.network.to_json(),
            "parameters": int(sum(p.numel() for p in network.parameters())),
            "detector": _describe_detector(plan),
        },
        "data": {
            "source": data.name,
            "modality": "mammography" if data.kind == "lesions" else "radiography",
            "split_method": "patient-level 70/10/20 (StratifiedGroupKFold on 'has any box'), split seed "
            + str(split_seed),
            "split_seed": split_seed,
            "n": {k: len(v) for k, v in parts.items()},
            "split_digest": {k: split_digest(data.items, v) for k, v in parts.items()},
            "case_hashes": training_record(case_hashes(train_set.images), case_hashes(val_set.images)),
            "fingerprint": data.fingerprint,
            "excluded": data.excluded,
            "conventions": data.conventions,
            "kind": data.kind,
        },
        "training": {
            "seed": seed,
            "epochs_requested": plan.epochs,
            "epochs_run": state.epoch,
            "best_epoch": state.best_epoch,
            "stopped_by": state.stopped_by,
            "seconds": round(state.elapsed, 1),
            "time_budget_s": plan.time_budget_s,
            "optimizer": f"AdamW(lr={plan.lr:g}, weight_decay={plan.weight_decay:g}), "
            f"{plan.warmup_epochs}-epoch warm-up + cosine, grad clip {plan.grad_clip:g}",
            "batch_size": plan.batch_size,
            "device": device,
            "selection": "best validation " + ("CPM" if plan.selection == "cpm" else "mAP@0.5"),
            "history": state.history,
            "warnings": state.warnings,
        },
        "test_time_flip": flip_choice,
        "operating_point": operating,
        "uncertainty": review,
        "metrics": {"val": {k: v for k, v in val_metrics.items() if not (isinstance(v, float) and math.isnan(v))}},
        "versions": library_versions(),
        "created": now_iso(),
    }
    with atomic_dir(out) as tmp:
        torch.save(network.state_dict(), tmp / WEIGHTS)
        meta["onnx"] = export_heads(network, torch.as_tensor(val_set.images[:1]), tmp / ONNX)
        write_bundle_json(tmp, meta)
    log.info("bundle written to %s (best epoch %d, val score %.4f)", out, state.best_epoch, state.best_score)
    return meta


def _describe_detector(plan: DetectionPlan) -> str:
    d = plan.detector
    return (
        f"monai.apps.detection RetinaNetDetector: ATSS matcher ({d.atss_candidates} candidates), hard-negative "
        f"sampler ({d.sampled_anchors_per_image} per image, {d.positive_fraction:.0%} positive), BoxCoder, "
        f"sliding-window inference, NMS {d.nms_threshold:g}, {d.detections_per_image} detections per image"
    )
