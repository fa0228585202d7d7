"""``medsight serve`` end to end against real peers (issue 11 §2): dcmtk ``storescu`` is the modality, a real Orthanc
(with its DICOMweb plugin) the destination PACS, dcmtk ``storescp`` a destination that comes up late; everything in
a loopback-only network namespace, started and stopped here. The service runs as its own process
(``ip netns exec NS medsight serve --config site.toml``), so ``kill -9`` is a real crash."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from medsight.cli import main
from serving.orthanc_peer import ORTHANC_AET, SENDER_AET, Orthanc, free_port, in_namespace, orthanc, require, run
from serving.test_service_type2 import (
    MR_SERIES,
    dciodvfy,
    strip,
    tiny_bundle,  # noqa: F401  (a tiny real segmentation bundle, as a fixture)
)

MEDSIGHT = str(Path(sys.executable).with_name("medsight"))
CR = ("dicom_samples", "pydicom_data", "RG3_J2KR.dcm")
CT = ("dicom_samples", "pydicom_test_files", "CT_small.dcm")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A real (tiny) classification bundle: the model quality does not matter here, the plumbing does."""
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    assert main(["train", "--task", "classification", "medmnist:breastmnist", "--out", str(out), "--epochs", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def seg_bundle(tiny_bundle: Path) -> Path:  # noqa: F811
    return tiny_bundle


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with orthanc(tmp_path_factory.mktemp("orthanc")) as peer:
        yield peer


class ServiceProcess:
    """One ``medsight serve`` process in the namespace, its config, data folder and an admin token."""

    def __init__(self, ns: str, folder: Path, config: str, env: dict[str, str] | None = None) -> None:
        self.ns, self.folder = ns, folder
        self.http_port, self.dicom_port = free_port(ns), free_port(ns)
        self.config = folder / "site.toml"
        self.config.write_text(
            config.format(http=self.http_port, dicom=self.dicom_port, data=folder / "data"), encoding="utf-8"
        )
        self.env = {**os.environ, "MEDSIGHT_THREADS": "1", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = folder / "serve.log"
        assert main(["users", "add", "admin", "--role", "admin", "--config", str(self.config)]) == 0
        self.token = self._token()

    def _token(self) -> str:
        done = subprocess.run(
            [MEDSIGHT, "users", "token", "admin", "--config", str(self.config)],
            capture_output=True, text=True, env=self.env, check=True,
        )
        return done.stdout.strip().split()[-1]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [require("ip"), "netns", "exec", self.ns, MEDSIGHT, "serve", "--config", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
            )
        deadline = time.monotonic() + 180
        while True:
            assert self.process.poll() is None, f"medsight serve exited: {self.log.read_text()[-3000:]}"
            try:
                if self.get("/healthz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"medsight serve did not start: {self.log.read_text()[-3000:]}"
            time.sleep(0.3)

    def get(self, path: str, **kw: object) -> httpx.Response:
        with in_namespace(self.ns), httpx.Client(timeout=30) as client:
            return client.get(self.base + path, **kw)  # type: ignore[arg-type]

    def post(self, path: str, **kw: object) -> httpx.Response:
        with in_namespace(self.ns), httpx.Client(timeout=30) as client:
            return client.post(self.base + path, **kw)  # type: ignore[arg-type]

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def kill9(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.folder / 'data' / 'medsight.db'}?mode=ro", uri=True)


CONFIG = """
[service]
data_dir = "{data}"
http_port = {http}
quiet_period_s = 2
backoff_s = 1
backoff_max_s = 2
max_attempts = 30
job_timeout_s = 120

[dicom]
port = {dicom}
[[dicom.allowed]]
ae_title = "MODALITY"
[[dicom.allowed]]
ae_title = "LATEMOD"

[[destinations]]
name = "pacs"
kind = "dicom"
ae_title = "%(orthanc_ae)s"
host = "127.0.0.1"
port = %(orthanc_port)d
calling_ae = "%(sender_ae)s"

[[destinations]]
name = "late"
kind = "dicom"
ae_title = "LATEPACS"
host = "127.0.0.1"
port = %(late_port)d
calling_ae = "MEDSIGHT"

[[routes]]
name = "cr"
bundle = "%(bundle)s"
match.modality = ["CR", "DX"]
match.calling_ae = ["MODALITY"]
send_to = ["pacs"]
outputs = ["sr"]

[[routes]]
name = "late"
bundle = "%(bundle)s"
match.modality = ["CR"]
match.calling_ae = ["LATEMOD"]
send_to = ["late"]
outputs = ["sr"]

[[routes]]
name = "mr"
bundle = "%(seg_bundle)s"
match.modality = ["MR"]
send_to = ["pacs"]
outputs = ["seg"]

[[routes]]
name = "ct"
bundle = "%(bundle)s"
match.modality = ["CT"]
apply_per = "instance"
send_to = ["pacs"]
outputs = ["sr"]
"""


def _config(pacs: Orthanc, bundle: Path, late_port: int, segmentation: Path) -> str:
    return CONFIG % {
        "orthanc_ae": ORTHANC_AET, "orthanc_port": pacs.dicom_port, "sender_ae": SENDER_AET, "late_port": late_port,
        "bundle": bundle, "seg_bundle": segmentation,
    }


def _copy(shared: Path, parts: tuple[str, ...], out: Path, *, strip: bool = False, study: str | None = None,
          series: str | None = None) -> tuple[str, str, Path]:
    """A copy with fresh UIDs (study/series given to group several); ``strip`` removes or empties Type 2 data."""
    ds = pydicom.dcmread(shared.joinpath(*parts))
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if strip:
        for keyword in ("PatientBirthDate", "PatientSex", "PatientName", "PatientID"):
            if keyword in ds:
                delattr(ds, keyword)
        for keyword in ("SeriesNumber", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDate"):
            setattr(ds, keyword, None)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), out


def _storescu(ns: str, port: int, files: list[Path], calling: str = "MODALITY") -> subprocess.CompletedProcess[str]:
    return run(ns, ["storescu", "-xv", "-aet", calling, "-aec", "MEDSIGHT", "127.0.0.1", str(port),
                    *[str(f) for f in files]])


def _srs(pacs: Orthanc, study_uid: str) -> list[str]:
    found = pacs.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}})
    found.raise_for_status()
    return list(found.json())


def _wait(what: str, check: object, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def service(
    pacs: Orthanc, bundle: Path, seg_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    folder = tmp_path_factory.mktemp("service")
    late_port = free_port(pacs.ns)
    svc = ServiceProcess(pacs.ns, folder, _config(pacs, bundle, late_port, seg_bundle))
    svc.late_port = late_port  # type: ignore[attr-defined]
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


def test_cr_studies_come_back_as_valid_srs_in_orthanc_exactly_once(
    service: ServiceProcess, pacs: Orthanc, shared_data: Path, tmp_path: Path
) -> None:
    """A CR and a stripped CR (no PatientBirthDate/PatientSex, empty SeriesNumber...) each give one valid SR in
    Orthanc; sending the first study again and completing it again gives no second SR."""
    full_study, _, full = _copy(shared_data, CR, tmp_path / "full.dcm")
    bare_study, _, bare = _copy(shared_data, CR, tmp_path / "bare.dcm", strip=True)
    sent = _storescu(service.ns, service.dicom_port, [full, bare])
    assert sent.returncode == 0, sent.stderr
    for study in (full_study, bare_study):
        _wait("the SR in Orthanc", lambda s=study: len(_srs(pacs, s)) == 1)
    for study in (full_study, bare_study):
        (sr_id,) = _srs(pacs, study)
        back = tmp_path / f"{sr_id}.dcm"
        back.write_bytes(pacs.get(f"/instances/{sr_id}/file").content)
        errors, _ = dciodvfy(back)
        assert errors == [], errors
        sr = pydicom.dcmread(back)
        assert sr.StudyInstanceUID == study and sr.Modality == "SR"
    # the same study again, and an explicit completion: still one result set
    assert _storescu(service.ns, service.dicom_port, [full]).returncode == 0
    answer = service.post(f"/api/studies/{full_study}/complete", headers=service.auth())
    assert answer.status_code in (202, 409), answer.text
    time.sleep(6)
    assert len(_srs(pacs, full_study)) == 1
    health = service.get("/healthz").json()
    assert health["jobs"]["dead"] == 0
    metrics = service.get("/metrics").text
    assert 'medsight_jobs{state="done"}' in metrics and "medsight_instances_received_total" in metrics
    audit = (service.folder / "data" / "audit.log").read_text()
    assert "result sent" in audit and "RG3" not in audit


def test_a_stripped_mr_series_comes_back_as_a_valid_seg_in_orthanc(
    service: ServiceProcess, pacs: Orthanc, shared_data: Path, tmp_path: Path
) -> None:
    """An MR series whose files lack PatientBirthDate/PatientSex and carry an empty SeriesNumber (as many exports
    do) is segmented by the route's 3D model; the SEG Orthanc holds is dciodvfy-clean and keeps those Type 2
    attributes, present and empty."""
    from medsight.io.dicom import read_series

    study, series = generate_uid(), generate_uid()
    folder = tmp_path / "mr"
    folder.mkdir()
    for path in read_series(shared_data / "udacity_brain_mr_dicom" / "Study3" / MR_SERIES[0]).files:
        ds = strip(pydicom.dcmread(path))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / path.name, enforce_file_format=True)
    sent = _storescu(service.ns, service.dicom_port, sorted(folder.iterdir()))
    assert sent.returncode == 0, sent.stderr

    def segs() -> list[str]:
        q = {"Level": "Instance", "Query": {"StudyInstanceUID": study, "Modality": "SEG"}}
        return list(pacs.post("/tools/find", q).json())

    _wait("the SEG in Orthanc", lambda: len(segs()) == 1, timeout=300)
    (seg_id,) = segs()
    back = tmp_path / "seg.dcm"
    back.write_bytes(pacs.get(f"/instances/{seg_id}/file").content)
    errors, _ = dciodvfy(back)
    assert errors == [], errors
    seg = pydicom.dcmread(back)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series
    assert "PatientBirthDate" in seg and not seg.PatientBirthDate and "PatientSex" in seg


def test_a_destination_that_is_down_gets_its_results_when_it_comes_back(
    service: ServiceProcess, pacs: Orthanc, shared_data: Path, tmp_path: Path
) -> None:
    study, _, path = _copy(shared_data, CR, tmp_path / "late.dcm")
    assert _storescu(service.ns, service.dicom_port, [path], calling="LATEMOD").returncode == 0

    def failed_attempts() -> int:
        with service.db() as db:
            row = db.execute("SELECT attempts FROM jobs WHERE kind='export' AND study_uid=?", (study,)).fetchone()
        return 0 if row is None else int(row[0])

    _wait("two failed export attempts", lambda: failed_attempts() >= 2, timeout=120)
    received = tmp_path / "received"
    received.mkdir()
    late_pacs = subprocess.Popen(
        [require("ip"), "netns", "exec", service.ns, "storescp", "-aet", "LATEPACS", "-od", str(received),
         str(service.late_port)],  # type: ignore[attr-defined]
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _wait("the SR at the late destination", lambda: any(received.iterdir()), timeout=120)
    finally:
        os.killpg(late_pacs.pid, signal.SIGTERM)
        late_pacs.wait(30)
    (sr,) = [pydicom.dcmread(p) for p in received.iterdir()]
    assert sr.Modality == "SR" and sr.StudyInstanceUID == study


def test_bad_input_is_refused_with_a_reason_and_nothing_else_is_disturbed(
    service: ServiceProcess, pacs: Orthanc, shared_data: Path, tmp_path: Path
) -> None:
    good_study, good_sop, good = _copy(shared_data, CT, tmp_path / "good.dcm")
    broken = tmp_path / "broken.dcm"
    _copy(shared_data, CT, broken)
    ds = pydicom.dcmread(broken)
    ds.StudyInstanceUID = "1.2.840.not-a-uid"  # sendable, but no valid study to file it under
    ds.save_as(broken)
    sent = run(service.ns, ["storescu", "-v", "-nh", "-aet", "MODALITY", "-aec", "MEDSIGHT", "127.0.0.1",
                            str(service.dicom_port), str(broken), str(good)])
    said = sent.stdout + sent.stderr
    assert "Received Store Response (Error: CannotUnderstand)" in said, said
    assert said.count("Received Store Response (Success)") == 1, said
    assert "StudyInstanceUID" in service.log.read_text()  # the service says what was wrong (no patient data)
    with service.db() as db:
        assert db.execute("SELECT count(*) FROM instances WHERE sop_uid=?", (good_sop,)).fetchone()[0] == 1
    # an AE title not on the allow-list: the association is rejected
    refused = run(service.ns, ["echoscu", "-aet", "STRANGER", "-aec", "MEDSIGHT", "127.0.0.1", str(service.dicom_port)])
    assert refused.returncode != 0
    assert "Rejected" in refused.stdout + refused.stderr or "rejected" in (refused.stdout + refused.stderr).lower()
    # a bad token and a viewer's STOW
    assert service.get("/dicomweb/studies", headers={"Authorization": "Bearer nope.nope"}).status_code == 401
    assert service.get("/dicomweb/studies").status_code == 401
    # and the service still works
    assert service.get("/healthz").status_code == 200
    ok = run(service.ns, ["echoscu", "-aet", "MODALITY", "-aec", "MEDSIGHT", "127.0.0.1", str(service.dicom_port)])
    assert ok.returncode == 0, ok.stderr
    _ = good_study


def test_kill_9_while_receiving_and_while_a_job_runs_loses_nothing_and_duplicates_nothing(
    pacs: Orthanc, bundle: Path, seg_bundle: Path, shared_data: Path, tmp_path: Path
) -> None:
    hold = tmp_path / "hold"
    hold.mkdir()
    svc = ServiceProcess(pacs.ns, tmp_path, _config(pacs, bundle, free_port(pacs.ns), seg_bundle),
                         env={"MEDSIGHT_TEST_HOLD_JOBS": str(hold)})
    svc.start()
    try:
        # 1. kill -9 while a 100-instance CT series is arriving
        study, series = generate_uid(), generate_uid()
        files = [_copy(shared_data, CT, tmp_path / "ct" / f"{i:03d}.dcm", study=study, series=series)[2]
                 for i in range(100)]
        sender = subprocess.Popen(
            [require("ip"), "netns", "exec", svc.ns, "storescu", "-v", "-aet", "MODALITY", "-aec", "MEDSIGHT",
             "127.0.0.1", str(svc.dicom_port), *[str(f) for f in files]],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        acknowledged: list[str] = []
        current: list[str] = []
        killed = threading.Event()

        def read() -> None:
            assert sender.stdout is not None
            for line in sender.stdout:
                if "Sending file:" in line:
                    current[:] = [line.split("Sending file:")[1].strip()]
                elif "Received Store Response (Success)" in line and current:
                    acknowledged.append(current[0])
                    if len(acknowledged) == 30 and not killed.is_set():
                        svc.kill9()
                        killed.set()

        reader = threading.Thread(target=read)
        reader.start()
        reader.join(300)
        sender.wait(60)
        assert killed.is_set() and 30 <= len(acknowledged) < 100
        # jobs wait at the gate from now on: the restarted service finds the study quiet at once and claims its job
        (hold / "hold").touch()
        svc.start()
        with svc.db() as db:
            stored = {r[0] for r in db.execute("SELECT sop_uid FROM instances WHERE study_uid=?", (study,))}
        for path in acknowledged:
            sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            assert sop in stored, f"acknowledged {Path(path).name} was lost"
            kept = svc.folder / "data" / "instances" / study / series / f"{sop}.dcm"
            assert pydicom.dcmread(kept).SOPInstanceUID == sop
        # the rest of the series (and the acknowledged ones again), then one result set: one SR per CT instance
        assert _storescu(svc.ns, svc.dicom_port, files).returncode == 0
        _wait("a job to be claimed", lambda: (hold / "claimed").exists())
        # 2. kill -9 while that job runs
        svc.kill9()
        (hold / "hold").unlink()
        svc.start()
        _wait("100 SRs for the CT study", lambda: len(_srs(pacs, study)) >= 100, timeout=300)
        time.sleep(5)
        srs = _srs(pacs, study)
        assert len(srs) == 100, f"{len(srs)} SRs for 100 instances: a result set was sent twice"
    finally:
        svc.stop()
