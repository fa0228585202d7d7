"""The review routes on a real service: a CR study through the real worker (a model trained for one epoch on real
BreastMNIST), then log-in, worklist, study view, verdicts (agree, label, boxes, mask), agreement, model card, role
checks, the audit log, and the reader's SR queued for export to the ``[review]`` destination."""

from __future__ import annotations

import base64
import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from medsight.cli import main
from medsight.review.verdicts import list_verdicts
from medsight.serving.config import load_config
from medsight.serving.http_api import create_app
from medsight.serving.service import Service
from medsight.serving.worker import EXPORT, INFERENCE, run_inference

CR = ("dicom_samples", "pydicom_data", "RG3_J2KR.dcm")
PASSWORD = "correct horse battery"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    out = tmp_path_factory.mktemp("review_bundle") / "bundle"
    assert main(["train", "--task", "classification", "medmnist:breastmnist", "--out", str(out), "--epochs", "1"]) == 0
    return out


class Site:
    """A configured service (not listening: its parts are driven directly) with one user per role."""

    def __init__(self, folder: Path, bundle: Path, shared: Path) -> None:
        cfg = folder / "site.toml"
        cfg.write_text(
            f"""[service]
data_dir = "{folder / "data"}"
http_port = {_free_port()}

[dicom]
port = {_free_port()}
allow_any = true

[[destinations]]
name = "pacs"
kind = "dicom"
ae_title = "PACS"
host = "127.0.0.1"
port = {_free_port()}

[[routes]]
name = "cr"
bundle = "{bundle}"
match.modality = ["CR"]
outputs = ["sr", "sc"]

[review]
send_to = ["pacs"]
""",
            encoding="utf-8",
        )
        self.service = Service(load_config(cfg))
        for role in ("viewer", "radiologist", "admin"):
            self.service.users.add_user(role, role)
            self.service.users.set_password(role, PASSWORD)
        self.ds = pydicom.dcmread(shared.joinpath(*CR))
        self.study = str(self.ds.StudyInstanceUID)
        self.service.store.store(self.ds, calling_ae="MODALITY", peer="test")
        assert self.service.complete_study(self.study)
        job = self.service.queue.claim("test-worker", kinds=[INFERENCE])
        assert job is not None
        self.service.queue.complete(job.id, run_inference(self.service.ctx, job), worker="test-worker")
        self.app = create_app(
            self.service.store, self.service.users, self.service.audit, routers=[self.service.review_backend().router]
        )
        self.client = TestClient(self.app)
        self.tokens = {role: self.login(role) for role in ("viewer", "radiologist", "admin")}

    def login(self, role: str) -> str:
        response = self.client.post("/api/login", json={"user": role, "password": PASSWORD})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["user"] == role and body["role"] == role and body["expires_at"].endswith("+00:00")
        return str(body["token"])

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def audit(self) -> list[dict[str, Any]]:
        return list(self.service.audit.records())


@pytest.fixture
def site(tmp_path: Path, bundle: Path, shared_data: Path) -> Iterator[Site]:
    made = Site(tmp_path, bundle, shared_data)
    try:
        yield made
    finally:
        made.service.engine.dispose()


def _png(mask: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")


def test_login_refuses_wrong_passwords_and_audits_both(site: Site) -> None:
    wrong = site.client.post("/api/login", json={"user": "radiologist", "password": "not the password"})
    unknown = site.client.post("/api/login", json={"user": "nobody", "password": PASSWORD})
    assert wrong.status_code == 401 and unknown.status_code == 401
    assert wrong.json()["detail"] == unknown.json()["detail"] == "wrong user name or password"
    logins = [r for r in site.audit() if r["action"] == "login"]
    assert [r["outcome"] for r in logins].count("ok") == 3
    assert sum(1 for r in logins if r["outcome"].startswith("401")) == 2
    # The issued token works on the other routes and expires in 8 hours.
    listed = site.service.users.list_users()
    tokens = [t for u in listed if u.name == "radiologist" for t in u.tokens]
    assert len(tokens) == 1 and tokens[0].expires_at is not None
    assert tokens[0].expires_at - tokens[0].created_at == pytest.approx(8 * 3600)


def test_worklist_and_study_view_by_role(site: Site) -> None:
    rad = site.client.get("/api/worklist", headers=site.auth("radiologist"))
    assert rad.status_code == 200, rad.text
    (study,) = rad.json()["studies"]
    assert study["study_uid"] == site.study and study["ai_status"] == "done" and study["reviewed"] is False
    assert study["patient_id"] == str(site.ds.PatientID) and "patient_name" in study
    assert study["modalities"] == ["CR"]
    (finding,) = study["findings"]
    assert finding["model"] == "cr" and finding["label"] in ("malignant", "normal, benign")
    assert 0.0 <= finding["probability"] <= 1.0 and isinstance(finding["positive"], bool)
    assert finding["operating_point"]["on"] in ("malignant", "normal, benign")
    assert isinstance(study["priority"], float) and study["priority_reason"]
    # A viewer sees the same study without the patient's name or ID; both views are audited.
    viewer = site.client.get("/api/worklist", headers=site.auth("viewer")).json()["studies"][0]
    assert "patient_id" not in viewer and "patient_name" not in viewer
    views = [r for r in site.audit() if r["action"] == "worklist"]
    assert [r["target"]["identifiers_shown"] for r in views] == [True, False]
    assert all(site.study in r["target"]["studies"] for r in views)
    assert str(site.ds.PatientID) not in (site.service.audit.path.read_text())
    # Filters.
    for query, expected in (
        ("status=done", 1),
        ("status=failed", 0),
        ("model=cr", 1),
        ("model=other", 0),
        ("reviewed=no", 1),
        ("reviewed=yes", 0),
        ("modality=CR", 1),
        ("modality=MR", 0),
    ):
        got = site.client.get(f"/api/worklist?{query}", headers=site.auth("viewer")).json()["studies"]
        assert len(got) == expected, query
    assert site.client.get("/api/worklist?status=maybe", headers=site.auth("viewer")).status_code == 422
    assert site.client.get("/api/worklist").status_code == 401
    # The study view: series (the source and the AI's SR and SC), the finding with its overlay and provenance.
    view = site.client.get(f"/api/studies/{site.study}/review", headers=site.auth("viewer")).json()
    kinds = {(s["modality"], s["is_result"]) for s in view["series"]}
    assert kinds == {("CR", False), ("SR", True), ("OT", True)}
    (detail,) = view["findings"]
    assert detail["finding_id"] == finding["finding_id"] and detail["verdicts"] == []
    assert len(detail["bundle_checksum"]) == 64 and detail["model_card_url"] == "/api/models/cr/card"
    assert detail["overlay"]["kind"] == "heatmap" and detail["overlay"]["sop_uid"]
    assert detail["source_sop_uids"] == [str(site.ds.SOPInstanceUID)]
    assert site.client.get("/api/studies/1.2.3/review", headers=site.auth("viewer")).status_code == 404


def test_verdicts_write_store_audit_and_queue_the_readers_objects(site: Site) -> None:
    view = site.client.get(f"/api/studies/{site.study}/review", headers=site.auth("radiologist")).json()
    finding = view["findings"][0]
    url = f"/api/studies/{site.study}/verdicts"
    # A viewer may not judge.
    refused = site.client.post(
        url, json={"finding_id": finding["finding_id"], "decision": "agree"}, headers=site.auth("viewer")
    )
    assert refused.status_code == 403
    agree = site.client.post(
        url,
        json={"finding_id": finding["finding_id"], "decision": "agree", "comment": "fine", "seconds_spent": 4.2},
        headers=site.auth("radiologist"),
    )
    assert agree.status_code == 201, agree.text
    made = agree.json()
    assert made["reader_seg_sop_uid"] is None and len(made["export_jobs"]) == 1
    # The reader's SR is in the store beside the study and references the AI's SR as its predecessor.
    sr_row = site.service.store.instance(made["reader_sr_sop_uid"])
    assert sr_row is not None and sr_row.is_result and sr_row.study_uid == site.study
    reader_sr = pydicom.dcmread(sr_row.path)
    predecessor = reader_sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == finding["ai_sr_sop_uid"]
    # The export job sends that file (relative to the results folder) to the [review] destination.
    job = site.service.queue.get(made["export_jobs"][0])
    assert job is not None and job.kind == EXPORT and job.target == "pacs"
    (sent,) = job.payload["files"]
    assert pydicom.dcmread(site.service.ctx.results_dir / sent).SOPInstanceUID == made["reader_sr_sop_uid"]
    # Edits: another label, boxes, and a mask that becomes a SEG.
    other = next(n for n in finding["label_names"] if n != finding["label"])
    label = site.client.post(
        url,
        json={"finding_id": finding["finding_id"], "decision": "edit", "edit": {"label": other}},
        headers=site.auth("admin"),
    )
    assert label.status_code == 201, label.text
    assert label.json()["reader_label"] == other
    rows, cols = int(site.ds.Rows), int(site.ds.Columns)
    sop = str(site.ds.SOPInstanceUID)
    box = {"sop_uid": sop, "x0": 10, "y0": 20, "x1": 60, "y1": 80, "label": other}
    boxes = site.client.post(
        url,
        json={"finding_id": finding["finding_id"], "decision": "edit", "edit": {"boxes": [box]}},
        headers=site.auth("radiologist"),
    )
    assert boxes.status_code == 201, boxes.text
    mask = np.zeros((rows, cols), bool)
    mask[rows // 4 : rows // 2, cols // 4 : cols // 2] = True
    masked = site.client.post(
        url,
        json={"finding_id": finding["finding_id"], "decision": "edit", "edit": {"mask": {sop: _png(mask)}}},
        headers=site.auth("radiologist"),
    )
    assert masked.status_code == 201, masked.text
    seg_row = site.service.store.instance(masked.json()["reader_seg_sop_uid"])
    assert seg_row is not None and seg_row.is_result
    seg = pydicom.dcmread(seg_row.path)
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == sop
    assert int(np.asarray(seg.pixel_array).sum()) == int(mask.sum())
    job = site.service.queue.get(masked.json()["export_jobs"][0])
    assert job is not None and len(job.payload["files"]) == 2
    # Bad verdicts: a 400 with a reason, nothing recorded.
    bad = [
        {"finding_id": finding["finding_id"], "decision": "edit"},
        {"finding_id": finding["finding_id"], "decision": "edit", "edit": {"label": "not a label"}},
        {"finding_id": finding["finding_id"], "decision": "edit", "edit": {"mask": {sop: "bm90IGEgcG5n"}}},
        {"finding_id": finding["finding_id"], "decision": "edit", "edit": {"mask": {sop: _png(mask[:10])}}},
        # a box label that is not a string would be written into the reader's SR and the statistics as "{'a': 1}"
        {"finding_id": finding["finding_id"], "decision": "edit", "edit": {"boxes": [box | {"label": {"a": 1}}]}},
    ]
    for body in bad:
        response = site.client.post(url, json=body, headers=site.auth("radiologist"))
        assert response.status_code == 400 and response.json()["detail"], body
    # seconds_spent NaN (what json.dumps(float("nan")) sends) is a 422 naming the field, not a 500 whose error
    # handler could not write the NaN it echoed back; the answer echoes no input value.
    nan = site.client.post(
        url,
        content=b'{"finding_id": "%s", "decision": "agree", "seconds_spent": NaN}' % finding["finding_id"].encode(),
        headers={**site.auth("radiologist"), "Content-Type": "application/json"},
    )
    assert nan.status_code == 422 and nan.json()["detail"][0]["loc"] == ["body", "seconds_spent"], nan.text
    assert "input" not in nan.json()["detail"][0]
    missing = site.client.post(
        url, json={"finding_id": "cr-99/0", "decision": "agree"}, headers=site.auth("radiologist")
    )
    assert missing.status_code == 404
    # The verdicts, as medsight.review.verdicts gives them to the feedback export.
    verdicts = list_verdicts(site.service.engine, model="cr")
    assert [v.decision for v in verdicts] == ["agree", "edit", "edit", "edit"]
    assert verdicts[0].reader == "radiologist" and verdicts[0].seconds_spent == pytest.approx(4.2)
    assert verdicts[1].role == "admin" and verdicts[1].reader_label == other
    assert verdicts[2].edit is not None and verdicts[2].edit["boxes"][0]["x1"] == 60.0
    assert verdicts[3].edit is not None
    saved = site.service.ctx.results_dir / verdicts[3].edit["mask"][sop]
    assert (np.asarray(Image.open(saved)) > 0).sum() == mask.sum()
    assert all(len(v.bundle_checksum) == 64 and v.model_version for v in verdicts)
    # Every verdict is audited, refusals too; the study view now lists them and the worklist says reviewed.
    actions = [(r["action"], r["outcome"]) for r in site.audit() if r["action"] in ("review.verdict", "auth.refused")]
    assert (
        actions.count(("review.verdict", "ok")) == 4
        and ("auth.refused", "403: role 'viewer' may not do this; it needs 'radiologist' or above") in actions
    )
    assert sum(1 for a, o in actions if a == "review.verdict" and o == "400") == len(bad)
    view = site.client.get(f"/api/studies/{site.study}/review", headers=site.auth("viewer")).json()
    assert len(view["findings"][0]["verdicts"]) == 4
    study = site.client.get("/api/worklist", headers=site.auth("viewer")).json()["studies"][0]
    assert study["reviewed"] is True and study["priority"] < 0
    # Agreement over these verdicts (the newest per reader and finding counts): JSON and the HTML page.
    agreement = site.client.get("/api/models/cr/agreement", headers=site.auth("viewer")).json()
    assert agreement["n_verdicts"] == 2 and agreement["counts"]["edit"] == 2
    assert len(agreement["weeks"]) == 1 and agreement["weeks"][0]["counts"]["edit"] == 2
    page = site.client.get("/review/agreement/cr", headers=site.auth("viewer"))
    assert page.status_code == 200 and page.text.count("data:image/png;base64,") == 2
    assert page.headers["content-security-policy"].startswith("sandbox")
    assert site.client.get("/api/models/nope/agreement", headers=site.auth("viewer")).status_code == 404
    assert site.client.get("/review/agreement/cr").status_code == 401


def test_model_card(site: Site, bundle: Path) -> None:
    card = site.client.get("/api/models/cr/card", headers=site.auth("viewer"))
    assert card.status_code == 200 and card.headers["content-type"].startswith("text/html")
    meta = json.loads((bundle / "bundle.json").read_text())
    assert "Model card: cr" in card.text and meta["data"]["source"] in card.text
    assert f"{meta['metrics']['val']['auc']:.3f}" in card.text
    # a report served from the service's origin runs no script, whatever a copied card.html or a class name holds
    policy = card.headers["content-security-policy"]
    assert policy.startswith("sandbox") and "default-src 'none'" in policy and "script-src" not in policy
    assert site.client.get("/api/models/other/card", headers=site.auth("viewer")).status_code == 404
