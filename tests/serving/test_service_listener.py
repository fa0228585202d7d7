"""The DICOM listener against real peers (dcmtk echoscu/storescu, a pynetdicom SCU) with an fsyncing Part-10 sink."""

from __future__ import annotations

import errno
import logging
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]

from medsight.errors import MedsightError
from medsight.serving.listener import (
    STATUS_BAD_INSTANCE,
    STATUS_CANNOT_DECODE,
    STATUS_OUT_OF_RESOURCES,
    STATUS_STORE_FAILED,
    AllowedPeer,
    DicomListener,
    ListenerSettings,
)
from needs import tool
from serving.part10_sink import Part10Sink

SAMPLES = {  # name in the sample set -> what it covers
    "pydicom_test_files/CT_small.dcm": "CT, explicit LE",
    "pydicom_test_files/MR_small.dcm": "MR",
    "pydicom_data/RG3_J2KR.dcm": "CR, JPEG 2000 lossless",
    "pydicom_test_files/reportsi.dcm": "Basic Text SR",
    "pydicom_test_files/liver_1frame.dcm": "Segmentation",
}
PADDING = 0xFFFCFFFC
CT_PATIENT = ("CompressedSamples^CT1", "1CT1")  # CT_small's PatientName and PatientID: must never reach a log


def same_content(a: Dataset, b: Dataset) -> bool:
    """Same elements with the same values at every level; the VR may differ only where implicit VR leaves it
    ambiguous (OB/OW pixel data read back from an implicit-VR copy: storescu may send explicit LE as implicit).
    Data Set Trailing Padding (FFFC,FFFC), which has no meaning and dcmtk drops, is left out."""
    tags = set(a.keys()) - {PADDING}
    if tags != set(b.keys()) - {PADDING}:
        return False
    for tag in tags:
        x, y = a[tag], b[tag]
        if x.VR == "SQ" or y.VR == "SQ":
            if len(x.value) != len(y.value):
                return False
            if not all(same_content(p, q) for p, q in zip(x.value, y.value, strict=True)):
                return False
        elif x.value != y.value or (x.VR != y.VR and {x.VR, y.VR} != {"OB", "OW"}):
            return False
    return True


@pytest.fixture
def samples(shared_data: Path) -> Path:
    return shared_data / "dicom_samples"


def start(settings: ListenerSettings, sink: object, request: pytest.FixtureRequest,
          stored: list[object] | None = None) -> DicomListener:
    listener = DicomListener(settings, sink, on_stored=None if stored is None else stored.append)  # type: ignore[arg-type]
    listener.start()
    request.addfinalizer(listener.stop)
    return listener


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60)


@contextmanager
def scu(listener: DicomListener, *contexts: tuple[str, str]) -> Iterator[Association]:
    """A pynetdicom association to the listener with the given (SOP class, transfer syntax) contexts."""
    ae = AE("PYSCU")
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="MEDSIGHT")
    assert assoc.is_established
    try:
        yield assoc
    finally:
        assoc.release()


def test_storescu_series_is_stored_and_acknowledged(samples: Path, tmp_path: Path,
                                                    request: pytest.FixtureRequest) -> None:
    sink = Part10Sink(tmp_path / "store")
    stored: list[object] = []
    listener = start(ListenerSettings("MEDSIGHT", allowed=[AllowedPeer("STORESCU", "127.0.0.1"),
                                                           AllowedPeer("ECHOSCU")]), sink, request, stored)
    echo = run(tool("echoscu"), "-aec", "MEDSIGHT", "127.0.0.1", str(listener.port))
    assert echo.returncode == 0, echo.stderr
    folder = tmp_path / "in"
    folder.mkdir()
    for name in SAMPLES:
        shutil.copy(samples / name, folder / Path(name).name)
    # -R: propose only the files' SOP classes; -xv: JPEG 2000 lossless as well as the uncompressed syntaxes
    send = run(tool("storescu"), "-R", "-xv", "-aec", "MEDSIGHT", "+sd", "127.0.0.1", str(listener.port),
               str(folder))
    assert send.returncode == 0, send.stderr
    rle = folder / "rle.dcm"  # storescu proposes one compressed syntax per run: RLE goes on its own
    shutil.copy(samples / "pydicom_data/OBXXXX1A_rle.dcm", rle)
    send = run(tool("storescu"), "-R", "-xr", "-aec", "MEDSIGHT", "127.0.0.1", str(listener.port), str(rle))
    assert send.returncode == 0, send.stderr
    originals = {str(dcmread(p).SOPInstanceUID): dcmread(p) for p in folder.iterdir()}
    received = {p.stem: dcmread(p) for p in sink.root.glob("*.dcm")}
    assert set(received) == set(originals)
    for uid, original in originals.items():
        copy = received[uid]
        assert same_content(copy, original), uid  # every element, pixel data included
        if original.file_meta.TransferSyntaxUID.is_compressed:
            assert copy.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert sorted(map(str, stored)) == sorted(str(p) for p in sink.root.glob("*.dcm"))
    assert {c for c in sink.calls} == {("STORESCU", "127.0.0.1")}
    assert listener.stats.stored == len(SAMPLES) + 1 and listener.stats.failed == 0 and listener.stats.echoes == 1


def test_peers_not_on_the_allow_list_are_rejected(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    sink = Part10Sink(tmp_path / "store")
    listener = start(ListenerSettings("MEDSIGHT", allowed=[AllowedPeer("GOODAE", "127.0.0.1"),
                                                           AllowedPeer("FARAWAY", "10.20.30.0/24")]),
                     sink, request)
    port = str(listener.port)
    good = run(tool("echoscu"), "-aet", "GOODAE", "-aec", "MEDSIGHT", "127.0.0.1", port)
    assert good.returncode == 0, good.stderr
    for calling, called, reason in [("BADAE", "MEDSIGHT", "Calling AE Title Not Recognized"),
                                    ("FARAWAY", "MEDSIGHT", "Calling AE Title Not Recognized"),  # wrong address
                                    ("GOODAE", "OTHER", "Called AE Title Not Recognized")]:
        refused = run(tool("echoscu"), "-aet", calling, "-aec", called, "127.0.0.1", port)
        assert refused.returncode != 0
        assert "Rejected Permanent" in refused.stderr and reason in refused.stderr, refused.stderr
    assert listener.stats.rejected_associations == 3 and listener.stats.echoes == 1


def test_empty_allow_list_accepts_nobody_and_allow_any_everybody(tmp_path: Path,
                                                                 request: pytest.FixtureRequest) -> None:
    closed = start(ListenerSettings("MEDSIGHT"), Part10Sink(tmp_path / "a"), request)
    assert run(tool("echoscu"), "-aec", "MEDSIGHT", "127.0.0.1", str(closed.port)).returncode != 0
    open_ = start(ListenerSettings("MEDSIGHT", allow_any=True), Part10Sink(tmp_path / "b"), request)
    assert run(tool("echoscu"), "-aet", "ANYONE", "-aec", "MEDSIGHT", "127.0.0.1", str(open_.port)).returncode == 0


def test_malformed_instances_fail_while_the_rest_of_the_association_is_stored(
        samples: Path, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = Part10Sink(tmp_path / "store")
    listener = start(ListenerSettings("MEDSIGHT", allow_any=True), sink, request)
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(samples / "pydicom_test_files/CT_small.dcm", folder / "1.dcm")
    no_study = dcmread(samples / "pydicom_test_files/MR_small.dcm")
    del no_study.StudyInstanceUID
    no_study.save_as(folder / "2.dcm")
    shutil.copy(samples / "pydicom_data/693_UNCR.dcm", folder / "3.dcm")
    send = run(tool("storescu"), "-v", "-nh", "-R", "-aec", "MEDSIGHT", "+sd", "127.0.0.1", str(listener.port),
               str(folder))
    responses = [line for line in send.stderr.splitlines() if "Received Store Response" in line]
    assert len(responses) == 3 and sum("Success" in line for line in responses) == 2, send.stderr
    assert "Received Store Response (Error: CannotUnderstand)" in send.stderr, send.stderr  # 0xC000
    assert sorted(p.stem for p in sink.root.glob("*.dcm")) == sorted(
        str(dcmread(folder / n).SOPInstanceUID) for n in ("1.dcm", "3.dcm"))
    assert listener.stats.failed == 1

    # a truncated stream (dcmtk refuses to send a truncated file, so the raw bytes go through pynetdicom)
    whole = (samples / "pydicom_test_files/MR_small.dcm").read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(whole[:-3000])
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the file's bytes as they are
    explicit = "1.2.840.10008.1.2.1"
    with scu(listener, (CTImageStorage, explicit), (MRImageStorage, explicit)) as assoc:
        statuses = [assoc.send_c_store(p) for p in (truncated, samples / "pydicom_test_files/MR_small.dcm")]
    assert statuses[0].Status == STATUS_CANNOT_DECODE and "decode" in statuses[0].ErrorComment
    assert statuses[1].Status == 0x0000
    assert str(dcmread(samples / "pydicom_test_files/MR_small.dcm").SOPInstanceUID) in {
        p.stem for p in sink.root.glob("*.dcm")}
    assert listener.stats.failed == 2 and listener.stats.stored == 3


class FailingSink:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def store(self, dataset: Dataset, *, calling_ae: str, peer: str, encoded: bytes | None = None) -> object:
        raise self.error


@pytest.mark.parametrize(("error", "status", "comment"), [
    (OSError(errno.ENOSPC, "No space left on device", "/store/1CT1/x.dcm"), STATUS_OUT_OF_RESOURCES, "ENOSPC"),
    (MedsightError("not enough disk space to store the instance"), STATUS_OUT_OF_RESOURCES, "disk"),
    (MedsightError("instance has an invalid Series Instance UID"), STATUS_BAD_INSTANCE, "invalid Series"),
    (RuntimeError("bug while handling CompressedSamples^CT1"), STATUS_STORE_FAILED, "internal error"),
], ids=["oserror", "disk-full", "bad-instance", "bug"])
def test_sink_errors_become_failure_statuses_without_identifiers(
        samples: Path, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture, error: BaseException,
        status: int, comment: str) -> None:
    caplog.set_level(logging.DEBUG)
    listener = start(ListenerSettings("MEDSIGHT", allow_any=True), FailingSink(error), request)
    dataset = dcmread(samples / "pydicom_test_files/CT_small.dcm")
    with scu(listener, (CTImageStorage, "1.2.840.10008.1.2.1")) as assoc:
        result = assoc.send_c_store(dataset)
    assert result.Status == status
    assert comment in result.ErrorComment
    assert len(result.ErrorComment) <= 64
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"failed: 0x{status:04X}" in logged and "'PYSCU'" in logged and "CT Image Storage" in logged
    for identifier in CT_PATIENT:
        assert identifier not in logged and identifier not in result.ErrorComment


class BlockingSink(Part10Sink):
    """Holds every store until released, to see when the acknowledgement leaves."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.entered = threading.Event()
        self.release = threading.Event()

    def store(self, dataset: Dataset, *, calling_ae: str, peer: str, encoded: bytes | None = None) -> object:
        self.entered.set()
        assert self.release.wait(30)
        return super().store(dataset, calling_ae=calling_ae, peer=peer)


def test_acknowledgement_waits_for_the_sink(samples: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    sink = BlockingSink(tmp_path / "store")
    listener = start(ListenerSettings("MEDSIGHT", allow_any=True), sink, request)
    dataset = dcmread(samples / "pydicom_test_files/CT_small.dcm")
    statuses: list[Dataset] = []

    def send() -> None:
        with scu(listener, (CTImageStorage, "1.2.840.10008.1.2.1")) as assoc:
            statuses.append(assoc.send_c_store(dataset))

    sender = threading.Thread(target=send)
    sender.start()
    assert sink.entered.wait(30)
    sender.join(0.5)
    assert sender.is_alive() and not statuses  # the sink has not returned: no response yet
    assert not list(sink.root.glob("*.dcm"))
    sink.release.set()
    sender.join(30)
    assert [s.Status for s in statuses] == [0x0000]
    assert (sink.root / f"{dataset.SOPInstanceUID}.dcm").is_file()


def test_stop_ends_open_associations_and_frees_the_port(tmp_path: Path) -> None:
    listener = DicomListener(ListenerSettings("MEDSIGHT", allow_any=True), Part10Sink(tmp_path))
    listener.start()
    try:
        port = listener.port
        ae = AE("PYSCU")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="MEDSIGHT")
        assert assoc.is_established
    finally:
        listener.stop(grace_s=0.2)
    assoc.join(5)
    assert assoc.is_aborted and not assoc.is_established
    with pytest.raises(MedsightError, match="not running"):
        _ = listener.port
    again = DicomListener(ListenerSettings("MEDSIGHT", port=port, allow_any=True), Part10Sink(tmp_path))
    again.start()  # the port is free again
    again.stop()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ae_title": ""}, "not a valid AE title"),
    ({"ae_title": "A_TITLE_LONGER_THAN_16"}, "not a valid AE title"),
    ({"ae_title": "MEDSIGHT", "port": 70000}, "not in 0..65535"),
    ({"ae_title": "MEDSIGHT", "max_associations": 0}, "at least 1"),
    ({"ae_title": "MEDSIGHT", "dimse_timeout_s": 0}, "must be positive"),
    ({"ae_title": "MEDSIGHT", "sop_classes": ["not-a-uid"]}, "not a valid UID"),
    ({"ae_title": "MEDSIGHT", "transfer_syntaxes": []}, "accepts no transfer syntax"),
])
def test_bad_settings_are_clear_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(MedsightError, match=message):
        ListenerSettings(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(MedsightError, match="host is empty"):
        AllowedPeer("OK", " ")
    with pytest.raises(MedsightError, match="cannot be resolved"):
        DicomListener(ListenerSettings("MEDSIGHT", allowed=[AllowedPeer("OK", "no-such-host.invalid")]),
                      Part10Sink(Path("unused"))).start()


def test_an_occupied_port_is_a_clear_error(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    first = start(ListenerSettings("MEDSIGHT", allow_any=True), Part10Sink(tmp_path), request)
    second = DicomListener(ListenerSettings("MEDSIGHT", port=first.port, allow_any=True), Part10Sink(tmp_path))
    with pytest.raises(MedsightError, match=r"cannot listen on 127\.0\.0\.1"):
        second.start()


def test_a_stream_cut_anywhere_is_refused_and_a_whole_one_decodes(samples: Path) -> None:
    """One pass over the elements tells a whole stream from one cut in a value, in a header or after junk."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from medsight.serving.listener import decode_stream

    for name in ("pydicom_test_files/MR_small.dcm", "pydicom_test_files/CT_small.dcm", "pydicom_data/693_UNCR.dcm"):
        ds = dcmread(samples / name)
        ts = ds.file_meta.TransferSyntaxUID
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = ts.is_implicit_VR, ts.is_little_endian
        write_dataset(fp, ds)
        raw = fp.getvalue()
        whole = decode_stream(raw, ts.is_implicit_VR, ts.is_little_endian)
        assert whole.SOPInstanceUID == ds.SOPInstanceUID
        pixel = ds["PixelData"]
        header = 8 if ts.is_implicit_VR else 12
        cut_in_header = len(raw) - len(pixel.value) - header + 5 if not pixel.is_undefined_length else None
        for bad in (raw[:-3000], raw + b"\x08\x00\x10", raw[:cut_in_header] if cut_in_header else raw[:-7]):
            with pytest.raises(EOFError):
                decode_stream(bad, ts.is_implicit_VR, ts.is_little_endian)


def test_the_accept_loop_forces_no_full_collection(tmp_path: Path, request: pytest.FixtureRequest,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom's server ran ``gc.collect()`` every 60 accept-loop polls (every 12 s here): a pause of ~0.35 s with
    the GIL held once models are loaded, during which no instance is acknowledged. The loop must not force one."""
    import gc

    listener = start(ListenerSettings(ae_title="MEDSIGHT", allow_any=True), Part10Sink(tmp_path), request)
    server = listener._server
    assert server is not None
    full: list[object] = []
    real = gc.collect

    def collect(generation: int = 2) -> object:
        return full.append(generation) if generation == 2 else real(generation)

    monkeypatch.setattr(gc, "collect", collect)
    for _ in range(300):
        server.service_actions()
    assert full == []


class _CountingSocket:
    """A socket that counts the reads asked of it (a socketpair end underneath)."""

    def __init__(self, sock: Any) -> None:
        self.sock, self.calls = sock, 0

    def recv_into(self, view: memoryview, n: int = 0) -> int:
        self.calls += 1
        return int(self.sock.recv_into(view, n))

    def recv(self, n: int) -> bytes:
        self.calls += 1
        return bytes(self.sock.recv(n))


@pytest.mark.parametrize("close_early", [False, True])
def test_a_pdu_is_read_whole_in_few_calls_and_a_broken_connection_gives_a_short_read(close_early: bool) -> None:
    """The listener's socket returns exactly the bytes asked for (or what came before the peer closed), like
    pynetdicom's, in far fewer reads than its 4 kB steps (526 kB in 4 kB steps: ~130 calls per CT slice)."""
    import os
    import socket

    from medsight.serving.listener import _BulkReadSocket

    payload = os.urandom(600_000)
    sent = payload[:250_000] if close_early else payload
    ours, theirs = socket.socketpair()
    writer = threading.Thread(target=lambda: (theirs.sendall(sent), theirs.close()))
    writer.start()
    try:
        sock = _BulkReadSocket.__new__(_BulkReadSocket)  # only the read path, no association around it
        counting = _CountingSocket(ours)
        sock.socket = counting  # type: ignore[assignment]
        got = sock.recv(len(payload))
        writer.join(10)
        assert bytes(got) == sent
        assert isinstance(got, bytearray)
        assert counting.calls < len(payload) // 4096  # pynetdicom's own needs at least 147 here
    finally:
        ours.close()


def test_a_peer_announcing_a_huge_pdu_cannot_make_the_listener_allocate_it() -> None:
    """A PDU header says how long the PDU is (up to 4 GiB), before the association is even accepted: the read must
    grow with what arrives, not allocate what a peer announces (a 6-byte header would otherwise cost 4 GiB)."""
    import socket
    import tracemalloc

    from medsight.serving.listener import _BulkReadSocket

    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(b"0123456789")
        theirs.close()
        sock = _BulkReadSocket.__new__(_BulkReadSocket)
        sock.socket = ours  # type: ignore[assignment]
        tracemalloc.start()
        got = sock.recv(2**32 - 1)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert bytes(got) == b"0123456789"  # the short read of a broken connection
        assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB allocated for 10 bytes received"
    finally:
        ours.close()
