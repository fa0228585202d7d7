"""Results reach a real PACS: an SR (standard codes + IHE AIR provenance) and a SEG made from real samples go to
Orthanc by STOW-RS (medsight.serving.stow_out) and by C-STORE (dcmtk storescu), come back byte-for-byte through
Orthanc's REST API, read back as what was written, and pass dciodvfy. A refused STOW is not retried, an
unreachable one is. Orthanc runs in a loopback-only network namespace that never outlives the test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from medsight.errors import DestinationRejected, DestinationUnavailable
from medsight.io.dicom import read_datasets, read_series
from medsight.serving.dicom_objects import Finding, read_seg, read_sr, write_seg, write_sr
from medsight.serving.provenance import AlgorithmIdentity
from medsight.serving.stow_out import stow
from serving.orthanc_peer import ORTHANC_AET, SENDER_AET, Orthanc, in_namespace, orthanc, require, run
from serving.test_service_type2 import dciodvfy

IDENTITY = AlgorithmIdentity("medsight brain test", "0.0-test", "ab" * 32)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with orthanc(tmp_path_factory.mktemp("orthanc")) as peer:
        yield peer


@pytest.fixture(scope="module")
def results(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An SR over the CT sample and a SEG over a real brain MR series, written by medsight's writers."""
    out = tmp_path_factory.mktemp("results")
    ct = pydicom.dcmread(shared_data / "dicom_samples" / "pydicom_test_files" / "CT_small.dcm")
    sr = write_sr([Finding("nodule", 0.81), Finding("normal", 0.19)], [ct], out / "sr.dcm", identity=IDENTITY)
    volume = read_series(shared_data / "udacity_brain_mr_dicom" / "Study3" / "11-T1post-18670")
    datasets: list[Dataset] = read_datasets(volume.files)
    mask = np.zeros(volume.array.shape, dtype=np.uint8)
    mask[8:12, 100:140, 90:130] = 1
    seg = write_seg(mask, datasets, ["lesion"], out / "seg.dcm", identity=IDENTITY)
    return {"sr": sr, "seg": seg}


def _check_back(pacs: Orthanc, written: Path, tmp_path: Path) -> Path:
    uid = str(pydicom.dcmread(written, stop_before_pixels=True).SOPInstanceUID)
    back = tmp_path / f"back_{written.name}"
    back.write_bytes(pacs.file(uid))
    errors, _warnings = dciodvfy(back)
    assert errors == [], errors
    assert pydicom.dcmread(back).SOPInstanceUID == uid
    return back


def _assert_same_content(kind: str, back: Path) -> None:
    if kind == "sr":
        findings = read_sr(back)
        assert [(f.label, f.code[:2], f.probability) for f in findings] == [
            ("nodule", ("27925004", "SCT"), pytest.approx(0.81)),
            ("normal", ("17621005", "SCT"), pytest.approx(0.19)),
        ]
        assert {(f.model_name, f.model_version, f.model_checksum) for f in findings} == {
            (IDENTITY.name, IDENTITY.version, IDENTITY.checksum)
        }
    else:
        seg = read_seg(back)
        assert seg.labels == ["lesion"] and int(seg.mask.sum()) == 4 * 40 * 40
        ds = pydicom.dcmread(back, stop_before_pixels=True)
        segment = ds.SegmentSequence[0]
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"  # SNOMED CT Lesion
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == IDENTITY.name and algorithm.AlgorithmVersion == IDENTITY.version
        assert IDENTITY.checksum in str(algorithm.AlgorithmParameters)


@pytest.mark.parametrize("kind", ["sr", "seg"])
def test_stow_rs_to_orthanc_and_read_back(pacs: Orthanc, results: dict[str, Path], kind: str, tmp_path: Path) -> None:
    with in_namespace(pacs.ns):
        report = stow(f"{pacs.dicomweb}/studies", [results[kind]], timeout_s=60)
    uid = str(pydicom.dcmread(results[kind], stop_before_pixels=True).SOPInstanceUID)
    assert report.status == 200 and report.stored == [uid] and report.failed == {}
    back = _check_back(pacs, results[kind], tmp_path)
    assert back.read_bytes() == results[kind].read_bytes()  # STOW-RS stores the object as sent
    _assert_same_content(kind, back)


@pytest.mark.parametrize("kind", ["sr", "seg"])
def test_c_store_to_orthanc_and_read_back(pacs: Orthanc, results: dict[str, Path], kind: str, tmp_path: Path) -> None:
    copy = tmp_path / f"cstore_{kind}.dcm"
    ds = pydicom.dcmread(results[kind])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()  # a new instance, so STOW's copy does not hide a failed store
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(copy, enforce_file_format=True)
    # -R: propose only the SOP classes of the files sent (Comprehensive 3D SR is not among storescu's defaults)
    storescu = [require("storescu"), "-R", "-aet", SENDER_AET, "-aec", ORTHANC_AET, "127.0.0.1", str(pacs.dicom_port)]
    sent = run(pacs.ns, [*storescu, str(copy)])
    assert sent.returncode == 0, sent.stdout + sent.stderr
    back = _check_back(pacs, copy, tmp_path)
    _assert_same_content(kind, back)


def test_a_refused_stow_is_not_retried_and_an_unreachable_one_is(pacs: Orthanc, tmp_path: Path) -> None:
    junk = tmp_path / "not_dicom.dcm"
    junk.write_bytes(b"this is not a DICOM file")
    with in_namespace(pacs.ns), pytest.raises(DestinationRejected, match="STOW-RS rejected"):
        stow(f"{pacs.dicomweb}/studies", [junk], timeout_s=30)
    with in_namespace(pacs.ns), pytest.raises(DestinationUnavailable, match="unreachable"):
        stow("http://127.0.0.1:9/dicom-web/studies", [junk], timeout_s=5)  # nothing listens on port 9
