"""The service's DICOMweb API (STOW-RS, QIDO-RS, WADO-RS) on the real study store and real sample files."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pydicom
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from medsight.serving.audit import AuditLog
from medsight.serving.database import open_database
from medsight.serving.http_api import create_app, split_multipart
from medsight.serving.security import UserDirectory
from medsight.serving.store import StudyStore

SAMPLES = {
    "CT": "pydicom_test_files/CT_small.dcm",
    "MR": "pydicom_test_files/MR_small.dcm",
    "CR": "pydicom_data/RG3_J2KR.dcm",
    "US": "pydicom_data/US1_J2KR.dcm",
    "MF": "pydicom_data/emri_small.dcm",
}


def _files(shared_data: Path) -> dict[str, Path]:
    root = shared_data / "dicom_samples"
    return {key: root / rel for key, rel in SAMPLES.items()}


def _multipart(payloads: list[bytes], boundary: str = "medsight-test-boundary") -> tuple[bytes, str]:
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n" for data in payloads
    )
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


class Service:
    """The app on a fresh data folder, with one token per role and what ``on_complete`` was called with."""

    def __init__(self, root: Path) -> None:
        engine = open_database(None, root)
        self.store = StudyStore(engine, root / "instances", min_free_bytes=0)
        self.users = UserDirectory(engine)
        self.audit = AuditLog(root / "audit.jsonl")
        self.completed: list[str] = []
        self.tokens = {}
        for role in ("viewer", "radiologist", "admin"):
            self.users.add_user(role, role)
            self.tokens[role] = self.users.create_token(role)
        self.app = create_app(
            self.store,
            self.users,
            self.audit,
            on_complete=self.complete,
            metrics=lambda: b"# TYPE medsight_queue_depth gauge\nmedsight_queue_depth 0\n",
            health=lambda: {"status": "ok", "queue": 0},
        )

    def complete(self, study: str) -> bool:
        if study in self.completed:
            return False
        self.completed.append(study)
        return True

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@pytest.fixture
def service(tmp_path: Path) -> Service:
    return Service(tmp_path / "service")


@pytest.fixture
def loaded(service: Service, shared_data: Path) -> tuple[Service, TestClient, dict[str, pydicom.Dataset]]:
    files = _files(shared_data)
    client = TestClient(service.app)
    body, content_type = _multipart([p.read_bytes() for p in files.values()])
    response = client.post(
        "/dicomweb/studies", content=body, headers={**service.auth("admin"), "Content-Type": content_type}
    )
    assert response.status_code == 200, response.text
    return service, client, {k: pydicom.dcmread(p, stop_before_pixels=True) for k, p in files.items()}


def _values(item: dict[str, Any], tag: str) -> list[Any]:
    return list(item.get(tag, {}).get("Value", []))


def test_stow_response_lists_each_instance(loaded: tuple[Service, TestClient, dict[str, pydicom.Dataset]]) -> None:
    service, client, headers = loaded
    assert len(service.store.studies()) == 5
    # Storing the same files again with one unreadable part: 202, the good ones referenced, the bad one failed.
    ct = headers["CT"]
    path = service.store.instance_path(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    assert path is not None
    body, content_type = _multipart([path.read_bytes(), b"not DICOM at all"])
    response = client.post(
        "/dicomweb/studies", content=body, headers={**service.auth("admin"), "Content-Type": content_type}
    )
    assert response.status_code == 202 and response.headers["content-type"].startswith("application/dicom+json")
    result = response.json()
    referenced = _values(result, "00081199")
    assert _values(referenced[0], "00081155") == [ct.SOPInstanceUID]
    assert _values(referenced[0], "00081190")[0].startswith("http://testserver/dicomweb/studies/")
    assert _values(_values(result, "00081198")[0], "00081197") == [0xC000]


def test_stow_refusals(service: Service, shared_data: Path) -> None:
    client = TestClient(service.app)
    admin = service.auth("admin")
    body, content_type = _multipart([b"garbage"])
    assert (
        client.post("/dicomweb/studies", content=body, headers={**admin, "Content-Type": content_type}).status_code
        == 409
    )
    wrong_type = client.post("/dicomweb/studies", content=b"{}", headers={**admin, "Content-Type": "application/json"})
    assert wrong_type.status_code == 415 and "multipart/related" in wrong_type.json()["detail"]
    ct = _files(shared_data)["CT"]
    body, content_type = _multipart([ct.read_bytes()])
    mismatch = client.post("/dicomweb/studies/1.2.3.4", content=body, headers={**admin, "Content-Type": content_type})
    assert mismatch.status_code == 409
    assert _values(_values(mismatch.json(), "00081198")[0], "00081197") == [0xA900]
    assert service.store.studies() == []
    viewer = client.post(
        "/dicomweb/studies", content=body, headers={**service.auth("viewer"), "Content-Type": content_type}
    )
    assert viewer.status_code == 403 and service.store.studies() == []


def test_qido_studies_series_instances(loaded: tuple[Service, TestClient, dict[str, pydicom.Dataset]]) -> None:
    service, client, headers = loaded
    auth = service.auth("viewer")
    everything = client.get("/dicomweb/studies", headers=auth)
    assert everything.status_code == 200 and everything.headers["content-type"].startswith("application/dicom+json")
    assert len(everything.json()) == 5
    ct = headers["CT"]
    by_id = client.get("/dicomweb/studies", params={"PatientID": ct.PatientID}, headers=auth).json()
    assert [_values(s, "0020000D") for s in by_id] == [[ct.StudyInstanceUID]]
    study = by_id[0]
    assert _values(study, "00080061") == ["CT"] and _values(study, "00201208") == [1]
    assert _values(study, "00100010")[0]["Alphabetic"] == str(ct.PatientName)
    assert _values(study, "00081190") == [f"http://testserver/dicomweb/studies/{ct.StudyInstanceUID}"]
    in_2004 = client.get("/dicomweb/studies", params={"StudyDate": "20040101-20041231"}, headers=auth).json()
    assert {_values(s, "00080020")[0] for s in in_2004} == {"20040119", "20040826"} and len(in_2004) == 4
    assert len(client.get("/dicomweb/studies", params={"ModalitiesInStudy": "MR"}, headers=auth).json()) == 2
    page = client.get("/dicomweb/studies", params={"limit": 2, "offset": 1}, headers=auth)
    assert len(page.json()) == 2 and "additional results" in page.headers["warning"]
    wild = client.get("/dicomweb/studies", params={"PatientName": str(ct.PatientName)[:3] + "*"}, headers=auth)
    assert ct.StudyInstanceUID in [_values(s, "0020000D")[0] for s in wild.json()]
    included = client.get(
        "/dicomweb/studies",
        params={"StudyInstanceUID": ct.StudyInstanceUID, "includefield": "StudyID,00180050"},
        headers=auth,
    ).json()[0]
    assert _values(included, "00200010") == [ct.StudyID] and _values(included, "00180050") == [float(ct.SliceThickness)]

    series = client.get(f"/dicomweb/studies/{ct.StudyInstanceUID}/series", headers=auth).json()
    assert [_values(s, "0020000E") for s in series] == [[ct.SeriesInstanceUID]]
    assert _values(series[0], "00080060") == ["CT"] and _values(series[0], "00201209") == [1]
    assert (
        client.get(f"/dicomweb/studies/{ct.StudyInstanceUID}/series", params={"Modality": "MR"}, headers=auth).json()
        == []
    )
    mf = headers["MF"]
    instances = client.get(
        f"/dicomweb/studies/{mf.StudyInstanceUID}/series/{mf.SeriesInstanceUID}/instances", headers=auth
    ).json()
    assert [_values(i, "00080018") for i in instances] == [[mf.SOPInstanceUID]]
    assert _values(instances[0], "00280008") == [10] and _values(instances[0], "00280010") == [64]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"StudyDate": "2004-01-19"}, "YYYYMMDD"),
        ({"StudyDate": "20040231"}, "day is out of range"),
        ({"limit": "many"}, "invalid literal"),
        ({"limit": "0"}, "limit must be"),
        ({"BodyPartExamined": "CHEST"}, "not supported"),
        ({"NoSuchAttribute": "x"}, "unknown attribute"),
        ({"includefield": "NotAKeyword"}, "unknown attribute"),
    ],
)
def test_qido_bad_queries_are_400(service: Service, params: dict[str, str], message: str) -> None:
    response = TestClient(service.app).get("/dicomweb/studies", params=params, headers=service.auth("viewer"))
    assert response.status_code == 400 and message in response.json()["detail"]


def test_wado_instances_metadata_and_rendered(loaded: tuple[Service, TestClient, dict[str, pydicom.Dataset]]) -> None:
    service, client, headers = loaded
    auth = service.auth("viewer")
    cr = headers["CR"]
    url = f"/dicomweb/studies/{cr.StudyInstanceUID}/series/{cr.SeriesInstanceUID}/instances/{cr.SOPInstanceUID}"
    response = client.get(url, headers={**auth, "Accept": 'multipart/related; type="application/dicom"'})
    assert response.status_code == 200
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related") and 'type="application/dicom"' in content_type
    boundary = content_type.split("boundary=")[1]
    parts = split_multipart(response.content, boundary)
    stored = service.store.instance_path(cr.StudyInstanceUID, cr.SeriesInstanceUID, cr.SOPInstanceUID)
    assert stored is not None and [content for _, content in parts] == [stored.read_bytes()]
    assert "1.2.840.10008.1.2.4.90" in parts[0][0]["content-type"]
    assert client.get(url, headers={**auth, "Accept": "application/json"}).status_code == 406

    study = client.get(f"/dicomweb/studies/{cr.StudyInstanceUID}", headers=auth)
    assert len(split_multipart(study.content, study.headers["content-type"].split("boundary=")[1])) == 1

    meta = client.get(url + "/metadata", headers=auth)
    assert meta.status_code == 200 and meta.headers["content-type"].startswith("application/dicom+json")
    (item,) = meta.json()
    assert _values(item, "00080018") == [cr.SOPInstanceUID] and "7FE00010" not in item
    assert _values(item, "00280010") == [1760]

    png = client.get(url + "/rendered", headers={**auth, "Accept": "image/png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (1760, 1760)
    us = headers["US"]
    us_url = f"/dicomweb/studies/{us.StudyInstanceUID}/series/{us.SeriesInstanceUID}/instances/{us.SOPInstanceUID}"
    colour = Image.open(io.BytesIO(client.get(us_url + "/frames/1/rendered", headers=auth).content))
    assert colour.mode == "RGB" and colour.size == (640, 480)
    mf = headers["MF"]
    mf_url = f"/dicomweb/studies/{mf.StudyInstanceUID}/series/{mf.SeriesInstanceUID}/instances/{mf.SOPInstanceUID}"
    frames = [
        Image.open(io.BytesIO(client.get(f"{mf_url}/frames/{n}/rendered", headers=auth).content)) for n in (1, 10)
    ]
    assert [f.size for f in frames] == [(64, 64), (64, 64)] and frames[0].tobytes() != frames[1].tobytes()
    assert client.get(f"{mf_url}/frames/11/rendered", headers=auth).status_code == 404
    assert client.get(f"{mf_url}/frames/1,2/rendered", headers=auth).status_code == 400
    ct = headers["CT"]
    ct_url = f"/dicomweb/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances/{ct.SOPInstanceUID}"
    narrow = client.get(ct_url + "/rendered", params={"window": "40,80"}, headers=auth)
    wide = client.get(ct_url + "/rendered", params={"window": "40,4000"}, headers=auth)
    assert narrow.content != wide.content
    assert client.get(ct_url + "/rendered", params={"window": "40"}, headers=auth).status_code == 400


def test_unknown_uids_are_404(loaded: tuple[Service, TestClient, dict[str, pydicom.Dataset]]) -> None:
    service, client, headers = loaded
    auth = service.auth("viewer")
    ct = headers["CT"]
    for url in (
        "/dicomweb/studies/1.2.3",
        "/dicomweb/studies/1.2.3/metadata",
        "/dicomweb/studies/1.2.3/series",
        f"/dicomweb/studies/{ct.StudyInstanceUID}/series/1.2.3",
        f"/dicomweb/studies/{ct.StudyInstanceUID}/series/1.2.3/instances",
        f"/dicomweb/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances/1.2.3",
        f"/dicomweb/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances/1.2.3/rendered",
    ):
        response = client.get(url, headers=auth)
        assert response.status_code == 404 and "1.2.3 not found" in response.json()["detail"], url


def test_complete_health_metrics_and_audit(loaded: tuple[Service, TestClient, dict[str, pydicom.Dataset]]) -> None:
    service, client, headers = loaded
    study = headers["MR"].StudyInstanceUID
    assert client.post(f"/api/studies/{study}/complete", headers=service.auth("radiologist")).status_code == 403
    assert client.post(f"/api/studies/{study}/complete", headers=service.auth("admin")).status_code == 202
    assert client.post(f"/api/studies/{study}/complete", headers=service.auth("admin")).status_code == 409
    assert client.post("/api/studies/1.2.3/complete", headers=service.auth("admin")).status_code == 404
    assert service.completed == [study]
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok", "queue": 0}
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "medsight_queue_depth 0" in metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")

    client.get("/dicomweb/studies", params={"PatientID": headers["CT"].PatientID}, headers=service.auth("viewer"))
    records = list(service.audit.records())
    actions = [(r["actor"], r["action"], r["outcome"]) for r in records]
    assert actions[:5] == [("admin", "stow", "ok")] * 5
    assert (
        "radiologist",
        "auth.refused",
        "403: role 'radiologist' may not do this; it needs 'admin' or above",
    ) in actions
    assert ("admin", "study.complete", "queued") in actions and (
        "admin",
        "study.complete",
        "already_complete",
    ) in actions
    qido = records[-1]
    assert qido["action"] == "qido.studies" and qido["target"] == {
        "keys": ["PatientID"],
        "studies": [headers["CT"].StudyInstanceUID],
    }
    log_text = service.audit.path.read_text()
    identifiers = [str(ds.get(k, "")) for ds in headers.values() for k in ("PatientID", "PatientName")]
    assert [i for i in identifiers if i and i in log_text] == []
    assert service.audit.verify() == (True, None)


# ---- under real uvicorn -------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(service: Service) -> Iterator[tuple[Service, str]]:
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(service.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield service, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "uvicorn did not stop"


def test_round_trip_under_uvicorn(served: tuple[Service, str], shared_data: Path) -> None:
    service, url = served
    files = {k: v for k, v in _files(shared_data).items() if k != "MF"}
    with httpx.Client(base_url=url, timeout=60) as http:
        body, content_type = _multipart([p.read_bytes() for p in files.values()])
        denied = http.post(
            "/dicomweb/studies", content=body, headers={**service.auth("viewer"), "Content-Type": content_type}
        )
        assert denied.status_code == 403
        bad = http.post(
            "/dicomweb/studies",
            content=body,
            headers={"Authorization": "Bearer 0123456789ab.nope", "Content-Type": content_type},
        )
        assert bad.status_code == 401 and bad.headers["www-authenticate"].startswith("Bearer")
        stored = http.post(
            "/dicomweb/studies", content=body, headers={**service.auth("admin"), "Content-Type": content_type}
        )
        assert stored.status_code == 200 and len(_values(stored.json(), "00081199")) == 4

        viewer = service.auth("viewer")
        studies = http.get("/dicomweb/studies", headers=viewer).json()
        assert len(studies) == 4
        for key, path in files.items():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
            instances = http.get(f"/dicomweb/studies/{study}/series/{series}/instances", headers=viewer).json()
            retrieve = _values(instances[0], "00081190")[0]
            assert retrieve == f"{url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
            got = http.get(retrieve, headers=viewer)
            parts = split_multipart(got.content, got.headers["content-type"].split("boundary=")[1])
            assert pydicom.dcmread(io.BytesIO(parts[0][1])).SOPInstanceUID == sop, key
            png = http.get(f"{retrieve}/frames/1/rendered", headers={**viewer, "Accept": "image/png"})
            assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n", key
            assert Image.open(io.BytesIO(png.content)).size == (int(ds.Columns), int(ds.Rows)), key

    actions = [(r["actor"], r["action"]) for r in service.audit.records()]
    assert actions.count(("admin", "stow")) == 4
    assert actions.count(("viewer", "wado.instance")) == 4 and actions.count(("viewer", "wado.rendered")) == 4
    assert ("-", "auth.refused") in actions and ("viewer", "auth.refused") in actions
    assert service.audit.verify() == (True, None)
    lines = service.audit.path.read_text().splitlines(keepends=True)
    lines[3] = lines[3].replace('"admin"', '"nobody"')
    service.audit.path.write_text("".join(lines))
    assert service.audit.verify() == (False, 3)
