"""The outcome task end to end on a tiny synthetic task file (no shared data): the same seed gives the same
weights, and the warm model reads sidecar field values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medsight import runtime, tasks
from medsight.tasks.outcome.plan import OutcomeOptions
from medsight.tasks.outcome.predict import OutcomeResult


@pytest.fixture(scope="module")
def task_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 patients, one 40 px image each; the outcome follows age and a bright square in the image."""
    root = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(0)
    rows = ["image,patient_id,died,age,sex"]
    for i in range(60):
        died = i % 3 == 0
        pixels = rng.integers(0, 80, size=(40, 40)).astype(np.uint8)
        if died:
            pixels[10:20, 10:20] = 220
        Image.fromarray(pixels).save(root / f"img{i:02d}.png")
        age = "" if i % 7 == 0 else str(int(rng.normal(75 if died else 55, 8)))
        rows.append(f"img{i:02d}.png,p{i:02d},{int(died)},{age},{'MF'[i % 2]}")
    (root / "clinical.csv").write_text("\n".join(rows) + "\n")
    spec = {
        "table": "clinical.csv",
        "image_column": "image",
        "patient_column": "patient_id",
        "target": {"column": "died", "positive": ["1"], "negative": ["0"], "name": "died"},
        "fields": {"age": "numeric", "sex": "categorical"},
        "attributes": ["sex", "age"],
    }
    path = root / "task.json"
    path.write_text(json.dumps(spec))
    return path


def test_same_seed_same_weights_and_sidecar_fields(task_file: Path, tmp_path: Path) -> None:
    task = tasks.get("outcome")
    assert task.recognises(str(task_file))
    options = OutcomeOptions(seed=1, epochs=2, image_size=32, batch_size=16)
    metas = [task.train(str(task_file), tmp_path / f"b{k}", options) for k in range(2)]
    a, b = (torch.load(tmp_path / f"b{k}" / "model.pt", weights_only=True) for k in range(2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metas[0]["models"] == metas[1]["models"] and metas[0]["plan"]["image_size"] == 32
    image = task_file.parent / "img03.png"
    (task_file.parent / "img03.png.json").write_text(json.dumps({"age": 80}))
    model = runtime.load(tmp_path / "b0")
    (r,) = model.predict([image])
    assert isinstance(r, OutcomeResult) and r.input == "img03.png"
    assert r.missing_fields == ["sex"] and r.n_fields == 2 and 0.0 <= r.probability <= 1.0
    assert r.to_json()["summary"].startswith("p(died)")
