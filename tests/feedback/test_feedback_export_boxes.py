"""Detection feedback as COCO: the readers' boxes (edited, the AI's on agree, none on a disagreement with a positive
image) over real BreastMNIST pixels stored as CR instances, written as a COCO folder the detection task reads with
the frozen split declared per image. No detection bundle is trained here (that takes minutes, not seconds): the
AI's result entries are written as the worker writes them (``predictions.json``) and the verdicts are recorded
through ``medsight.review.verdicts``; the export's COCO writer is then driven directly."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from feedback.service_fixture import store_cases
from medsight.data.detection import load_detection
from medsight.errors import MedsightError
from medsight.feedback.export import NOT_DRAWN, _write_detection
from medsight.feedback.splits import FrozenSplit
from medsight.review.verdicts import latest_per_finding, list_verdicts, record_verdict
from medsight.serving.database import open_database
from medsight.serving.store import StudyStore

AI_BOX = [4.0, 5.0, 14.0, 20.0]


def test_detection_export_is_coco_with_the_readers_boxes(shared_data: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "service"
    findings = store_cases(data_dir, shared_data, 0, 8, patients=6)
    results = data_dir / "results"
    engine = open_database(None, data_dir)
    expected = {}
    for i, f in enumerate(findings):
        folder = results / f.study_uid / f"det-{i + 1}"
        folder.mkdir(parents=True)
        ai = [{"box": AI_BOX, "label": "lesion", "score": 0.9}] if i != 4 else []
        entry = {"input": f"{f.sop_uid}.dcm", "findings": ai, "threshold": 0.5}
        (folder / "predictions.json").write_text(json.dumps({"task": "detection", "predictions": [entry]}))
        kind, edit = ["agree", None]
        if i in (1, 5):
            kind, edit = "edit", {"boxes": [{"sop_uid": f.sop_uid, "x0": 2.0, "y0": 3.0, "x1": 9.5, "y1": 11.0,
                                             "label": "lesion"}]}  # fmt: skip
        elif i in (2, 4):
            kind = "disagree"  # 2: a false positive; 4: the AI found nothing and the reader drew nothing
        expected[f.pixels.tobytes()] = {"agree": [AI_BOX] if ai else [], "edit": [[2.0, 3.0, 9.5, 11.0]],
                                        "disagree": []}[kind]  # fmt: skip
        record_verdict(
            engine, study_uid=f.study_uid, finding_id=f"det-{i + 1}/0", model="det", model_version="0.1",
            bundle_checksum="0" * 64, label="lesion" if ai else "no finding", probability=0.9 if ai else None,
            ai_positive=bool(ai), reader="dr_a", role="radiologist", decision=kind, reader_label="lesion",
            reader_positive=kind != "disagree", edit=edit, source_sop_uids=[f.sop_uid],
        )  # fmt: skip
    by_finding: dict[tuple[str, str], list] = {}
    for v in latest_per_finding(list_verdicts(engine, model="det")):
        by_finding.setdefault((v.study_uid, v.finding_id), []).append(v)
    store = StudyStore(engine, data_dir / "instances")
    split = FrozenSplit(tmp_path / "split.json")
    left_out: Counter[str] = Counter()
    out = tmp_path / "coco"
    key = b"k" * 32
    summary = _write_detection(out, store, results, key, split, by_finding, ["lesion"], left_out)
    engine.dispose()

    assert left_out == Counter({NOT_DRAWN: 1}) and summary["cases"] == 7
    data = load_detection(out)  # the detection task's reader
    assert len(data.items) == 7 and data.class_names == ["lesion"]
    for item in data.items:
        from medsight.io.images import read_image

        pixels = read_image(item.image)[0]
        np.testing.assert_allclose(item.boxes, np.asarray(expected[pixels.astype(np.uint8).tobytes()]).reshape(-1, 4))
    # the frozen split is the one the task uses; patients are pseudonyms on one side each
    parts = data.split()
    assert len(parts["test"]) == 0
    for side in ("train", "val"):
        assert {data.items[i].patient_id for i in parts[side]} == {
            u for u, s in split.assignments.items() if s == side
        } & {it.patient_id for it in data.items}
    text = "".join(p.read_bytes().decode("latin-1") for p in out.rglob("*") if p.is_file())
    assert "PAT" not in text and "DOE" not in text
    assert not any(f.study_uid in text or f.sop_uid in text for f in findings)


def test_a_coco_split_is_used_when_every_image_declares_one_and_refused_when_some_do(
    shared_data: Path, tmp_path: Path
) -> None:
    from PIL import Image

    raw = np.load(shared_data / "medmnist" / "breastmnist.npz")["train_images"][:20]
    (tmp_path / "images").mkdir()
    images: list[dict[str, Any]] = []
    for i, pixels in enumerate(raw):
        Image.fromarray(pixels).save(tmp_path / "images" / f"{i}.png")
        meta = {"patientid": f"p{i // 2}", "split": "val" if i // 2 in (1, 4) else "train"}
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 28, "height": 28, "metadata": meta})
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}]
    doc = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "lesion"}]}
    (tmp_path / "annotations.json").write_text(json.dumps(doc))
    parts = load_detection(tmp_path).split()
    assert sorted(parts["val"].tolist()) == [2, 3, 8, 9] and len(parts["train"]) == 16 and len(parts["test"]) == 0
    del images[5]["metadata"]["split"]  # one image without a declared split: refused, never a silent random split
    (tmp_path / "annotations.json").write_text(json.dumps(doc))
    with pytest.raises(MedsightError, match="1 of 20 images declare no split"):
        load_detection(tmp_path).split()
    for image in images:  # no image declaring one: the derived 70/10/20 patient split
        image["metadata"].pop("split", None)
    (tmp_path / "annotations.json").write_text(json.dumps(doc))
    derived = load_detection(tmp_path).split()
    assert len(derived["test"]) > 0 and sum(len(v) for v in derived.values()) == 20
