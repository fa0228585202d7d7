"""The review loop against messy studies and messy use (audit): refused verdicts that left reader SRs in the store,
non-ASCII comments written as "?", palette PNG masks read inverted, a re-run that replaced a judged result, NaN in
a result, the model filter hiding a model's failed studies, boxes on multi-frame images, and the log-in throttle's
memory. A real store, queue, audit log and user directory; the AI's result folders are written as the worker writes
them (predictions.json and a real SR), so no model is trained."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medsight.review.agreement import agreement
from medsight.review.api import ReviewBackend
from medsight.review.login_throttle import LoginThrottle
from medsight.review.reader_objects import decode_mask
from medsight.review.verdicts import list_verdicts
from medsight.serving.audit import AuditLog
from medsight.serving.database import open_database
from medsight.serving.dicom_objects import Finding, write_sr
from medsight.serving.http_api import create_app
from medsight.serving.jobs import JobQueue
from medsight.serving.security import UserDirectory
from medsight.serving.store import StudyStore

CR = ("dicom_samples", "pydicom_data", "RG3_J2KR.dcm")
MULTIFRAME_MR = ("dicom_samples", "pydicom_data", "emri_small.dcm")  # one MR instance of 10 frames


class Site:
    """The review routes over a real store, queue, audit log and users (no listener, no worker)."""

    def __init__(self, root: Path) -> None:
        self.engine = open_database(None, root / "data")
        self.store = StudyStore(self.engine, root / "instances", min_free_bytes=0)
        self.queue = JobQueue(self.engine, max_attempts=1)
        self.audit = AuditLog(root / "audit.log")
        self.users = UserDirectory(self.engine)
        self.results = root / "results"
        self.results.mkdir()
        backend = ReviewBackend(
            engine=self.engine,
            store=self.store,
            audit=self.audit,
            users=self.users,
            results_dir=self.results,
            queue=self.queue,
            send_to=("pacs",),
        )
        self.client = TestClient(create_app(self.store, self.users, self.audit, routers=[backend.router]))
        self.tokens = {}
        for role in ("viewer", "radiologist"):
            self.users.add_user(role, role)
            self.tokens[role] = self.users.create_token(role)

    def auth(self, role: str = "radiologist") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def study(self, path: Path, **changes: Any) -> Dataset:
        """A copy of ``path`` as a study of its own, stored; ``...`` as a value removes the attribute."""
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for keyword, value in changes.items():
            if value is ...:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        self.store.store(ds, calling_ae="MODALITY", peer="test")
        return ds

    def result(self, ds: Dataset, route: str, task: str, entries: list[dict[str, Any]], sr: bool = True) -> str:
        """A finished inference job's result folder, as the worker leaves it; returns its name."""
        job = self.queue.enqueue("inference", str(ds.StudyInstanceUID), route, {})
        claimed = self.queue.claim("test", kinds=["inference"])
        assert claimed is not None and claimed.id == job.id
        self.queue.complete(job.id, {}, worker="test")
        folder = self.results / str(ds.StudyInstanceUID) / f"{route}-{job.id}"
        folder.mkdir(parents=True)
        if sr:
            write_sr([Finding(str(entries[0].get("decision", "finding")), 0.9)], [ds], folder / "sr.dcm")
            for entry in entries:
                entry.setdefault("dicom", {})["sr"] = "sr.dcm"
        (folder / "predictions.json").write_text(json.dumps({"bundle": "", "task": task, "predictions": entries}))
        return folder.name

    def verdict(self, ds: Dataset, body: dict[str, Any], role: str = "radiologist") -> Any:
        return self.client.post(f"/api/studies/{ds.StudyInstanceUID}/verdicts", json=body, headers=self.auth(role))

    def reader_objects(self, ds: Dataset) -> list[str]:
        return [i.sop_uid for i in self.store.instances(str(ds.StudyInstanceUID)) if i.is_result]


def _classified(ds: Dataset, decision: str = "malignant", p: float = 0.9) -> dict[str, Any]:
    return {
        "input": f"{ds.SOPInstanceUID}.dcm",
        "probabilities": {"normal": 1 - p, "malignant": p},
        "decision": decision,
        "operating_point": {"threshold": 0.5, "method": "youden", "on": "malignant"},
    }


def _png(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")


def _texts(item: Dataset) -> list[str]:
    found = []
    for inner in item.get("ContentSequence", []):
        if "TextValue" in inner:
            found.append(str(inner.TextValue))
        found += _texts(inner)
    return found


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    made = Site(tmp_path)
    try:
        yield made
    finally:
        made.engine.dispose()


def test_a_refused_verdict_leaves_no_reader_objects(site: Site, shared_data: Path) -> None:
    """A verdict refused for its seconds_spent was refused only after its SR had been stored (DICOMweb served it,
    beside no verdict); a box on another image left an empty folder per attempt. Both are refused before anything
    is written now, the first as a 422 that names the field."""
    ds = site.study(shared_data.joinpath(*CR))
    finding = site.result(ds, "cr", "classification", [_classified(ds)]) + "/0"
    too_long = site.verdict(ds, {"finding_id": finding, "decision": "agree", "seconds_spent": 1e9})
    assert too_long.status_code == 422 and too_long.json()["detail"][0]["loc"] == ["body", "seconds_spent"]
    box = {"sop_uid": generate_uid(), "x0": 1, "y0": 1, "x1": 5, "y1": 5}
    elsewhere = site.verdict(ds, {"finding_id": finding, "decision": "edit", "edit": {"boxes": [box]}})
    assert elsewhere.status_code == 400 and "not one of the finding's images" in elsewhere.json()["detail"]
    assert site.reader_objects(ds) == [] and list_verdicts(site.engine) == []
    assert list((site.results / str(ds.StudyInstanceUID)).glob("review-*")) == []


@pytest.mark.parametrize(
    ("charset", "patient", "comment", "written_in"),
    [
        (..., ..., "Läsion — 肺結節, 5 mm", "ISO_IR 192"),  # the default repertoire, PatientName absent
        ("ISO_IR 100", "Müller^Jürgen", "Läsion — 肺結節", "ISO_IR 192"),
        ("ISO_IR 100", "Müller^Jürgen", "Läsion, 5 mm", "ISO_IR 100"),  # Latin-1 holds it: kept
        ("ISO_IR 126", "Διονυσιος", "Ergebnis: Verdacht auf Läsion", "ISO_IR 192"),
    ],
)
def test_a_non_ascii_comment_reaches_the_sr_as_written(
    site: Site, shared_data: Path, charset: Any, patient: Any, comment: str, written_in: str
) -> None:
    """The reader's SR was written in the source's character set: every character it lacks became "?" (a comment
    in another script, or any accent on a study in the default repertoire). The SR is in UTF-8 when it must be, the
    comment and the patient's name both intact, and the source's set is kept when it holds the comment."""
    stripped = {"PatientBirthDate": ..., "PatientSex": ..., "StudyDate": "", "SeriesNumber": None}
    ds = site.study(shared_data.joinpath(*CR), SpecificCharacterSet=charset, PatientName=patient, **stripped)
    finding = site.result(ds, "cr", "classification", [_classified(ds)]) + "/0"
    mask = np.zeros((int(ds.Rows), int(ds.Columns)), np.uint8)
    mask[10:40, 20:60] = 255
    made = site.verdict(
        ds,
        {
            "finding_id": finding,
            "decision": "edit",
            "comment": comment,
            "edit": {"mask": {str(ds.SOPInstanceUID): _png(Image.fromarray(mask))}},
        },
    )
    assert made.status_code == 201, made.text
    sr_row = site.store.instance(made.json()["reader_sr_sop_uid"])
    assert sr_row is not None
    sr = pydicom.dcmread(sr_row.path)
    assert sr.get("SpecificCharacterSet") == written_in
    assert comment in _texts(sr)
    assert str(sr.get("PatientName") or "") == ("" if patient is ... else patient)
    seg_row = site.store.instance(made.json()["reader_seg_sop_uid"])
    assert seg_row is not None and int(np.asarray(pydicom.dcmread(seg_row.path).pixel_array).sum()) == 30 * 40


def test_a_palette_mask_is_read_by_its_index_not_its_colour() -> None:
    """A palette PNG (a label map) whose index 0 is drawn white was read by brightness: every pixel the reader
    left out became the mask and the lesion a hole in it. The index is what is nonzero now."""
    labels = np.zeros((6, 8), np.uint8)
    labels[1:3, 2:5] = 1
    palette = Image.fromarray(labels, mode="P")
    palette.putpalette([255, 255, 255, 0, 0, 0])
    assert (decode_mask(_png(palette), 6, 8) == (labels > 0)).all()
    # a transparent pixel was not painted, whatever colour it holds; an opaque black one neither
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = labels * 255
    assert (decode_mask(_png(Image.fromarray(rgba, "RGBA")), 6, 8) == (labels > 0)).all()


def test_a_rerun_after_a_verdict_is_read_again_and_counted_once(site: Site, shared_data: Path) -> None:
    """A re-run replaced a judged negative result with a positive one: the worklist still said reviewed and put
    it at the end, a verdict sent from the old view was a bare 404, and the agreement counted the one reader twice
    on the one image. Now the new result is unreviewed and first, the late verdict is a 409 naming the re-run, the
    study view keeps the earlier verdict apart, and the reader counts once (their newest verdict)."""
    ds = site.study(shared_data.joinpath(*CR))
    first = site.result(ds, "cr", "classification", [_classified(ds, "normal", 0.2)]) + "/0"
    assert site.verdict(ds, {"finding_id": first, "decision": "agree"}).status_code == 201
    listed = site.client.get("/api/worklist", headers=site.auth()).json()["studies"]
    assert listed[0]["reviewed"] is True
    rerun = site.result(ds, "cr", "classification", [_classified(ds, "malignant", 0.95)])
    (study,) = site.client.get("/api/worklist?reviewed=no", headers=site.auth()).json()["studies"]
    assert study["reviewed"] is False and study["priority"] > 2 and "already reviewed" not in study["priority_reason"]
    late = site.verdict(ds, {"finding_id": first, "decision": "disagree"})
    assert late.status_code == 409 and rerun in late.json()["detail"]
    view = site.client.get(f"/api/studies/{ds.StudyInstanceUID}/review", headers=site.auth("viewer")).json()
    assert [f["verdicts"] for f in view["findings"]] == [[]]
    assert [v["finding_id"] for v in view["superseded_verdicts"]] == [first]
    assert site.verdict(ds, {"finding_id": rerun + "/0", "decision": "agree"}).status_code == 201
    scored = agreement("cr", list_verdicts(site.engine, model="cr")).to_json()
    assert scored["n_verdicts"] == 1 and scored["readers"] == 1
    assert scored["confusion"] == {"tp": 1, "fp": 0, "fn": 0, "tn": 0}
    # a second reader on the same finding is a second reader, not a superseded verdict
    site.users.add_user("second", "radiologist")
    site.tokens["second"] = site.users.create_token("second")
    assert site.verdict(ds, {"finding_id": rerun + "/0", "decision": "disagree"}, "second").status_code == 201
    assert agreement("cr", list_verdicts(site.engine, model="cr")).to_json()["readers"] == 2


def test_a_nan_in_a_result_does_not_take_the_worklist_down(site: Site, shared_data: Path) -> None:
    """predictions.json may hold NaN (Python writes it); the worklist and the study view answered with an error for
    every reader, whatever the study. The probability is null and the finding deferred to the reader now."""
    ds = site.study(shared_data.joinpath(*CR))
    other = site.study(shared_data.joinpath(*CR))
    site.result(ds, "cr", "classification", [_classified(ds, "malignant", float("nan"))], sr=False)
    site.result(other, "cr", "classification", [_classified(other)])
    listed = site.client.get("/api/worklist", headers=site.auth())
    assert listed.status_code == 200
    by_uid = {s["study_uid"]: s for s in listed.json()["studies"]}
    (odd,) = by_uid[str(ds.StudyInstanceUID)]["findings"]
    assert odd["probability"] is None and odd["defer"] is True and odd["positive"] is False
    assert by_uid[str(other.StudyInstanceUID)]["findings"][0]["probability"] == pytest.approx(0.9)
    view = site.client.get(f"/api/studies/{ds.StudyInstanceUID}/review", headers=site.auth())
    assert view.status_code == 200 and view.json()["findings"][0]["probability"] is None


def test_the_model_filter_lists_the_studies_that_model_failed_on(site: Site, shared_data: Path) -> None:
    """model=cr kept only studies with a finding of cr, so model=cr&status=failed could never list anything: the
    studies to read without that model's help were hidden. A model's failed and queued studies are its too."""
    failed = site.study(shared_data.joinpath(*CR))
    waiting = site.study(shared_data.joinpath(*CR))
    other_model = site.study(shared_data.joinpath(*CR))
    job = site.queue.enqueue("inference", str(failed.StudyInstanceUID), "cr", {})
    assert site.queue.claim("test", kinds=["inference"]) is not None
    site.queue.fail(job.id, "model crashed", worker="test")
    site.queue.enqueue("inference", str(waiting.StudyInstanceUID), "cr", {})
    site.queue.enqueue("inference", str(other_model.StudyInstanceUID), "ct", {})

    def listed(query: str) -> set[str]:
        found = site.client.get(f"/api/worklist?{query}", headers=site.auth("viewer"))
        assert found.status_code == 200
        return {s["study_uid"] for s in found.json()["studies"]}

    assert listed("model=cr&status=failed") == {str(failed.StudyInstanceUID)}
    assert listed("model=cr") == {str(failed.StudyInstanceUID), str(waiting.StudyInstanceUID)}


def test_a_box_on_a_multi_frame_image_names_its_frame(site: Site, shared_data: Path) -> None:
    """A box on a multi-frame image was written without a frame, which DICOM reads as a box on every frame. It
    needs its frame now (1-based), which the SR references; a frame the image lacks is refused."""
    ds = site.study(shared_data.joinpath(*MULTIFRAME_MR))
    entry = {
        "input": f"{ds.SOPInstanceUID}.dcm",
        "threshold": 0.5,
        "findings": [{"label": "lesion", "score": 0.8, "box": [1, 2, 10, 12]}],
    }
    finding = site.result(ds, "det", "detection", [entry], sr=False) + "/0"
    box = {"sop_uid": str(ds.SOPInstanceUID), "x0": 1, "y0": 2, "x1": 9, "y1": 8}
    unplaced = site.verdict(ds, {"finding_id": finding, "decision": "edit", "edit": {"boxes": [box]}})
    assert unplaced.status_code == 400 and "needs its frame" in unplaced.json()["detail"]
    beyond = site.verdict(ds, {"finding_id": finding, "decision": "edit", "edit": {"boxes": [box | {"frame": 11}]}})
    assert beyond.status_code == 400 and "frame 11" in beyond.json()["detail"]
    assert site.reader_objects(ds) == []
    placed = site.verdict(ds, {"finding_id": finding, "decision": "edit", "edit": {"boxes": [box | {"frame": 4}]}})
    assert placed.status_code == 201, placed.text
    sr_row = site.store.instance(placed.json()["reader_sr_sop_uid"])
    assert sr_row is not None
    assert "Referenced Frame Number             IS: '4'" in str(pydicom.dcmread(sr_row.path))
    (verdict,) = list_verdicts(site.engine)
    assert verdict.edit is not None and verdict.edit["boxes"][0]["frame"] == 4


def test_the_login_throttle_forgets_names_tried_once() -> None:
    """A name's failures were pruned only when that name was tried again, so guessing at many user names grew the
    throttle's table without bound; names whose failures left the window are swept out now."""
    now = [0.0]
    throttle = LoginThrottle(clock=lambda: now[0])
    for i in range(20_000):
        now[0] = float(i)
        peer = f"10.0.{i % 200}.{i % 250}"
        assert throttle.retry_after(f"user{i}", peer) is None
        throttle.failed(f"user{i}", peer)
    assert len(throttle._failures) < 5_000
    for _ in range(5):  # the throttle still works for a name being guessed now
        throttle.failed("alice", "10.9.9.9")
    assert throttle.retry_after("alice", "10.1.1.1") is not None
