"""The service process on its own (no PACS needed): TLS, graceful shutdown, a full disk, bad configurations, and no
patient identifier in its logs. Real peers: dcmtk ``storescu``/``echoscu`` and openssl; servers on 127.0.0.1, free
ports, stopped by each test."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from medsight.cli import main
from medsight.serving.config import load_config
from medsight.serving.service import Service
from needs import tool
from serving.test_service_fhir_hl7 import fhir_server, mllp_peer  # noqa: F401  (real peers as fixtures)

MEDSIGHT = str(Path(sys.executable).with_name("medsight"))
CR = ("dicom_samples", "pydicom_data", "RG3_J2KR.dcm")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    assert main(["train", "--task", "classification", "medmnist:breastmnist", "--out", str(out), "--epochs", "1"]) == 0
    return out


def _site(folder: Path, bundle: Path, extra: str = "", service: str = "", route: str = 'outputs = ["sr"]') -> Path:
    cfg = folder / "site.toml"
    cfg.write_text(
        f"""[service]
data_dir = "{folder / 'data'}"
http_port = {_free_port()}
quiet_period_s = 1
{service}

[dicom]
port = {_free_port()}
allow_any = true

[[routes]]
name = "cr"
bundle = "{bundle}"
match.modality = ["CR"]
{route}
{extra}""",
        encoding="utf-8",
    )
    return cfg


@pytest.fixture
def running(tmp_path: Path, bundle: Path) -> Iterator[Service]:
    service = Service(load_config(_site(tmp_path, bundle)), grace_s=2)
    service.start()
    try:
        yield service
    finally:
        service.stop()


def _cr(shared: Path, out: Path) -> tuple[str, Path]:
    ds = pydicom.dcmread(shared.joinpath(*CR))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(out, enforce_file_format=True)
    return str(ds.StudyInstanceUID), out


def _send(port: int, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("storescu"), "-v", "-nh", "-xv", "-aec", "MEDSIGHT", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )


def _wait(what: str, check: object, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_study_is_processed_and_logs_hold_no_patient_identifier(
    running: Service, shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="medsight")
    study, path = _cr(shared_data, tmp_path / "cr.dcm")
    sent = _send(running.dicom_port, path)
    assert "Received Store Response (Success)" in sent.stdout + sent.stderr
    _wait("the inference job", lambda: running.queue.counts().get("done", 0) == 1)
    (job,) = running.queue.list(study_uid=study)
    assert job.result is not None and job.result["files"] and job.result["results"] == 1
    sr = pydicom.dcmread(running.ctx.results_dir / job.result["files"][0])
    assert sr.Modality == "SR" and sr.StudyInstanceUID == study
    source = pydicom.dcmread(path, stop_before_pixels=True)
    identifiers = [str(source.get(k, "")) for k in ("PatientName", "PatientID", "PatientBirthDate")]
    logged = caplog.text
    assert logged and all(value not in logged for value in identifiers if len(value) > 2)
    # findscu (C-FIND, Study Root) finds the study and, at series level, our SR series beside the CR
    found = subprocess.run(
        [tool("findscu"), "-v", "-S", "-aec", "MEDSIGHT", "127.0.0.1", str(running.dicom_port),
         "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study}", "-k", "Modality", "-k",
         "SeriesInstanceUID"],
        capture_output=True, text=True, timeout=60,
    )
    said = found.stdout + found.stderr
    assert found.returncode == 0, said
    assert said.count("Find Response") >= 3 and "[CR]" in said and "[SR]" in said, said
    assert any(r["action"] == "C-FIND" for r in running.audit.records())
    # the results are served by DICOMweb beside the study (and marked as ours: they never re-open it)
    assert any(s.is_result for s in running.store.series(study))
    assert running.store.study(study).state == "processed"  # type: ignore[union-attr]


def test_an_inference_job_run_again_sends_the_result_set_it_already_wrote(
    running: Service, shared_data: Path, tmp_path: Path
) -> None:
    """A worker that crashed after writing a job's results but before completing it: the job runs again, finds the
    folder and lists (and would send) those same objects, with their UIDs, rather than nothing or a second set."""
    from medsight.serving.worker import run_inference

    study, path = _cr(shared_data, tmp_path / "cr.dcm")
    _send(running.dicom_port, path)
    _wait("the inference job", lambda: running.queue.counts().get("done", 0) == 1)
    (job,) = running.queue.list(study_uid=study)
    assert job.result is not None and job.result["files"]
    again = run_inference(running.ctx, job)
    assert again["files"] == job.result["files"] and again["results"] == job.result["results"]
    sr_uids = {str(pydicom.dcmread(running.ctx.results_dir / f).SOPInstanceUID) for f in again["files"]}
    assert len(sr_uids) == len(again["files"])
    assert len([s for s in running.store.series(study) if s.is_result]) == 1  # stored once, not twice


def test_shutdown_puts_a_running_job_back_and_the_next_start_finishes_it(
    tmp_path: Path, bundle: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "hold").touch()
    monkeypatch.setenv("MEDSIGHT_TEST_HOLD_JOBS", str(hold))
    config = load_config(_site(tmp_path, bundle))
    first = Service(config, grace_s=0.5)
    first.start()
    try:
        study, path = _cr(shared_data, tmp_path / "cr.dcm")
        _send(first.dicom_port, path)
        _wait("the job to be claimed", lambda: (hold / "claimed").exists())
        assert first.queue.counts()["running"] == 1
    finally:
        first.stop()  # the held job cannot finish within 0.5 s: it goes back to the queue
    assert first.queue.counts()["queued"] == 1 and first.queue.counts()["running"] == 0
    (hold / "hold").unlink()
    second = Service(config, grace_s=5)
    second.start()
    try:
        _wait("the job to finish after the restart", lambda: second.queue.counts().get("done", 0) == 1)
        (job,) = second.queue.list(study_uid=study)
        assert job.attempts >= 1 and job.result is not None
    finally:
        second.stop()


def test_tls_serves_https_only(tmp_path: Path, bundle: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    made = subprocess.run(
        [tool("openssl", "openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
         str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        capture_output=True, text=True,
    )
    assert made.returncode == 0, made.stderr
    cfg = _site(tmp_path, bundle, extra=f'\n[tls]\ncertificate = "{cert}"\nkey = "{key}"\n')
    service = Service(load_config(cfg), grace_s=1)
    service.start()
    try:
        with httpx.Client(verify=str(cert), timeout=10) as client:
            answer = client.get(f"https://127.0.0.1:{service.http_port}/healthz")
        assert answer.status_code == 200 and answer.json()["status"] == "ok"
        with pytest.raises(httpx.HTTPError), httpx.Client(timeout=5) as client:
            client.get(f"http://127.0.0.1:{service.http_port}/healthz")
    finally:
        service.stop()


def test_a_full_disk_refuses_instances_with_out_of_resources_and_writes_nothing(
    tmp_path: Path, bundle: Path, shared_data: Path
) -> None:
    free_mb = shutil.disk_usage(tmp_path).free // 1_000_000
    cfg = _site(tmp_path, bundle, service=f"min_free_mb = {free_mb + 1_000_000}")
    service = Service(load_config(cfg), grace_s=1)
    service.start()
    try:
        _, path = _cr(shared_data, tmp_path / "cr.dcm")
        sent = _send(service.dicom_port, path)
        said = sent.stdout + sent.stderr
        assert "Out of Resources" in said or "OutOfResources" in said or "0xa700" in said.lower(), said
        assert not any((tmp_path / "data" / "instances").rglob("*.dcm"))
        assert service.store.studies() == []
        assert service.health()["status"] == "ok"
    finally:
        service.stop()


def test_a_bad_configuration_stops_serve_with_every_mistake_and_creates_nothing(tmp_path: Path, bundle: Path) -> None:
    cfg = tmp_path / "site.toml"
    cfg.write_text(
        f"""[service]
data_dir = "{tmp_path / 'data'}"
quiet_periode_s = 3

[dicom]
port = 70000

[[routes]]
name = "x"
bundle = "{tmp_path / 'missing'}"
send_to = ["nowhere"]
""",
        encoding="utf-8",
    )
    done = subprocess.run([MEDSIGHT, "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MEDSIGHT_THREADS": "1"})
    assert done.returncode == 2
    for expected in ("quiet_periode_s", "quiet_period_s", "dicom.port", "routes[0].bundle", "nowhere"):
        assert expected in done.stderr, done.stderr
    assert not (tmp_path / "data").exists()


def test_fhir_and_hl7_results_reach_real_record_systems(
    tmp_path: Path, bundle: Path, shared_data: Path, fhir_server: Any, mllp_peer: Any  # noqa: F811
) -> None:
    """A route with FHIR and HL7 outputs: the DiagnosticReport is POSTed (with the token from the environment) and
    the ORU^R01 acknowledged; the first FHIR attempt meets a 503 and is retried."""
    os.environ["MEDSIGHT_TEST_FHIR_TOKEN"] = "s3cret"
    fhir_server.status = 503
    host, port = mllp_peer.server_address
    route = 'send_to = ["ehr", "ris"]\noutputs = ["sr", "fhir", "hl7"]'
    extra = f"""
[[destinations]]
name = "ehr"
kind = "fhir"
url = "{fhir_server.url}"
token_env = "MEDSIGHT_TEST_FHIR_TOKEN"

[[destinations]]
name = "ris"
kind = "hl7"
host = "{host}"
port = {port}
"""
    cfg = _site(tmp_path, bundle, extra=extra, service="backoff_s = 0.2\nbackoff_max_s = 0.5", route=route)
    service = Service(load_config(cfg), grace_s=1)
    service.start()
    try:
        study, path = _cr(shared_data, tmp_path / "cr.dcm")
        _send(service.dicom_port, path)
        _wait("a failed FHIR attempt", lambda: len(fhir_server.received) >= 1)
        fhir_server.status = 201
        _wait("both exports", lambda: service.queue.counts().get("done", 0) == 3)
        posted = fhir_server.received[-1]
        assert posted["auth"] == "Bearer s3cret" and posted["path"].endswith("/DiagnosticReport")
        assert study in posted["body"].decode()
        (message,) = mllp_peer.received
        assert str(message.segment("MSH")[9]).startswith("ORU^R01") and study in str(message)
        export = next(j for j in service.queue.list(study_uid=study) if j.target == "ehr")
        assert export.attempts >= 2
        sent = [r for r in service.audit.records() if r["action"] == "result sent"]
        assert {r["target"]["destination"] for r in sent} == {"ehr", "ris"}
        assert service.audit.verify()[0]
    finally:
        service.stop()
        os.environ.pop("MEDSIGHT_TEST_FHIR_TOKEN", None)


def test_start_up_objects_are_frozen_out_of_the_collector(running: Service) -> None:
    """A full cyclic collection over a started service (torch, the loaded models: ~590k objects) held the GIL for
    ~0.35 s, stalling every C-STORE and HTTP request; objects made before ``ready`` are moved out of its reach."""
    import gc

    assert gc.get_freeze_count() > 100_000
    started = time.perf_counter()
    gc.collect()
    assert time.perf_counter() - started < 0.1
