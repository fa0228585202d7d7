"""send_instances and echo against real peers: dcmtk storescp, our own listener, a closed port, a silent server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from medsight.errors import DestinationUnavailable, MedsightError
from medsight.serving.dicom_send import RemoteNode, echo, send_instances
from medsight.serving.listener import AllowedPeer, DicomListener, ListenerSettings, free_port
from needs import tool
from serving.part10_sink import Part10Sink

SAMPLES = ["pydicom_test_files/CT_small.dcm", "pydicom_test_files/MR_small.dcm", "pydicom_data/RG3_J2KR.dcm",
           "pydicom_data/OBXXXX1A_rle.dcm", "pydicom_test_files/reportsi.dcm", "pydicom_test_files/liver_1frame.dcm"]
UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}


@pytest.fixture
def inputs(shared_data: Path, tmp_path: Path) -> list[Path]:
    folder = tmp_path / "in"
    folder.mkdir()
    paths = []
    for name in SAMPLES:
        paths.append(folder / Path(name).name)
        shutil.copy(shared_data / "dicom_samples" / name, paths[-1])
    return paths


def storescp(tmp_path: Path, request: pytest.FixtureRequest, *options: str) -> tuple[RemoteNode, Path]:
    """dcmtk storescp on 127.0.0.1 and a free port, stopped by the test's finaliser."""
    out = tmp_path / "pacs"
    out.mkdir()
    port = free_port()
    process = subprocess.Popen([tool("storescp"), *options, "-aet", "PACS", "-od", str(out), str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def stop() -> None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    request.addfinalizer(stop)
    node = RemoteNode("PACS", "127.0.0.1", port)
    deadline = time.monotonic() + 30
    while not echo(node, "MEDSIGHT", timeout_s=5):
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        assert time.monotonic() < deadline, "storescp did not start"
        time.sleep(0.2)
    return node, out


def by_uid(folder: Path) -> dict[str, Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in (dcmread(p) for p in folder.rglob("*") if p.is_file())}


def test_send_to_storescp_keeps_every_instance_intact(inputs: list[Path], tmp_path: Path,
                                                      request: pytest.FixtureRequest) -> None:
    node, out = storescp(tmp_path, request, "+xa")  # accepts every transfer syntax it knows
    report = send_instances(node, inputs, calling_ae="MEDSIGHT")
    assert report.ok, report.failed
    assert sorted(report.sent) == sorted(p.name for p in inputs)
    received = by_uid(out)
    originals = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, inputs)}
    assert set(received) == set(originals)
    for uid, original in originals.items():
        copy = received[uid]
        # sent in the file's own syntax: the data set arrives element for element as it was
        assert copy.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        for element in original:
            if element.tag != 0xFFFCFFFC:  # trailing padding carries nothing and dcmtk drops it
                assert copy[element.tag] == element, (uid, element.tag)


def test_compressed_files_are_decoded_for_a_peer_that_takes_only_uncompressed(
        inputs: list[Path], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    node, out = storescp(tmp_path, request)  # storescp's default: uncompressed transfer syntaxes only
    j2k = next(p for p in inputs if p.name == "RG3_J2KR.dcm")
    report = send_instances(node, [j2k, inputs[0]])
    assert report.ok, report.failed
    original = dcmread(j2k)
    copy = by_uid(out)[str(original.SOPInstanceUID)]
    assert copy.file_meta.TransferSyntaxUID in UNCOMPRESSED
    assert np.array_equal(copy.pixel_array, original.pixel_array)  # JPEG 2000 lossless: the same pixels


def test_send_to_our_listener_reports_a_refused_instance_and_stores_the_rest(
        inputs: list[Path], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    refused = dcmread(inputs[1])
    sink = Part10Sink(tmp_path / "store", refuse=str(refused.SOPInstanceUID))
    listener = DicomListener(ListenerSettings("AI", allowed=[AllowedPeer("MEDSIGHT", "127.0.0.1")]), sink)
    listener.start()
    request.addfinalizer(listener.stop)
    node = RemoteNode("AI", "127.0.0.1", listener.port)
    assert echo(node, "MEDSIGHT")
    not_dicom = tmp_path / "in" / "notes.txt"
    not_dicom.write_text("not DICOM")
    report = send_instances(node, [*inputs, not_dicom])
    assert not report.ok
    failed = dict(report.failed)
    assert set(failed) == {inputs[1].name, "notes.txt"}
    assert failed[inputs[1].name].startswith("0xC000") and "refused by the test store" in failed[inputs[1].name]
    assert "cannot read as DICOM" in failed["notes.txt"]
    assert sorted(report.sent) == sorted(p.name for p in inputs if p != inputs[1])
    stored = {p.stem for p in sink.root.glob("*.dcm")}
    assert stored == {str(dcmread(p).SOPInstanceUID) for p in inputs if p != inputs[1]}


def test_unreachable_or_refusing_destinations_raise(inputs: list[Path], tmp_path: Path,
                                                    request: pytest.FixtureRequest) -> None:
    closed = RemoteNode("PACS", "127.0.0.1", free_port())
    with pytest.raises(DestinationUnavailable, match="connection refused"):
        send_instances(closed, inputs[:1], timeout_s=5)
    assert not echo(closed, timeout_s=5)

    listener = DicomListener(ListenerSettings("AI", allowed=[AllowedPeer("SOMEONE")]), Part10Sink(tmp_path / "s"))
    listener.start()
    request.addfinalizer(listener.stop)
    with pytest.raises(DestinationUnavailable, match=r"rejected .*Calling AE title not recognised"):
        send_instances(RemoteNode("AI", "127.0.0.1", listener.port), inputs[:1], calling_ae="MEDSIGHT")
    with pytest.raises(DestinationUnavailable, match="Called AE title not recognised"):
        send_instances(RemoteNode("WRONG", "127.0.0.1", listener.port), inputs[:1], calling_ae="SOMEONE")
    assert not echo(RemoteNode("AI", "127.0.0.1", listener.port), "MEDSIGHT")


@pytest.fixture
def silent_server(request: pytest.FixtureRequest) -> Iterator[int]:
    """A TCP server that accepts connections and never answers (a hung PACS)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stopping = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stopping.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stopping.set()
    thread.join(5)
    for s in [*held, server]:
        s.close()


def test_a_peer_that_never_answers_times_out(inputs: list[Path], silent_server: int) -> None:
    started = time.monotonic()
    with pytest.raises(DestinationUnavailable, match="no association was established within 2 s"):
        send_instances(RemoteNode("PACS", "127.0.0.1", silent_server), inputs[:1], timeout_s=2)
    assert time.monotonic() - started < 30


def test_bad_destinations_are_clear_errors(inputs: list[Path]) -> None:
    with pytest.raises(MedsightError, match="not a valid AE title"):
        RemoteNode("A_TITLE_LONGER_THAN_16", "127.0.0.1", 104)
    with pytest.raises(MedsightError, match=r"not in 1\.\.65535"):
        RemoteNode("PACS", "127.0.0.1", 0)
    with pytest.raises(MedsightError, match="timeout must be positive"):
        send_instances(RemoteNode("PACS", "127.0.0.1", 104), inputs, timeout_s=0)


def test_a_peers_error_comment_never_carries_the_patients_name_into_the_reason(
    inputs: list[Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A PACS's ErrorComment is free text, and some name the patient in it ("no match for DOE^JANE"); it went into
    the failure reason, which the job queue keeps and logs. The patient's values are now cut out of it."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage

    sent = dcmread(inputs[0])
    name, pid = str(sent.PatientName), str(sent.PatientID)

    def refuse(event: object) -> Dataset:
        status = Dataset()
        status.Status = 0xA900
        status.ErrorComment = f"no match {name.split('^')[0]} {pid}"[:64]
        return status

    ae = AE("PACS")
    ae.add_supported_context(CTImageStorage)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, refuse)])
    request.addfinalizer(server.shutdown)
    report = send_instances(RemoteNode("PACS", "127.0.0.1", port), [inputs[0]])
    ((_, reason),) = report.failed
    assert reason.startswith("0xA900") and "no match" in reason
    assert name.split("^")[0] not in reason and pid not in reason
