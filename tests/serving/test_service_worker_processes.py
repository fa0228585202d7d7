"""Several worker processes on one PostgreSQL queue (issue 14, section 2): 200 jobs, 3 worker processes, and no job
runs twice. Real peers: PostgreSQL on 127.0.0.1 (tests/serving/postgres_peer.py) and an HTTP STOW-RS sink; the
service and its worker processes are started and stopped by the test."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from medsight.serving.config import load_config
from medsight.serving.service import Service
from medsight.serving.worker import EXPORT
from serving.test_service_process import bundle  # noqa: F401  (a tiny trained bundle for the route)

JOBS = 200
WORKERS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _StowSink:
    """A real HTTP server that answers every STOW-RS POST with 200 and keeps the SOP Instance UIDs it received."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with owner.lock:
                    owner.received.extend(m.decode() for m in re.findall(rb"MEDSIGHT-JOB-(\d+)", body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web/studies"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def stow_sink() -> Iterator[_StowSink]:
    sink = _StowSink()
    sink.thread.start()
    try:
        yield sink
    finally:
        sink.server.shutdown()
        sink.server.server_close()


def _site(folder: Path, bundle: Path, database_url: str, sink_url: str) -> Path:  # noqa: F811
    cfg = folder / "site.toml"
    cfg.write_text(
        f"""[service]
data_dir = "{folder / 'data'}"
http_port = {_free_port()}
workers = {WORKERS}
worker_mode = "process"
backoff_s = 0.2

[database]
url = "{database_url}"

[dicom]
port = {_free_port()}
allow_any = true

[[destinations]]
name = "sink"
kind = "dicomweb"
url = "{sink_url}"

[[routes]]
name = "cr"
bundle = "{bundle}"
match.modality = ["CR"]
outputs = ["sr"]
send_to = ["sink"]
""",
        encoding="utf-8",
    )
    return cfg


def _result_file(results: Path, k: int) -> str:
    """A small DICOM object per job whose text names the job, so the sink can tell which job's file it got."""
    from pydicom.dataset import FileMetaDataset

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SeriesDescription = f"MEDSIGHT-JOB-{k}"
    rel = f"jobs/{k}.dcm"
    (results / rel).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(results / rel, enforce_file_format=True)
    return rel


def test_three_worker_processes_run_200_jobs_each_exactly_once(
    tmp_path: Path,
    bundle: Path,  # noqa: F811
    postgres_url: str,
    stow_sink: _StowSink,
) -> None:
    config = load_config(_site(tmp_path, bundle, postgres_url, stow_sink.url))
    service = Service(config, grace_s=5)
    results = service.ctx.results_dir
    study = generate_uid()
    payloads = [{"route": "cr", "files": [_result_file(results, k)]} for k in range(JOBS)]
    jobs = [service.queue.enqueue(EXPORT, study, "sink", p, dedupe_key=f"j{k}") for k, p in enumerate(payloads)]
    service.start()
    try:
        assert service.health()["workers"] == {"mode": "process", "count": WORKERS, "alive": WORKERS}
        deadline = time.monotonic() + 240
        while service.queue.counts().get("done", 0) < JOBS:
            assert time.monotonic() < deadline, f"jobs not done in time: {service.queue.counts()}"
            time.sleep(0.2)
        time.sleep(0.5)  # a job run twice would post again right after: give it the chance to show
        done = [service.queue.get(j.id) for j in jobs]
        metrics = service.metrics.render().decode()
    finally:
        service.stop()
    assert sorted(stow_sink.received, key=int) == [str(k) for k in range(JOBS)], "a job ran twice or never"
    assert all(j.attempts == 1 for j in done), [(j.id, j.attempts) for j in done if j.attempts != 1]
    workers = {j.worker for j in done}
    assert workers <= set(service.worker_ids) and len(workers) == WORKERS, workers  # all three took jobs
    # the worker processes' observations reach the service's /metrics
    assert f'medsight_job_seconds_count{{kind="export",target="sink"}} {float(JOBS)}' in metrics
    assert service.health()["workers"]["alive"] == 0
