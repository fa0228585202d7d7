"""Outcome through the same CLI as every task, on the real COVID chest X-ray set (ICU admission)."""

from __future__ import annotations

import json
from pathlib import Path

from medsight.cli import main
from medsight.data.clinical import load_outcome
from medsight.pipelines import detect_task


def test_patient_level_split_has_no_shared_patient(shared_data: Path) -> None:
    for target in ("survival", "icu"):
        data = load_outcome(f"{shared_data / 'covid_cxr_lung_boxes'}#{target}")
        parts = data.split(seed=0)
        owners = {k: {data.patient_ids[i] for i in v} for k, v in parts.items()}
        assert not (owners["train"] & owners["val"]) and not (owners["train"] & owners["test"])
        assert not (owners["val"] & owners["test"])
        assert sum(len(v) for v in parts.values()) == len(data.y)
        assert data.excluded["image file absent"] == 7 and data.excluded["outcome not recorded"] > 0


def test_train_evaluate_predict(shared_data: Path, tmp_path: Path) -> None:
    spec = f"{shared_data / 'covid_cxr_lung_boxes'}#icu"
    assert detect_task(spec) == "outcome"
    assert detect_task(str(shared_data / "covid_cxr_lung_boxes")) == "detection"
    bundle = tmp_path / "bundle"
    assert main(["train", spec, "--out", str(bundle), "--epochs", "1"]) == 0
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["task"] == "outcome" and meta["selection"]["selected"] in (
        "image",
        "clinical",
        "fused_embedding",
        "fused_late",
    )
    ev = tmp_path / "eval"
    assert main(["evaluate", str(bundle), spec, "--out", str(ev), "--bootstrap", "20"]) == 0
    m = json.loads((ev / "metrics.json").read_text())
    assert {"auc_image", "auc_clinical", "auc_fused_embedding", "auc_fused_late"} <= set(m["metrics"])
    assert set(m["subgroups"]) == {"sex", "age"}
    assert "(image)" in m["importance"]["fields"] and "age" in m["importance"]["fields"]
    html = (ev / "card.html").read_text()
    assert "Models side by side" in html and "Subgroups" in html and "Grad-CAM" in html
    table = tmp_path / "clinical.csv"
    image = sorted((shared_data / "covid_cxr_lung_boxes" / "images_384").iterdir())[0]
    table.write_text(f"image,age,sex,temperature\n{image},71,F,\n")
    pred = tmp_path / "pred"
    assert main(["predict", str(bundle), str(table), "--out", str(pred), "--explain"]) == 0
    out = json.loads((pred / "predictions.json").read_text())["predictions"][0]
    assert "temperature" in out["missing_fields"] and "age" not in out["missing_fields"]
    assert out["summary"].startswith("p(went to ICU)") and (pred / out["heatmap"]["image"]).is_file()
