"""The DICOM listener: a C-ECHO and C-STORE SCP (pynetdicom) that says "stored" only once the sink has stored it.

Why this shape: a PACS deletes or forgets what it pushed once it gets status 0x0000, so the acknowledgement must
follow the durable write (the sink fsyncs and records the instance before `store` returns). Peers are checked
against an allow-list of (calling AE title, address) before any data is accepted, and every log line names AE
titles, the peer address, the SOP class, the status and counts, never a patient identifier.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import queue
import re
import socket
import socketserver
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, build_context, evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from medsight.errors import DuplicateInstance, MedsightError, StorageUnavailable
from medsight.io.dicom import walk_to_end

LOG = logging.getLogger(__name__)

#: every storage SOP class pynetdicom knows (images, SR, SEG, RT, ...), the listener's default
STORAGE_SOP_CLASSES: tuple[str, ...] = tuple(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)
#: uncompressed, deflate, JPEG, JPEG-LS, JPEG 2000, RLE, ...: the listener accepts what the sender proposes
TRANSFER_SYNTAXES: tuple[str, ...] = tuple(ALL_TRANSFER_SYNTAXES)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # the sink could not write (disk full, I/O error): the sender may retry later
STATUS_SOP_CLASS_MISMATCH = 0xA900  # the data set's SOP Class UID is not the one the request names
STATUS_BAD_INSTANCE = 0xC000  # a required UID missing or inconsistent, or the sink refused the instance
STATUS_STORE_FAILED = 0xC001  # the sink failed unexpectedly
STATUS_DUPLICATE_INSTANCE = 0x0111  # PS3.7 C.4: the SOP Instance UID is already stored for other data
STATUS_PENDING = 0xFF00
STATUS_FIND_CANCEL = 0xFE00
STATUS_FIND_UNABLE = 0xC000  # unable to process (C-FIND)
STATUS_FIND_UNSUPPORTED = 0xA900  # identifier does not match SOP class
STATUS_CANNOT_DECODE = 0xC210  # the data set cannot be decoded in the negotiated transfer syntax

REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE VR: 16 printable chars, no backslash
_REJECT_PERMANENT, _SOURCE_SERVICE_USER = 0x01, 0x01
_REASON_CALLING_AE, _REASON_CALLED_AE = 0x03, 0x07


class InstanceSink(Protocol):
    """Stores one received instance durably (file fsynced and recorded) before returning.

    Raises MedsightError for an instance it refuses, OSError (or a MedsightError that mentions the disk) when it
    cannot write; the listener turns these into DIMSE failure statuses. ``encoded`` is the data set as received
    (its file meta's transfer syntax, no file meta; None when pynetdicom spooled it): a sink may write it as is.
    """

    def store(self, dataset: Dataset, *, calling_ae: str, peer: str, encoded: bytes | None = None) -> object: ...


def check_ae_title(title: str, what: str) -> str:
    """The title without padding; MedsightError naming `what` when it is not a valid DICOM AE title."""
    stripped = title.strip()
    if not _AE_TITLE.match(title) or not stripped:
        raise MedsightError(f"{what} {title!r} is not a valid AE title (1-16 printable characters, no backslash)")
    return stripped


@dataclass(frozen=True)
class AllowedPeer:
    """A calling AE title allowed to send, optionally only from one address or network (None: from anywhere).

    `host` is an IP address, a network in CIDR notation ("10.0.0.0/24") or a host name (resolved at start).
    """

    ae_title: str
    host: str | None = None

    def __post_init__(self) -> None:
        check_ae_title(self.ae_title, "allowed calling AE title")
        if self.host is not None and not self.host.strip():
            raise MedsightError(f"allowed peer {self.ae_title!r}: host is empty (leave it out to allow any address)")


@dataclass
class ListenerSettings:
    """Where the listener listens, whom it accepts and what it stores; checked when made."""

    ae_title: str
    host: str = "127.0.0.1"
    port: int = 0  # 0: the system picks a free port (read it back from DicomListener.port)
    allowed: list[AllowedPeer] = field(default_factory=list)  # empty: nobody, unless allow_any
    allow_any: bool = False  # accept every calling AE title and address (the default config, on 127.0.0.1 only)
    sop_classes: list[str] = field(default_factory=lambda: list(STORAGE_SOP_CLASSES))
    transfer_syntaxes: list[str] = field(default_factory=lambda: list(TRANSFER_SYNTAXES))
    max_associations: int = 10
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    max_pdu_size: int = 0  # the largest PDU we ask peers to send; 0 = unlimited (fewer, larger reads: faster)

    def __post_init__(self) -> None:
        self.ae_title = check_ae_title(self.ae_title, "listener AE title")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise MedsightError(f"listener port {self.port!r} is not in 0..65535")
        if self.max_associations < 1:
            raise MedsightError(f"max_associations must be at least 1 (got {self.max_associations})")
        for name in ("acse_timeout_s", "dimse_timeout_s", "network_timeout_s"):
            if not getattr(self, name) > 0:
                raise MedsightError(f"listener {name} must be positive (got {getattr(self, name)!r})")
        if self.max_pdu_size != 0 and self.max_pdu_size < 4096:
            raise MedsightError(f"max_pdu_size must be 0 (unlimited) or at least 4096 (got {self.max_pdu_size})")
        for uid in [*self.sop_classes, *self.transfer_syntaxes]:
            if not isinstance(uid, str) or len(uid) > 64 or not _UID.fullmatch(uid):
                raise MedsightError(f"listener setting names {uid!r}, which is not a valid UID")
        if not self.sop_classes:
            raise MedsightError("the listener accepts no storage SOP class (sop_classes is empty)")
        if not self.transfer_syntaxes:
            raise MedsightError("the listener accepts no transfer syntax (transfer_syntaxes is empty)")
        if len(self.sop_classes) > 255:
            raise MedsightError(f"{len(self.sop_classes)} SOP classes: a listener supports at most 255")


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _normalise_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _networks(host: str) -> list[Network]:
    """The networks a configured host stands for: itself when an address or CIDR, else its resolved addresses."""
    try:
        return [ipaddress.ip_network(host, strict=False)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise MedsightError(f"allowed peer host {host!r} cannot be resolved ({exc.strerror or exc})") from exc
    return [ipaddress.ip_network(str(info[4][0]).split("%", 1)[0]) for info in infos]


class _Policy:
    """Who may associate: the allow-list with host names resolved once, when the listener starts."""

    def __init__(self, settings: ListenerSettings) -> None:
        self.ae_title = settings.ae_title
        self.allow_any = settings.allow_any
        self.peers: list[tuple[str, list[Network] | None]] = [
            (p.ae_title.strip(), None if p.host is None else _networks(p.host.strip())) for p in settings.allowed
        ]

    def refusal(self, calling_ae: str, called_ae: str, address: str) -> tuple[int, str] | None:
        """None when the association may proceed, else (A-ASSOCIATE-RJ reason, why) for the log."""
        if called_ae != self.ae_title:
            return _REASON_CALLED_AE, f"called AE title {called_ae!r} is not this listener's ({self.ae_title!r})"
        if self.allow_any:
            return None
        ip = _normalise_address(address)
        for title, networks in self.peers:
            if title != calling_ae:
                continue
            if networks is None or (ip is not None and any(ip in n for n in networks)):
                return None
        return _REASON_CALLING_AE, "calling AE title and address are not on the allow-list"


class _AllowListACSE(ACSE):
    """ACSE that rejects a peer not on the allow-list before any presentation context is negotiated."""

    def __init__(self, assoc: Association, policy: _Policy, stats: ListenerStats) -> None:
        super().__init__(assoc)
        self._policy = policy
        self._stats = stats

    def negotiate_association(self) -> None:
        if self.assoc.is_acceptor and self.requestor.primitive is not None:
            request = self.requestor.primitive
            calling = str(request.calling_ae_title or "").strip()
            called = str(request.called_ae_title or "").strip()
            address = str(self.assoc.requestor.address)
            refusal = self._policy.refusal(calling, called, address)
            if refusal is not None:
                reason, why = refusal
                self._stats.count(rejected_associations=1)
                LOG.warning(
                    "association rejected (permanent): calling AE %r from %s to %r: %s", calling, address, called, why
                )
                self.send_reject(_REJECT_PERMANENT, _SOURCE_SERVICE_USER, reason)
                evt.trigger(self.assoc, evt.EVT_REJECTED, {})
                self.assoc.kill()
                return
        super().negotiate_association()


#: How often the connection thread of an association polls its socket and outgoing queue when idle (pynetdicom's
#: default is 1 ms). With 1 ms, each C-STORE waits on average about half a poll on receipt and again on the response,
#: a large share of a CT slice's acknowledgement over loopback (benchmarks/serve.py). 0.2 ms costs ~5,000 wake-ups/s
#: on an open association, which the network timeout bounds.
CONNECTION_POLL_S = 0.0002
#: How long the association thread waits for the next DIMSE message before it runs its other checks (release,
#: abort, timeouts): a bound on how late a release or an abort is noticed, not a delay on any message.
MESSAGE_WAIT_S = 0.005


class _MessageCheckpoint(threading.Event):
    """The association reactor's pause checkpoint, which also wakes it when a DIMSE message is ready.

    Why: pynetdicom's acceptor loop sleeps 1 ms, passes this checkpoint, then polls for a decoded message, so a
    complete C-STORE waits on average half a millisecond before its handler runs. Waiting here on the message queue
    (bounded by ``MESSAGE_WAIT_S``) lets the handler start as soon as the message is decoded, and the fixed sleep
    overlaps the peer sending the next instance. Pausing (``clear``) works as before.
    """

    def __init__(self, messages: queue.Queue[Any]) -> None:
        super().__init__()
        self._messages = messages
        self.set()

    def wait(self, timeout: float | None = None) -> bool:
        if not super().wait(timeout):
            return False
        with self._messages.not_empty:
            if not self._messages.queue:
                self._messages.not_empty.wait(MESSAGE_WAIT_S)
        return True


#: The most a PDU read allocates before data arrives; it then doubles, never past what arrived and the PDU's length.
FIRST_READ_BYTES = 1 << 20


class _BulkReadSocket(AssociationSocket):
    """pynetdicom's association socket, reading a PDU in as few system calls as the kernel allows. pynetdicom's own
    ``recv`` asks for 4 kB at a time and appends each piece to a growing bytearray: about 130 calls and copies for one
    526 kB CT slice (526 kB in 4 kB steps)."""

    def recv(self, nr_bytes: int) -> bytearray:
        """Exactly ``nr_bytes`` from the socket, or what arrived before the peer closed it (pynetdicom's contract:
        a short read means the connection broke). The buffer grows with what arrives: a PDU header can announce up to
        4 GiB before the association is even accepted, and a peer must not make us allocate that by saying it."""
        assert self.socket is not None
        buffer = bytearray(min(nr_bytes, FIRST_READ_BYTES))
        got = 0
        while got < nr_bytes:
            if got == len(buffer):
                buffer.extend(bytes(min(nr_bytes - got, len(buffer))))
            with memoryview(buffer) as view:
                n = self.socket.recv_into(view[got:])
            if n == 0:
                break
            got += n
        del buffer[got:]
        return buffer


class _RequestHandler(RequestHandler):
    """pynetdicom's per-connection handler, with the allow-list ACSE swapped in before the association runs, and
    message hand-offs that do not wait for a polling tick (see ``_MessageCheckpoint``, ``CONNECTION_POLL_S``)."""

    server: _Server

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        assoc.dul.socket.__class__ = _BulkReadSocket  # same state, a faster recv (no attribute of its own)
        assoc.acse = _AllowListACSE(assoc, self.server.policy, self.server.stats)
        assoc.dul._run_loop_delay = CONNECTION_POLL_S
        assoc._reactor_checkpoint = _MessageCheckpoint(assoc.dimse.msg_queue)
        return assoc


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server carrying the policy; shut down on its own (it is not in the AE's list)."""

    def __init__(self, *args: Any, policy: _Policy, stats: ListenerStats, **kwargs: Any) -> None:
        self.policy = policy
        self.stats = stats
        kwargs["request_handler"] = _RequestHandler
        super().__init__(*args, **kwargs)

    def service_actions(self) -> None:
        """No forced collection. pynetdicom's runs ``gc.collect()`` every 60 accept-loop polls (every 12 s at our
        0.2 s poll): with torch and a model loaded that held the GIL about 0.35 s (benchmarks/gc_pause.py), stalling
        every association and HTTP request. Dead associations' reference cycles are left to Python's own collector
        (the service freezes its start-up objects out of it, so its full passes are short:
        ``service.freeze_start_up_objects``)."""

    def shutdown(self) -> None:
        socketserver.BaseServer.shutdown(self)  # pynetdicom's own also removes it from AE._servers
        self.server_close()


@dataclass
class ListenerStats:
    """Counters since start (for /metrics and the logs); updated under a lock from the association threads."""

    stored: int = 0
    failed: int = 0
    echoes: int = 0
    associations: int = 0
    rejected_associations: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, **increments: int) -> None:
        with self._lock:
            for name, n in increments.items():
                setattr(self, name, getattr(self, name) + n)


@dataclass
class _AssociationCounts:
    calling_ae: str
    peer: str
    stored: int = 0
    failed: int = 0


def _status(code: int, comment: str | None = None) -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment.encode("ascii", "replace").decode("ascii")[:64]
    return status


def _is_disk_problem(exc: BaseException) -> bool:
    if isinstance(exc, OSError | StorageUnavailable):
        return True
    if isinstance(exc, DuplicateInstance):
        return False
    text = str(exc).lower()
    return any(word in text for word in ("disk", "no space", "quota", "storage full"))


class DicomListener:
    """C-ECHO and C-STORE SCP: `start()` returns at once; `stop()` stops accepting and ends open associations.

    `on_stored` is called with whatever `sink.store` returned, after the instance was acknowledged as stored (for
    the study-completeness tracker); an exception there is logged and does not change the status sent.
    """

    def __init__(
        self,
        settings: ListenerSettings,
        sink: InstanceSink,
        *,
        on_stored: Callable[[object], None] | None = None,
        finder: Callable[[Dataset, str], Iterable[Dataset]] | None = None,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.on_stored = on_stored
        #: C-FIND (Study Root and Patient Root): ``finder(identifier, calling_ae)`` yields the matches.
        self.finder = finder
        self.stats = ListenerStats()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._open: dict[int, _AssociationCounts] = {}
        self._lock = threading.Lock()

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind and serve in a background thread; raises MedsightError when the address cannot be bound."""
        if self._server is not None:
            raise MedsightError("the DICOM listener is already running")
        s = self.settings
        policy = _Policy(s)
        ip = _normalise_address(s.host)
        if s.allow_any and s.host != "localhost" and not (ip is not None and ip.is_loopback):
            LOG.warning(
                "DICOM listener accepts any calling AE title on %s (allow_any on a non-loopback address)", s.host
            )
        ae = AE(ae_title=s.ae_title)
        ae.maximum_associations = s.max_associations
        ae.acse_timeout = s.acse_timeout_s
        ae.dimse_timeout = s.dimse_timeout_s
        ae.network_timeout = s.network_timeout_s
        ae.maximum_pdu_size = s.max_pdu_size
        contexts = [build_context(uid, list(s.transfer_syntaxes)) for uid in s.sop_classes]
        if self.finder is not None:
            contexts += [
                build_context(StudyRootQueryRetrieveInformationModelFind),
                build_context(PatientRootQueryRetrieveInformationModelFind),
            ]
        contexts.append(build_context(Verification))
        handlers: list[evt.EventHandlerType] = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]
        try:
            server = ae.make_server(
                (s.host, s.port),
                contexts=contexts,
                evt_handlers=handlers,
                server_class=_Server,
                policy=policy,
                stats=self.stats,
            )
        except OSError as exc:
            raise MedsightError(f"DICOM listener cannot listen on {s.host}:{s.port}: {exc.strerror or exc}") from exc
        assert isinstance(server, _Server)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=f"dicom-listener-{s.ae_title}", daemon=True
        )
        self._thread.start()
        LOG.info(
            "DICOM listener %r on %s:%d (%d storage SOP classes, %d allowed peers%s)",
            s.ae_title,
            s.host,
            self.port,
            len(s.sop_classes),
            len(s.allowed),
            ", any AE accepted" if s.allow_any else "",
        )

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting; let open associations finish for up to `grace_s`, then abort them."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        deadline = time.monotonic() + grace_s
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in server.active_associations:
            assoc.abort()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        LOG.info(
            "DICOM listener %r stopped (%d stored, %d failed, %d associations, %d rejected)",
            self.settings.ae_title,
            self.stats.stored,
            self.stats.failed,
            self.stats.associations,
            self.stats.rejected_associations,
        )

    def __enter__(self) -> DicomListener:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (the one the system picked when settings.port is 0)."""
        if self._server is None:
            raise MedsightError("the DICOM listener is not running")
        return int(self._server.server_address[1])

    # ---- event handlers (run in each association's thread) ---------------------------------------------------
    def _counts(self, assoc: Association) -> _AssociationCounts:
        with self._lock:
            counts = self._open.get(id(assoc))
            if counts is None:
                counts = _AssociationCounts(str(assoc.requestor.ae_title).strip(), str(assoc.requestor.address))
                self._open[id(assoc)] = counts
            return counts

    def _on_established(self, event: evt.Event) -> None:
        counts = self._counts(event.assoc)
        self.stats.count(associations=1)
        LOG.info("association accepted: calling AE %r from %s", counts.calling_ae, counts.peer)

    def _on_closed(self, event: evt.Event) -> None:
        with self._lock:
            counts = self._open.pop(id(event.assoc), None)
        if counts is not None:
            how = "aborted" if event.assoc.is_aborted else "released"
            LOG.info(
                "association %s: calling AE %r from %s, %d stored, %d failed",
                how,
                counts.calling_ae,
                counts.peer,
                counts.stored,
                counts.failed,
            )

    def _on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        """C-FIND: one pending response per match; failures name the problem, never patient data."""
        if self.finder is None:
            yield STATUS_FIND_UNSUPPORTED, None
            return
        try:
            identifier = event.identifier
            matches = self.finder(identifier, str(event.assoc.requestor.ae_title).strip())
            for match in matches:
                if event.is_cancelled:
                    yield STATUS_FIND_CANCEL, None
                    return
                yield STATUS_PENDING, match
        except MedsightError as exc:
            LOG.info("C-FIND refused: %s", exc)
            failure = Dataset()
            failure.ErrorComment = str(exc)[:64]
            yield STATUS_FIND_UNABLE, failure
            return
        except Exception as exc:  # any other failure: the SCU gets a status, the log the exception type only
            LOG.error("C-FIND failed (%s)", type(exc).__name__)
            yield STATUS_FIND_UNABLE, None
            return
        yield STATUS_SUCCESS, None

    def _on_echo(self, event: evt.Event) -> int:
        self.stats.count(echoes=1)
        LOG.debug("C-ECHO from %r at %s", str(event.assoc.requestor.ae_title).strip(), event.assoc.requestor.address)
        return STATUS_SUCCESS

    def _on_store(self, event: evt.Event) -> Dataset | int:
        counts = self._counts(event.assoc)
        request = event.request
        sop_class = str(getattr(request, "AffectedSOPClassUID", "") or "")
        status = self._store(event, counts, sop_class, str(getattr(request, "AffectedSOPInstanceUID", "") or ""))
        code = status if isinstance(status, int) else int(status.Status)
        if code == STATUS_SUCCESS:
            counts.stored += 1
            self.stats.count(stored=1)
            LOG.debug("C-STORE %s from %r at %s: 0x%04X", UID(sop_class).name, counts.calling_ae, counts.peer, code)
        else:
            counts.failed += 1
            self.stats.count(failed=1)
            comment = "" if isinstance(status, int) else str(status.get("ErrorComment", ""))
            LOG.warning(
                "C-STORE %s from %r at %s failed: 0x%04X %s (association: %d stored, %d failed)",
                UID(sop_class).name,
                counts.calling_ae,
                counts.peer,
                code,
                comment,
                counts.stored,
                counts.failed,
            )
        return status

    def _store(self, event: evt.Event, counts: _AssociationCounts, sop_class: str, sop_instance: str) -> Dataset | int:
        """Decode, check the UIDs, hand to the sink; the status to send back."""
        try:
            dataset, encoded = _decode(event)
            values = {k: str(dataset.get(k, "") or "").strip() for k in REQUIRED_UIDS}
        except Exception as exc:  # pydicom raises many kinds on a corrupt stream; none may reach the peer as 0xC211
            LOG.debug("cannot decode data set: %s", type(exc).__name__)
            return _status(STATUS_CANNOT_DECODE, "cannot decode the data set")
        missing = [k for k, v in values.items() if not v]
        if missing:
            return _status(STATUS_BAD_INSTANCE, "missing " + ", ".join(missing))
        if sop_class and values["SOPClassUID"] != sop_class:
            return _status(STATUS_SOP_CLASS_MISMATCH, "SOP Class UID differs from the C-STORE request")
        if sop_instance and values["SOPInstanceUID"] != sop_instance:
            return _status(STATUS_BAD_INSTANCE, "SOP Instance UID differs from the C-STORE request")
        try:
            stored = self.sink.store(dataset, calling_ae=counts.calling_ae, peer=counts.peer, encoded=encoded)
        except MedsightError as exc:
            if _is_disk_problem(exc):
                LOG.error("cannot store instance (out of resources): %s", exc.problem)
                return _status(STATUS_OUT_OF_RESOURCES, "cannot store the instance: out of disk space")
            if isinstance(exc, DuplicateInstance):
                LOG.warning("C-STORE refused: %s", exc.problem)
                return _status(STATUS_DUPLICATE_INSTANCE, "SOP Instance UID already stored in another study")
            return _status(STATUS_BAD_INSTANCE, exc.problem)
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            LOG.error("cannot store instance (out of resources): %s", name)
            return _status(STATUS_OUT_OF_RESOURCES, f"cannot store the instance ({name})")
        except Exception as exc:  # a bug in the sink must not take the association down; the peer may retry
            LOG.error("storing an instance failed unexpectedly: %s", type(exc).__name__)
            return _status(STATUS_STORE_FAILED, "internal error while storing the instance")
        if self.on_stored is not None:
            try:
                self.on_stored(stored)
            except Exception as exc:  # stored durably already: the acknowledgement stands
                LOG.error("on_stored callback failed: %s", type(exc).__name__)
        return STATUS_SUCCESS


def _decode(event: evt.Event) -> tuple[Dataset, bytes | None]:
    """The C-STORE data set, refusing a truncated stream (pydicom alone would quietly cut the last value short),
    and the stream exactly as received (None when pynetdicom spooled it to a file), so the sink can store it
    without re-encoding."""
    stream = getattr(event.request, "DataSet", None)
    received: bytes | None = None
    if not isinstance(stream, BytesIO):  # received chunked to a file (STORE_RECV_CHUNKED_DATASET): pynetdicom reads
        dataset = event.dataset
    else:
        syntax = UID(event.context.transfer_syntax)
        raw = received = stream.getvalue()
        if syntax.is_deflated:
            raw = zlib.decompress(raw, -zlib.MAX_WBITS)
        dataset = decode_stream(raw, syntax.is_implicit_VR, syntax.is_little_endian)
    dataset.file_meta = event.file_meta
    return dataset, received


def decode_stream(raw: bytes, implicit_vr: bool, little_endian: bool) -> Dataset:
    """A received data set (no file meta) decoded; EOFError when the stream was cut short anywhere."""
    dataset = read_dataset(BytesIO(raw), implicit_vr, little_endian)
    if not _read_whole(dataset, len(raw)):
        walk_to_end(BytesIO(raw), implicit_vr, little_endian, len(raw))
    return dataset


def _read_whole(dataset: Dataset, size: int) -> bool:
    """True when ``dataset`` (just read from ``size`` bytes) is whole: every value as long as its header said and
    the last element ending exactly at the end of the stream. False when that cannot be told from the elements
    (the last one is a sequence or has an undefined length): then the stream is walked again. Raises EOFError
    for a value cut short (pydicom alone would quietly keep the shorter value).

    One pass instead of two: walking every element a second time cost a tenth of an instance's receive time.
    """
    last: Any = None
    elem: Any
    for elem in dataset._dict.values():
        if not elem.is_raw:
            last = elem
            continue
        value, length = elem.value, elem.length
        if isinstance(value, bytes) and length != 0xFFFFFFFF and len(value) < length:
            raise EOFError("data set truncated")
        last = elem
    if last is None or not last.is_raw or last.length == 0xFFFFFFFF or last.value is None:
        return False
    if last.value_tell + last.length != size:
        raise EOFError("data set truncated")
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port free at the time of asking (for tests and tools that need to know it before starting a peer)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


__all__ = [
    "STORAGE_SOP_CLASSES",
    "TRANSFER_SYNTAXES",
    "AllowedPeer",
    "DicomListener",
    "InstanceSink",
    "ListenerSettings",
    "ListenerStats",
    "check_ae_title",
    "free_port",
]
