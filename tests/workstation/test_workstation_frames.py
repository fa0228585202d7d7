"""Raw WADO-RS frames (what the workstation's Cornerstone3D loader asks for) and the static workstation mount,
on the real study store with real sample files: the bytes must be the pixels pydicom decodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from medsight.serving.http_api import accepts_frames, create_app, split_multipart
from serving.test_service_http import SAMPLES, Service

OCTET_ANY = "multipart/related; type=application/octet-stream; transfer-syntax=*"


@pytest.fixture
def stored(tmp_path: Path, shared_data: Path) -> tuple[Service, TestClient, dict[str, pydicom.Dataset]]:
    service = Service(tmp_path / "service")
    datasets = {}
    for key in ("CT", "CR", "MF"):
        ds = pydicom.dcmread(shared_data / "dicom_samples" / SAMPLES[key])
        service.store.store(ds, calling_ae="TEST", peer="127.0.0.1")
        datasets[key] = ds
    return service, TestClient(service.app), datasets


def _url(ds: pydicom.Dataset, frames: str) -> str:
    return (f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}/frames/{frames}")


def _parts(response: object) -> list[tuple[dict[str, str], bytes]]:
    content_type = response.headers["content-type"]  # type: ignore[attr-defined]
    assert content_type.startswith("multipart/related") and "application/octet-stream" in content_type
    boundary = content_type.split("boundary=")[1].strip()
    return split_multipart(response.content, boundary)  # type: ignore[attr-defined]


def test_native_frames_are_the_stored_pixels(stored: tuple[Service, TestClient, dict[str, pydicom.Dataset]]) -> None:
    service, client, ds = stored
    ct = ds["CT"]
    answer = client.get(_url(ct, "1"), headers={**service.auth("viewer"), "Accept": OCTET_ANY})
    assert answer.status_code == 200, answer.text
    ((headers, data),) = _parts(answer)
    assert "transfer-syntax=1.2.840.10008.1.2.1" in headers["content-type"]
    pixels = np.frombuffer(data, dtype=ct.pixel_array.dtype.newbyteorder("<")).reshape(ct.Rows, ct.Columns)
    assert np.array_equal(pixels, ct.pixel_array)
    # several frames of a multi-frame MR, in the order asked
    mf = ds["MF"]
    answer = client.get(_url(mf, "3,1"), headers={**service.auth("viewer"), "Accept": OCTET_ANY})
    parts = _parts(answer)
    assert len(parts) == 2
    size = mf.Rows * mf.Columns
    third = np.frombuffer(parts[0][1], dtype=mf.pixel_array.dtype.newbyteorder("<")).reshape(mf.Rows, mf.Columns)
    assert np.array_equal(third, mf.pixel_array[2]) and len(parts[1][1]) == size * mf.BitsAllocated // 8


def test_compressed_frames_go_as_stored_or_decoded_as_asked(
    stored: tuple[Service, TestClient, dict[str, pydicom.Dataset]],
) -> None:
    service, client, ds = stored
    cr = ds["CR"]
    syntax = str(cr.file_meta.TransferSyntaxUID)
    as_stored = client.get(_url(cr, "1"), headers={**service.auth("viewer"), "Accept": OCTET_ANY})
    ((headers, data),) = _parts(as_stored)
    assert f"transfer-syntax={syntax}" in headers["content-type"]
    assert data[:2] == b"\xff\x4f"  # a JPEG 2000 codestream starts with SOC
    decoded = client.get(_url(cr, "1"), headers={**service.auth("viewer"),
                                                 "Accept": 'multipart/related; type="application/octet-stream"'})
    ((headers, data),) = _parts(decoded)
    assert "transfer-syntax=1.2.840.10008.1.2.1" in headers["content-type"]
    pixels = np.frombuffer(data, dtype=cr.pixel_array.dtype.newbyteorder("<")).reshape(cr.Rows, cr.Columns)
    assert np.array_equal(pixels, cr.pixel_array)


def test_bad_frame_requests_are_refused_and_audited(
    stored: tuple[Service, TestClient, dict[str, pydicom.Dataset]],
) -> None:
    service, client, ds = stored
    ct = ds["CT"]
    auth = service.auth("viewer")
    assert client.get(_url(ct, "2"), headers={**auth, "Accept": OCTET_ANY}).status_code == 404
    assert client.get(_url(ct, "0,a"), headers={**auth, "Accept": OCTET_ANY}).status_code == 400
    assert client.get(_url(ct, "1"), headers={**auth, "Accept": "image/png"}).status_code == 406
    assert client.get(_url(ct, "1"), headers={"Accept": OCTET_ANY}).status_code == 401
    missing = _url(ct, "1").replace(str(ct.SOPInstanceUID), generate_uid())
    assert client.get(missing, headers={**auth, "Accept": OCTET_ANY}).status_code == 404
    client.get(_url(ct, "1"), headers={**auth, "Accept": OCTET_ANY})
    outcomes = [r["outcome"] for r in service.audit.records() if r["action"] == "wado.frames"]
    assert outcomes.count("ok") == 1 and "not_found" in outcomes and "406" in outcomes and "400" in outcomes

def test_accept_header_rules() -> None:
    assert accepts_frames(OCTET_ANY) is True
    assert accepts_frames("") is False
    assert accepts_frames("*/*") is False
    assert accepts_frames('multipart/related; type="application/octet-stream"') is False
    assert accepts_frames("image/png") is None
    assert accepts_frames('multipart/related; type="application/dicom"') is None


def test_workstation_mount_serves_the_build_or_says_how_to_build_it(tmp_path: Path) -> None:
    service = Service(tmp_path / "service")
    missing = create_app(service.store, service.users, service.audit, workstation_dir=tmp_path / "none")
    answer = TestClient(missing).get("/workstation/")
    assert answer.status_code == 404 and "make web" in answer.text and answer.headers["content-type"].startswith(
        "text/html")
    built = tmp_path / "dist"
    (built / "assets").mkdir(parents=True)
    (built / "index.html").write_text("<!doctype html><title>medsight workstation</title>")
    (built / "assets" / "app.js").write_text("console.log('ok')")
    client = TestClient(create_app(service.store, service.users, service.audit, workstation_dir=built))
    index = client.get("/workstation/")
    assert index.status_code == 200 and "medsight workstation" in index.text
    assert client.get("/workstation/assets/app.js").text == "console.log('ok')"
    assert client.get("/workstation/../site.toml").status_code == 404
