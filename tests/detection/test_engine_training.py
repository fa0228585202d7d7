"""Detection trains on the one engine: the same seed gives the same weights; the history logs both losses, the
warm-up then cosine schedule, and the validation score that selects the epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from detection.test_detection_cli import coco_subset  # noqa: F401  (pytest fixture: 20 real COVID CXRs)
from medsight.tasks.detection import TASK, DetectionOptions


def test_same_seed_same_weights_and_the_engine_history(coco_subset: Path, tmp_path: Path) -> None:  # noqa: F811
    options = DetectionOptions(epochs=2, image_size=64, batch_size=4, seed=3)
    metas = [TASK.train(str(coco_subset), tmp_path / f"b{k}", options) for k in range(2)]
    first, second = (torch.load(tmp_path / f"b{k}" / "model.pt", weights_only=True) for k in range(2))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)

    tr = metas[0]["training"]
    assert tr["epochs_run"] == 2 and tr["stopped_by"] == "epochs" and tr["seed"] == 3
    history = tr["history"]
    assert {"train_loss", "train_cls_loss", "train_box_loss", "val_score", "lr"} <= set(history[0])
    for entry in history:
        assert entry["train_loss"] == pytest.approx(entry["train_cls_loss"] + entry["train_box_loss"], rel=1e-4)
    assert tr["best_epoch"] == max(range(1, 3), key=lambda e: (history[e - 1]["val_score"], -e))
    plan = metas[0]["plan"]
    # warm-up over 2 epochs' iterations: the rate is still rising at the end of the first epoch
    assert history[0]["lr"] == pytest.approx(plan["lr"] / 2)  # (iterations_per_epoch / (2 x iterations_per_epoch))
    assert json.loads((tmp_path / "b0" / "bundle.json").read_text())["training"]["warnings"] == []
