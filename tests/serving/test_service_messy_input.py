"""The service against what a hospital network sends (audit): a SOP Instance UID reused for another study, a STOW-RS
part cut short, C-FIND by person name, a full disk seen through STOW-RS, an image with no pixels, and multi-frame
instances meeting a 2D model. Real store, real DICOM listener and pynetdicom peer, real app through TestClient."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from medsight.errors import DuplicateInstance
from medsight.serving.config import ConfigError, load_config
from medsight.serving.database import open_database
from medsight.serving.dicom_query import StoreFinder
from medsight.serving.jobs import JobQueue
from medsight.serving.listener import DicomListener, ListenerSettings, free_port
from medsight.serving.service import Service as ClinicalService
from medsight.serving.store import StudyStore
from medsight.serving.worker import INFERENCE
from serving.test_service_http import Service, _multipart, _values
from serving.test_service_store import copy_of, files_under

CT = ("dicom_samples", "pydicom_test_files", "CT_small.dcm")
MULTIFRAME_MR = ("dicom_samples", "pydicom_data", "emri_small.dcm")  # one MR instance of 10 frames


def _read(shared_data: Path, parts: tuple[str, ...]) -> Dataset:
    return pydicom.dcmread(shared_data.joinpath(*parts))


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _stow(service: Service, payloads: list[bytes]) -> dict[str, object]:
    body, content_type = _multipart(payloads)
    response = TestClient(service.app).post(
        "/dicomweb/studies", content=body, headers={**service.auth("admin"), "Content-Type": content_type}
    )
    return {"status": response.status_code, "json": response.json()}


def _failure_reasons(answer: dict[str, object]) -> list[int]:
    return [_values(item, "00081197")[0] for item in _values(answer["json"], "00081198")]  # type: ignore[arg-type]


# --- a SOP Instance UID reused for another patient's study ------------------------------------------------------


def test_a_sop_instance_uid_reused_in_another_study_is_refused_and_the_first_kept(
    tmp_path: Path, shared_data: Path
) -> None:
    """A modality that reuses a UID, or a re-import under new study UIDs, must not destroy the instance already
    acknowledged (the sender has deleted its copy). The store used to move the row to the new study and unlink
    the first file; it now refuses the newcomer (0x0111, Duplicate SOP Instance) and keeps the first."""
    store = StudyStore(open_database(None, tmp_path / "data"), tmp_path / "instances", min_free_bytes=0)
    first = copy_of(_read(shared_data, CT))
    stored = store.store(first, calling_ae="MODALITY", peer="127.0.0.1")
    other = copy_of(first, study=generate_uid(), series=generate_uid(), PatientID="ANOTHER")
    other.SOPInstanceUID = first.SOPInstanceUID
    other.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    with pytest.raises(DuplicateInstance, match="already stored in another study") as info:
        store.store(other, calling_ae="MODALITY", peer="127.0.0.1")
    assert "ANOTHER" not in str(info.value) and first.SOPInstanceUID not in str(info.value)
    assert [i.sop_uid for i in store.instances(first.StudyInstanceUID)] == [first.SOPInstanceUID]
    assert stored.path.is_file() and files_under(tmp_path / "instances") == [stored.path]
    assert store.study(other.StudyInstanceUID) is None  # the refused instance's study row rolled back with it
    # The same UID again in its own study (a corrected re-send) still replaces it, as before.
    again = copy_of(first)
    again.SOPInstanceUID = first.SOPInstanceUID
    again.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    again.InstanceNumber = 7
    assert store.store(again, calling_ae="MODALITY", peer="127.0.0.1").duplicate

    # Through the DICOM listener: the sender gets a failure status, not Success.
    listener = DicomListener(ListenerSettings(ae_title="MEDSIGHT", port=0, allow_any=True), store)
    listener.start()
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(other.SOPClassUID, str(other.file_meta.TransferSyntaxUID))
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="MEDSIGHT")
        assert assoc.is_established
        status = assoc.send_c_store(other)
        assoc.release()
    finally:
        listener.stop()
    assert status.Status == 0x0111
    assert [i.instance_number for i in store.instances(first.StudyInstanceUID)] == [7]


def test_stow_refuses_a_reused_uid_with_duplicate_sop_instance(tmp_path: Path, shared_data: Path) -> None:
    service = Service(tmp_path / "service")
    first = copy_of(_read(shared_data, CT))
    assert _stow(service, [_part10(first)])["status"] == 200
    other = copy_of(first, study=generate_uid(), series=generate_uid())
    other.SOPInstanceUID = first.SOPInstanceUID
    other.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    answer = _stow(service, [_part10(other)])
    assert answer["status"] == 409 and _failure_reasons(answer) == [0x0111]
    assert [s.study_uid for s in service.store.studies()] == [first.StudyInstanceUID]


# --- a STOW-RS part cut short -----------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.5, 0.999], ids=["half", "last-bytes"])
def test_stow_refuses_a_part_cut_short(tmp_path: Path, shared_data: Path, keep: float) -> None:
    """pydicom keeps a pixel value cut short without a word, so a STOW-RS part cut in half was answered 200 and
    stored with half its pixels; C-STORE refused the same stream. Now both refuse it (0xC000), and nothing is
    stored; a whole part beside it still goes in (202)."""
    service = Service(tmp_path / "service")
    whole = _part10(copy_of(_read(shared_data, CT)))
    cut = _part10(copy_of(_read(shared_data, CT)))
    answer = _stow(service, [cut[: int(len(cut) * keep)], whole])
    assert answer["status"] == 202 and _failure_reasons(answer) == [0xC000]
    assert len(service.store.studies()) == 1 and len(files_under(tmp_path / "service" / "instances")) == 1


def test_stow_still_takes_deflated_and_implicit_vr_parts(tmp_path: Path, shared_data: Path) -> None:
    """The completeness check walks each part in its own transfer syntax: valid unusual encodings still go in."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

    service = Service(tmp_path / "service")
    parts = []
    for syntax in (DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds = copy_of(_read(shared_data, CT), study=generate_uid())
        ds.file_meta.TransferSyntaxUID = syntax
        parts.append(_part10(ds))
    answer = _stow(service, parts)
    assert answer["status"] == 200, answer
    assert len(service.store.studies()) == 2


# --- C-FIND by person name --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "pattern"),
    [
        ("PatientID", "P1"),
        ("PatientName", "Doe^John"),
        ("PatientName", "Doe*"),
        ("PatientName", "Müller*"),
        ("ReferringPhysicianName", "House*"),
    ],
)
def test_c_find_matches_person_names(tmp_path: Path, key: str, pattern: str) -> None:
    """A pydicom PersonName iterates over its characters: the query key ``Doe*`` was read as ``D\\o\\e\\*`` (a
    list of four values) and no study was ever found by name."""
    store = StudyStore(open_database(None, tmp_path / "data"), tmp_path / "instances", min_free_bytes=0)
    for name, pid in (("Doe^John", "P1"), ("Müller^Anna", "P2")):
        ds = Dataset()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
        ds.Modality, ds.PatientName, ds.PatientID = "CR", name, pid
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.ReferringPhysicianName = "House^Gregory" if pid == "P1" else "Wilson^James"
        store.store(ds, calling_ae="T", peer="t")
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    query.PatientName = ""
    setattr(query, key, pattern)
    matches = list(StoreFinder(store)(query, "FINDSCU"))
    assert len(matches) == 1
    expected = "Müller^Anna" if pattern.startswith("Müller") else "Doe^John"
    assert str(matches[0].PatientName) == expected


# --- STOW-RS on a full disk, WADO-RS frames of an image without pixels ------------------------------------------


def test_stow_on_a_full_disk_answers_out_of_resources(tmp_path: Path, shared_data: Path) -> None:
    """A DICOMweb sender must be able to tell a full disk (retry later: 0xA700, as C-STORE answers) from a refusal
    (0x0110); the store's "disk full" error used to fall through to the second."""
    service = Service(tmp_path / "service")
    service.store.min_free_bytes = 1 << 62
    answer = _stow(service, [_part10(copy_of(_read(shared_data, CT)))])
    assert answer["status"] == 409 and _failure_reasons(answer) == [0xA700]


def test_frames_of_an_image_without_pixels_are_a_client_error(tmp_path: Path, shared_data: Path) -> None:
    service = Service(tmp_path / "service")
    empty = copy_of(_read(shared_data, CT))
    empty.Rows = empty.Columns = 0
    empty.PixelData = b""
    assert _stow(service, [_part10(empty)])["status"] == 200
    url = (
        f"/dicomweb/studies/{empty.StudyInstanceUID}/series/{empty.SeriesInstanceUID}"
        f"/instances/{empty.SOPInstanceUID}/frames/1"
    )
    response = TestClient(service.app).get(url, headers=service.auth("viewer"))
    assert 400 <= response.status_code < 500 and "pixel data" in response.text


# --- multi-frame instances and a 2D model -----------------------------------------------------------------------


def test_a_multiframe_series_is_not_routed_to_a_2d_model(tmp_path: Path, shared_data: Path, tiny_bundle: Path) -> None:
    """docs/service_config.md: a 2D model never runs on multi-frame instances. Routing knew that, but the service
    never told it the frame count (the rows do not hold it), so a 10-frame MR was queued for the 2D classifier and
    dead-lettered. A single-frame MR series in the same study is still routed."""
    cfg = tmp_path / "site.toml"
    cfg.write_text(
        f"""[service]
data_dir = "{tmp_path / "data"}"
http_port = {free_port()}

[dicom]
port = {free_port()}
allow_any = true

[[routes]]
name = "mr2d"
bundle = "{tiny_bundle}"
match.modality = ["MR"]
""",
        encoding="utf-8",
    )
    service = ClinicalService(load_config(cfg))
    try:
        cine = _read(shared_data, MULTIFRAME_MR)
        assert int(cine.NumberOfFrames) == 10
        cine.SOPInstanceUID = cine.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        service.store.store(cine, calling_ae="MODALITY", peer="test")
        assert service.complete_study(str(cine.StudyInstanceUID))
        queue: JobQueue = service.queue
        assert queue.claim("test", kinds=[INFERENCE]) is None
        single = _read(shared_data, ("dicom_samples", "pydicom_test_files", "MR_small.dcm"))
        single.StudyInstanceUID = generate_uid()
        single.SOPInstanceUID = single.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        service.store.store(single, calling_ae="MODALITY", peer="test")
        assert service.complete_study(str(single.StudyInstanceUID))
        job = queue.claim("test", kinds=[INFERENCE])
        assert job is not None and job.study_uid == single.StudyInstanceUID
    finally:
        service.engine.dispose()


# --- a STOW-RS body larger than the service takes -----------------------------------------------------------------


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_stow_refuses_a_body_over_the_limit_before_reading_it_whole(
    tmp_path: Path, shared_data: Path, declared: bool
) -> None:
    """A STOW-RS body was read whole into memory whatever its size, so one request could exhaust the service's
    memory. Over ``[service] max_stow_mb`` it is now a 413 (declared length, or counted as a chunked body
    arrives), audited, and nothing is stored; a body under the limit is stored as before."""
    from medsight.serving.http_api import create_app

    service = Service(tmp_path / "service")
    part = _part10(copy_of(_read(shared_data, CT)))
    service.app = create_app(service.store, service.users, service.audit, max_stow_bytes=len(part) // 2)
    body, content_type = _multipart([part])
    content: object = body if declared else iter([body[:1000], body[1000:]])  # an iterator is sent chunked
    response = TestClient(service.app).post(
        "/dicomweb/studies", content=content, headers={**service.auth("admin"), "Content-Type": content_type}
    )
    assert response.status_code == 413 and "max_stow_mb" in response.json()["detail"]
    assert files_under(tmp_path / "service" / "instances") == []
    audit = (tmp_path / "service" / "audit.jsonl").read_text()
    assert '"413"' in audit
    service.app = create_app(service.store, service.users, service.audit, max_stow_bytes=len(body) + 1)
    assert _stow(service, [part])["status"] == 200


def test_max_stow_mb_is_read_and_checked(tmp_path: Path, tiny_bundle: Path) -> None:
    def site(limit: int) -> Path:
        config = tmp_path / "site.toml"
        config.write_text(
            f'[service]\ndata_dir = "{tmp_path / "data"}"\nmax_stow_mb = {limit}\n\n[dicom]\nallow_any = true\n\n'
            f'[[routes]]\nname = "any"\nbundle = "{tiny_bundle}"\noutputs = ["sr"]\n'
        )
        return config

    assert load_config(site(64)).service.max_stow_mb == 64
    with pytest.raises(ConfigError, match=r"service\.max_stow_mb"):
        load_config(site(0))
