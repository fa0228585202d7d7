"""What happens after a study arrives, when things go wrong: a database hiccup under a worker or the scheduler, a
study re-opened while its jobs are being queued, two routes on one study, a lease that expires, a worker process
that outlives the grace period, destinations that redirect, throttle or answer for other instances, a site file
with a destination URL naming no host, and an HL7 destination's own sender fields.

The service is built from a configuration assembled in code (no trained bundle: nothing here runs a model), and
its scheduler and worker loops run in threads of the test. Real peers (an HTTP server, an MLLP peer, a TCP server
that never answers) listen on 127.0.0.1 on free ports and are stopped by each test.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy.exc import OperationalError

from medsight.errors import DestinationRejected, DestinationUnavailable
from medsight.serving import service as service_module
from medsight.serving.config import (
    DatabaseConfig,
    Destination,
    DicomConfig,
    Match,
    Route,
    ServiceConfig,
    SiteConfig,
    load_config,
)
from medsight.serving.service import Service
from serving.test_service_fhir_hl7 import mllp_peer  # noqa: F401  (a real MLLP peer as a fixture)

CR = ("dicom_samples", "pydicom_data", "RG3_J2KR.dcm")


def _config(tmp: Path, routes: tuple[Route, ...] = (), destinations: tuple[Destination, ...] = (), **service: Any):
    data = tmp / "data"
    return SiteConfig(
        source=None,
        service=ServiceConfig(data_dir=data, **service),
        database=DatabaseConfig(f"sqlite:///{data / 'medsight.db'}", "sqlite"),
        dicom=DicomConfig(allow_any=True, port=0),
        tls=None,
        destinations=destinations,
        routes=routes,
    )


def _route(name: str = "cr") -> Route:
    return Route(
        name=name,
        bundle=Path("/nonexistent/bundle"),
        task="classification",
        task_type="binary",
        spatial_dims=2,
        n_channels=1,
        label_names=("a", "b"),
        match=Match(modality=("CR",)),
        send_to=(),
        outputs=("sr",),
    )


def _cr(service: Service, shared: Path, study: str | None = None) -> str:
    ds = pydicom.dcmread(shared.joinpath(*CR))
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    service.store.store(ds, calling_ae="SCU", peer="127.0.0.1")
    return str(ds.StudyInstanceUID)


def _locked(what: str) -> OperationalError:
    return OperationalError(what, {}, Exception("database is locked"))


def _flaky(real: Callable[..., Any], failures: int = 1) -> Callable[..., Any]:
    """``real``, raising a database error on its first ``failures`` calls."""
    calls = {"n": 0}

    def call(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise _locked("flaky")
        return real(*args, **kwargs)

    return call


def _wait(what: str, check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _metric(service: Service, prefix: str) -> dict[str, float]:
    out = {}
    for line in service.metrics.render().decode().splitlines():
        if line.startswith(prefix):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.fixture
def loops() -> Iterator[Callable[..., threading.Thread]]:
    """Run a service's loop (scheduler, worker) in a thread; every service is stopped at the end of the test."""
    started: list[tuple[Service, threading.Thread]] = []

    def run(service: Service, target: Callable[..., None], *args: Any) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        started.append((service, thread))
        return thread

    yield run
    for service, thread in started:
        service._stop.set()
        thread.join(10)
        service.engine.dispose()


# ------------------------------------------------------------------------------------------------ workers, scheduler


def test_a_database_error_does_not_end_a_worker(
    tmp_path: Path, loops: Callable[..., threading.Thread], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim that meets a locked database (or a PostgreSQL restart): before, the exception ended the worker thread
    for good and every job stayed queued until a restart; now the worker tries again and runs them."""
    service = Service(_config(tmp_path, (_route(),)), grace_s=1)
    monkeypatch.setattr(service_module, "run_export", lambda ctx, job: {"destination": job.target})
    service.queue.claim = _flaky(service.queue.claim)  # type: ignore[method-assign]
    worker = loops(service, service._work, "w0")
    time.sleep(0.3)  # the first claim has failed by now
    job = service.queue.enqueue("export", "1.2.3", "pacs", {})
    _wait("the export", lambda: service.queue.get(job.id).state == "done")  # type: ignore[union-attr]
    assert worker.is_alive()


def test_a_database_error_while_recording_a_result_leaves_the_job_to_its_lease(
    tmp_path: Path, loops: Callable[..., threading.Thread], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job ran but ``complete`` met a database error: the worker lives on, the job stays running under its lease
    (so it runs again, never lost) and the next job is taken."""
    service = Service(_config(tmp_path, (_route(),)), grace_s=1)
    monkeypatch.setattr(service_module, "run_export", lambda ctx, job: {"destination": job.target})
    service.queue.complete = _flaky(service.queue.complete)  # type: ignore[method-assign]
    first = service.queue.enqueue("export", "1.2.3", "pacs", {})
    worker = loops(service, service._work, "w0")
    second = service.queue.enqueue("export", "1.2.3", "ris", {})
    _wait("the second export", lambda: service.queue.get(second.id).state == "done")  # type: ignore[union-attr]
    assert worker.is_alive()
    assert service.queue.get(first.id).state == "running"  # type: ignore[union-attr]  # its lease brings it back


def test_one_study_failing_to_queue_does_not_strand_the_others(
    tmp_path: Path, shared_data: Path, loops: Callable[..., threading.Thread]
) -> None:
    """Two studies complete in the same tick and queueing the first meets a database error: before, neither got its
    jobs until the service restarted (both stayed ``complete``); now both are queued within seconds."""
    service = Service(_config(tmp_path, (_route(),), quiet_period_s=0.0), grace_s=1)
    studies = [_cr(service, shared_data), _cr(service, shared_data)]
    service.queue.enqueue = _flaky(service.queue.enqueue)  # type: ignore[method-assign]
    loops(service, service._schedule)

    def queued() -> bool:
        return all(len(service.queue.list(study_uid=s)) == 1 for s in studies)

    _wait("both studies' jobs", queued)
    assert [service.store.study(s).state for s in studies] == ["processed", "processed"]  # type: ignore[union-attr]


def test_an_explicit_completion_that_cannot_queue_is_queued_by_the_scheduler(
    tmp_path: Path, shared_data: Path, loops: Callable[..., threading.Thread]
) -> None:
    """POST /api/studies/{uid}/complete (``complete_study``) meeting a database error while queueing: the study is
    complete, is counted, and the scheduler queues its job (before: nothing until a restart, and a 500)."""
    service = Service(_config(tmp_path, (_route(),), quiet_period_s=3600.0), grace_s=1)
    study = _cr(service, shared_data)
    real = service.queue.enqueue
    service.queue.enqueue = _flaky(real)  # type: ignore[method-assign]
    assert service.complete_study(study)
    assert _metric(service, "medsight_studies_completed_total") == {"medsight_studies_completed_total": 1.0}
    loops(service, service._schedule)
    _wait("the study's job", lambda: len(service.queue.list(study_uid=study)) == 1)


def test_a_study_re_opened_while_its_jobs_are_queued_runs_once_on_all_of_it(
    tmp_path: Path, shared_data: Path, loops: Callable[..., threading.Thread]
) -> None:
    """With ``rerun_on_late``, an instance arriving between the study's completion and the queueing of its jobs
    re-opens it. Before, the re-run's job was queued at once, on a study still receiving, and its completion then
    found that job by its dedupe key (the rest of the late series never ran); now nothing is queued until the study
    is complete again, and then one job takes every series."""
    service = Service(_config(tmp_path, (_route(),), quiet_period_s=0.5, rerun_on_late=True), grace_s=1)
    study = _cr(service, shared_data)
    real = service.store.complete_quiet_studies
    reopened = threading.Event()

    def complete_then_late(quiet: float) -> list[str]:
        found = real(quiet)
        if found and not reopened.is_set():
            _cr(service, shared_data, study)  # the late instance, before the scheduler queues the jobs
            reopened.set()
        return found

    service.store.complete_quiet_studies = complete_then_late  # type: ignore[method-assign]
    handled = threading.Event()
    queue_study = service._queue_study

    def queue_then_tell(uid: str) -> None:
        queue_study(uid)
        if reopened.is_set():
            handled.set()

    service._queue_study = queue_then_tell  # type: ignore[method-assign]
    loops(service, service._schedule)
    _wait("the scheduler to handle the re-opened study", handled.is_set)
    assert service.store.study(study).state == "receiving"  # type: ignore[union-attr]
    assert service.queue.list(study_uid=study) == []  # nothing runs on a study still receiving
    _wait("the re-run's job", lambda: len(service.queue.list(study_uid=study)) == 1)
    (job,) = service.queue.list(study_uid=study)
    assert job.dedupe_key == f"{study}/cr/1" and len(job.payload["series"]) == 2


# ------------------------------------------------------------------------------------------------ metrics


def test_study_latency_is_observed_for_every_model_of_a_study(
    tmp_path: Path, shared_data: Path, loops: Callable[..., threading.Thread], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two routes (models) on one study, each with an export: before, only the model whose export finished last was
    observed (the check waited for every export of the study), so the other model's latency never moved."""
    service = Service(_config(tmp_path, (_route("a"), _route("b"))), grace_s=1)
    study = _cr(service, shared_data)
    assert service.store.mark_complete(study)
    for name in ("a", "b"):
        inference = service.queue.enqueue("inference", study, name, {}, dedupe_key=f"{study}/{name}/0")
        claimed = service.queue.claim("earlier", kinds=["inference"])
        assert claimed is not None and claimed.id == inference.id
        service.queue.complete(inference.id, {"exports": [1]})
        service.queue.enqueue("export", study, "pacs", {"route": name, "inference_job": inference.id})
    monkeypatch.setattr(service_module, "run_export", lambda ctx, job: {"destination": job.target})
    loops(service, service._work, "w0")
    _wait("both exports", lambda: service.queue.counts()["done"] == 4)
    counts = _metric(service, "medsight_study_result_seconds_count")
    assert counts == {
        'medsight_study_result_seconds_count{model="a"}': 1.0,
        'medsight_study_result_seconds_count{model="b"}': 1.0,
    }


def test_a_job_dead_lettered_by_its_expired_lease_is_counted_once(
    tmp_path: Path, loops: Callable[..., threading.Thread]
) -> None:
    """A worker that died (or hung) past its lease on the last attempt: the scheduler dead-letters the job. Before,
    that failure and dead letter never reached ``/metrics``; now each is counted once, and the stale report of the
    worker that held it counts nothing more."""
    service = Service(_config(tmp_path, (_route(),), max_attempts=1, job_timeout_s=0.2), grace_s=1)
    job = service.queue.enqueue("export", "1.2.3", "pacs", {})
    claimed = service.queue.claim("gone")
    assert claimed is not None
    loops(service, service._schedule)
    _wait("the dead letter", lambda: service.queue.get(job.id).state == "dead")  # type: ignore[union-attr]
    once = {
        "medsight_job_failures_total": {'medsight_job_failures_total{kind="export",target="pacs"}': 1.0},
        "medsight_jobs_dead_total": {'medsight_jobs_dead_total{kind="export",target="pacs"}': 1.0},
    }
    assert {name: _metric(service, name) for name in once} == once
    service._failed(claimed, "ConnectionError: late report", retryable=True, worker="gone")  # the stale report
    assert "lease expired" in (service.queue.get(job.id).last_error or "")  # type: ignore[union-attr]
    assert {name: _metric(service, name) for name in once} == once


# ------------------------------------------------------------------------------------------------ shutdown


def test_a_worker_process_past_the_grace_period_is_stopped_and_its_job_requeued(tmp_path: Path) -> None:
    """``worker_mode = "process"``, an export stuck on an HL7 peer that accepts and never answers, SIGTERM: before,
    ``terminate()`` met a process that ignores SIGTERM, so ``stop()`` returned after ~11 s with the worker still
    running; now the worker is gone within the grace period (plus a moment) and its job is queued again, its
    attempt not counted."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)
    held: list[Any] = []
    threading.Thread(target=lambda: held.append(silent.accept()), daemon=True).start()
    dest = Destination(name="ris", kind="hl7", host="127.0.0.1", port=silent.getsockname()[1])
    service = Service(_config(tmp_path, destinations=(dest,), worker_mode="process", job_timeout_s=60), grace_s=1)
    message = service.ctx.results_dir / "r" / "oru_r01.hl7"
    message.parent.mkdir(parents=True)
    message.write_bytes(b"MSH|^~\\&|MEDSIGHT||||20260101000000||ORU^R01^ORU_R01|MS1|P|2.5")
    job = service.queue.enqueue("export", "1.2.3", "ris", {"messages": {"hl7": "r/oru_r01.hl7"}})
    try:
        service._start_worker_processes()
        _wait("the worker process to take the job", lambda: bool(held), timeout=60)
        started = time.monotonic()
        service.stop()
        assert time.monotonic() - started < 5
        assert not any(p.is_alive() for p in service._processes)
        after = service.queue.get(job.id)
        assert after is not None and after.state == "queued" and after.attempts == 0
    finally:
        for p in service._processes:
            if p.is_alive():
                p.kill()
                p.join(5)
        for conn, _addr in held:
            conn.close()
        silent.close()


# ------------------------------------------------------------------------------------------------ destinations


class _Answering(http.server.ThreadingHTTPServer):
    """Answers every POST with ``status``, ``headers`` and ``body`` (set by the test) and counts them."""

    def __init__(self, address: tuple[str, int], handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.status = 200
        self.body = b""
        self.headers: dict[str, str] = {}
        self.received = 0


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Answering

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.received += 1
        self.send_response(self.server.status)
        for k, v in self.server.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_peer() -> Iterator[_Answering]:
    server = _Answering(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _url(server: _Answering, path: str = "/dicom-web/studies") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def test_stow_and_fhir_answers_that_are_not_a_delivery(http_peer: _Answering, shared_data: Path) -> None:
    """A redirect (a wrong URL, a login page) stored nothing: before, STOW-RS and FHIR marked it delivered. A 408 or
    429 (slow, throttling) means "later": before, it was dead-lettered at once. A 200 whose response lists other
    instances did not store ours: before, delivered. A 200 with JSON that is not DICOM JSON stored the instance: it
    is delivered, not a TypeError retried as a bug."""
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    from medsight.serving.fhir_out import post_report
    from medsight.serving.stow_out import stow

    path = shared_data.joinpath(*CR)
    report = DiagnosticReport.model_validate({"resourceType": "DiagnosticReport", "status": "final", "code": {}})
    http_peer.status, http_peer.headers = 302, {"Location": "http://127.0.0.1:9/login"}
    with pytest.raises(DestinationRejected, match="redirect"):
        stow(_url(http_peer), [path])
    with pytest.raises(DestinationRejected, match="redirect"):
        post_report(_url(http_peer, "/fhir"), report)
    http_peer.headers = {}
    for code in (408, 429):
        http_peer.status = code
        with pytest.raises(DestinationUnavailable, match=str(code)):
            stow(_url(http_peer), [path])
        with pytest.raises(DestinationUnavailable, match=str(code)):
            post_report(_url(http_peer, "/fhir"), report)
    other = {"00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [generate_uid()]}}]}}
    http_peer.status, http_peer.body = 200, json.dumps(other).encode()
    with pytest.raises(DestinationRejected, match="neither as stored nor as failed"):
        stow(_url(http_peer), [path])
    ours = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    other["00081199"]["Value"][0]["00081155"]["Value"] = [ours]  # type: ignore[index]
    http_peer.body = json.dumps(other).encode()
    assert stow(_url(http_peer), [path]).stored == [ours]
    http_peer.body = b'{"status": "ok"}'
    assert stow(_url(http_peer), [path]).status == 200


def test_an_export_to_a_redirecting_destination_is_dead_lettered_not_done(
    tmp_path: Path, shared_data: Path, http_peer: _Answering, loops: Callable[..., threading.Thread]
) -> None:
    """Through the worker: the export job ends dead with the reason, never ``done``, and no "result sent" is
    audited."""
    dest = Destination(name="pacs", kind="dicomweb", url=_url(http_peer))
    service = Service(_config(tmp_path, (_route(),), (dest,)), grace_s=1)
    result = service.ctx.results_dir / "study" / "sr.dcm"
    result.parent.mkdir(parents=True)
    result.write_bytes(shared_data.joinpath(*CR).read_bytes())
    http_peer.status, http_peer.headers = 301, {"Location": "https://elsewhere.example/"}
    job = service.queue.enqueue("export", "1.2.3", "pacs", {"files": ["study/sr.dcm"], "route": "cr"})
    loops(service, service._work, "w0")
    _wait("the export", lambda: service.queue.get(job.id).state in ("done", "dead"))  # type: ignore[union-attr]
    after = service.queue.get(job.id)
    assert after is not None and after.state == "dead" and "HTTP 301" in (after.last_error or "")
    assert http_peer.received == 1
    assert not [r for r in service.audit.records() if r["action"] == "result sent"]


def test_an_hl7_export_sends_whole_segments_from_the_destinations_sender(
    tmp_path: Path,
    mllp_peer: Any,  # noqa: F811
) -> None:
    """The ORU^R01 file holds CR-separated segments. Before, it was read back in text mode, which turned every CR
    into LF: the peer got one long MSH segment (no PID, OBR or OBX: the findings were lost) and still answered AA, so
    the export was done. The destination's ``application`` and ``facility`` (MSH-3, MSH-4) were also ignored."""
    from medsight.serving.dicom_objects import Finding
    from medsight.serving.hl7_out import oru_r01
    from medsight.serving.provenance import AlgorithmIdentity
    from medsight.serving.worker import run_export

    host, port = mllp_peer.server_address
    dest = Destination(name="ris", kind="hl7", host=host, port=port, application="RADAI", facility="NORTH")
    service = Service(_config(tmp_path, (_route(),), (dest,)), grace_s=1)
    try:
        identity = AlgorithmIdentity(name="cxr", version="1", checksum="ab" * 32)
        text = oru_r01([Finding("pneumonia", 0.8), Finding("normal", 0.2)], "1.2.3", identity, control_id="MS7")
        path = service.ctx.results_dir / "1.2.3" / "cr-7" / "oru_r01.hl7"
        path.parent.mkdir(parents=True)
        path.write_text(text, encoding="utf-8")  # as messages.write writes it
        job = service.queue.enqueue("export", "1.2.3", "ris", {"messages": {"hl7": "1.2.3/cr-7/oru_r01.hl7"}})
        assert run_export(service.ctx, job) == {"destination": "ris", "kind": "hl7", "messages": 1}
        (message,) = mllp_peer.received
        assert [str(s[0]) for s in message] == ["MSH", "PID", "OBR", "OBX", "OBX"]
        msh = message.segment("MSH")
        assert (str(msh[3]), str(msh[4]), str(msh[10])) == ("RADAI", "NORTH", "MS7")
    finally:
        service.engine.dispose()


# ------------------------------------------------------------------------------------------------ configuration


def test_a_destination_url_without_a_host_or_with_a_bad_port_is_refused_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "site.toml"
    cfg.write_text(
        f"""[service]
data_dir = "{tmp_path / "data"}"

[dicom]
allow_any = true

[[destinations]]
name = "pacs"
kind = "dicomweb"
url = "http://:8042/dicom-web"

[[destinations]]
name = "ehr"
kind = "fhir"
url = "https://fhir.example.org:99999/r4"

[[destinations]]
name = "local"
kind = "dicomweb"
url = "http://[::1]:8042/dicom-web"

[[routes]]
name = "cr"
bundle = "{tmp_path / "no_bundle"}"
send_to = ["pacs", "ehr", "local"]
""",
        encoding="utf-8",
    )
    from medsight.serving.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_config(cfg)
    problems = caught.value.problems
    assert any(p.startswith("destinations[0].url:") and "names no host" in p for p in problems), problems
    assert any(p.startswith("destinations[1].url:") and "port" in p for p in problems), problems
    assert not any(p.startswith("destinations[2]") for p in problems), problems
