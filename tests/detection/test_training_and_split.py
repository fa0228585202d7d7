"""A short detection training on real mini-MIAS images lowers the loss; patient-level splits never share a patient."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medsight.data.detection import load_coco, load_mias
from medsight.io.images import read_image
from medsight.tasks.detection import network as task
from medsight.tasks.detection.data import prepare, scale_boxes
from medsight.tasks.detection.plan import DetectionOptions, DetectionPlanner


def test_short_training_on_real_images_lowers_the_loss(shared_data: Path) -> None:
    torch.manual_seed(0)
    data = load_mias(shared_data / "mini_mias")
    chosen = [it for it in data.items if it.key in ("mdb001", "mdb028", "mdb010", "mdb025")]
    size = 128
    images, boxes = [], []
    for it in chosen:
        arr, (sx, sy) = prepare(read_image(it.image), size)
        images.append(torch.as_tensor(arr))
        boxes.append(scale_boxes(it.boxes, sx, sy))
    sizes = np.concatenate([np.stack([b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]], 1) for b in boxes])
    plan = DetectionPlanner(DetectionOptions(image_size=size), "lesions", 1).plan(sizes, len(chosen), 0)
    assert plan.image_size == size and plan.feature_map_scales == [1, 2, 4, 8]
    detector = task.build_detector(task.build_network(plan.network), plan)
    detector.train()
    opt = torch.optim.AdamW(detector.network.parameters(), lr=2e-3)
    targets = [{"boxes": task.to_monai(b), "labels": torch.zeros(len(b), dtype=torch.long)} for b in boxes]
    losses = []
    for _ in range(12):
        loss = task.detection_loss(detector(images, targets))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses


def test_box_axis_order_round_trip() -> None:
    ours = np.array([[10.0, 20.0, 30.0, 60.0]])  # x1 (col), y1 (row), x2, y2
    monai = task.to_monai(ours)
    assert monai.tolist() == [[20.0, 10.0, 60.0, 30.0]]  # MONAI: first spatial axis (rows) first
    assert task.from_monai(monai).tolist() == ours.tolist()


def test_mias_split_is_patient_level(shared_data: Path) -> None:
    data = load_mias(shared_data / "mini_mias")
    parts = data.split(seed=0)
    owners = {name: {data.items[i].patient_id for i in idx} for name, idx in parts.items()}
    assert not (owners["train"] & owners["val"]) and not (owners["train"] & owners["test"])
    assert not (owners["val"] & owners["test"])
    assert sum(len(v) for v in parts.values()) == len(data.items)
    where = {data.items[i].key: name for name, idx in parts.items() for i in idx}
    assert where["mdb001"] == where["mdb002"] and where["mdb027"] == where["mdb028"]  # a woman's two breasts
    assert 0.15 < len(parts["test"]) / len(data.items) < 0.25


def test_coco_boxes_map_onto_the_staged_pixels(shared_data: Path) -> None:
    data = load_coco(shared_data / "covid_cxr_lung_boxes")
    assert data.class_names == ["Right Lung", "Left Lung"] and len(data.items) == 608
    reasons = sorted(e["reason"] for e in data.excluded)  # 7 absent files; image 425 has a box with no category
    assert reasons == ["a box without a known category_id"] + ["image file not found"] * 7
    first = next(it for it in data.items if it.key == "1")  # 882x888 original, staged 381x384
    # bbox [42, 72, 245, 504] (right lung) scaled by 381/882 and 384/888
    assert np.allclose(first.boxes[0], [42 * 381 / 882, 72 * 384 / 888, 287 * 381 / 882, 576 * 384 / 888])
    assert first.labels.tolist() == [0, 1]
    parts = data.split(seed=0)
    owners = {k: {data.items[i].patient_id for i in v} for k, v in parts.items()}
    assert not (owners["train"] & owners["test"]) and not (owners["val"] & owners["test"])
