"""The service's HTTP API: DICOMweb (STOW-RS, QIDO-RS, WADO-RS) over the study store, plus operations.

``create_app(store, users, audit)`` returns a FastAPI app; the service runs it under uvicorn (with TLS when a
certificate is configured: nothing here assumes ``http``, every URL it returns is built from the request).

Routes (PS3.18 where DICOMweb; every ``/dicomweb`` and ``/api`` route needs a bearer token):

- ``POST /dicomweb/studies[/{study}]`` STOW-RS, admin: ``multipart/related; type="application/dicom"``; the
  PS3.18 store response (200 all stored, 202 some failed, 409 none stored, 415 another media type).
- ``GET /dicomweb/studies``, ``/studies/{study}/series``, ``/studies/{study}/series/{series}/instances``
  QIDO-RS, viewer: ``application/dicom+json`` with the attributes of PS3.18 Table 6.7.1-2/-2a/-2b.
- ``GET /dicomweb/studies/{study}[/series/{series}[/instances/{sop}]]`` WADO-RS, viewer: the instances as
  stored, ``multipart/related; type="application/dicom"``; ``.../metadata``: DICOM JSON without bulk data;
  ``.../instances/{sop}/rendered`` and ``.../frames/{n}/rendered``: a PNG after the Modality and VOI LUTs;
  ``.../instances/{sop}/frames/{list}``: the raw frames (``1,3,5``), ``multipart/related;
  type="application/octet-stream"``, one part per frame: as stored when the Accept header allows
  ``transfer-syntax=*`` (what browser viewers such as Cornerstone3D ask for), else Explicit VR Little Endian.
- ``GET /workstation/`` (no token: static files holding no patient data; the page logs in to get one): the
  review workstation built from ``web/workstation`` by ``make web``; a 404 page saying so when it is not built.
- ``POST /api/studies/{study}/complete`` admin: the study is complete now (``on_complete``).
- ``GET /healthz`` (no token; no patient data) and ``GET /metrics`` (Prometheus text). ``/metrics`` needs no
  token either: it holds counts and latencies only, and scrapers rarely carry tokens; the service listens on
  127.0.0.1 by default, and a site that exposes it should restrict the path at its proxy or firewall.

Every access to patient data (and every refused attempt) is appended to the :class:`AuditLog`; the QIDO
record holds the matched keys' names and the study UIDs returned, never the values searched for.
"""

# No ``from __future__ import annotations``: FastAPI must evaluate the route signatures, which name the
# dependencies built inside create_app.

import io
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Protocol

import numpy as np
import pydicom
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medsight.errors import DuplicateInstance, MedsightError, StorageUnavailable
from medsight.io.dicom import check_part10_complete
from medsight.serving.audit import AuditLog
from medsight.serving.security import Authorizer, Principal, UserDirectory

DICOM_JSON = "application/dicom+json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_LIMIT = 100
#: The largest STOW-RS body taken by default (bytes; ``[service] max_stow_mb``): the body is held in memory while
#: its parts are split and stored, so one request must not be able to take all of it.
DEFAULT_MAX_STOW_BYTES = 2048 * 1_000_000
MAX_LIMIT = 1000
#: Binary values longer than this are left out of ``/metadata`` (PS3.18 lets an origin server omit bulk data).
BULK_THRESHOLD = 1024
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}

# PS3.18 Table 6.7.1-2b: instance attributes read from the header (study and series ones come from the store).
INSTANCE_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "TimezoneOffsetFromUTC",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
)

#: QIDO-RS matching keys per level.
STUDY_KEYS = ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "AccessionNumber", "ModalitiesInStudy")
SERIES_KEYS = ("SeriesInstanceUID", "Modality", "SeriesNumber")
INSTANCE_KEYS = ("SOPInstanceUID", "SOPClassUID", "InstanceNumber")
_CONTROL_KEYS = ("limit", "offset", "includefield", "fuzzymatching")

# PS3.4 Annex GG / PS3.18 failure reasons.
FAILURE_PROCESSING = 0x0110
FAILURE_DUPLICATE = 0x0111  # PS3.7 C.4 Duplicate SOP Instance: the UID is stored for another study
FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_MISMATCH = 0xA900
FAILURE_CANNOT_UNDERSTAND = 0xC000


class StudyRow(Protocol):
    """A study as the store lists it (:class:`medsight.serving.store.StudyRecord`)."""

    @property
    def study_uid(self) -> str: ...
    @property
    def patient_id(self) -> str | None: ...
    @property
    def patient_name(self) -> str | None: ...
    @property
    def patient_birth_date(self) -> str | None: ...
    @property
    def patient_sex(self) -> str | None: ...
    @property
    def accession_number(self) -> str | None: ...
    @property
    def study_date(self) -> str | None: ...
    @property
    def study_time(self) -> str | None: ...
    @property
    def study_description(self) -> str | None: ...
    @property
    def referring_physician(self) -> str | None: ...
    @property
    def modalities(self) -> tuple[str, ...]: ...
    @property
    def n_series(self) -> int: ...
    @property
    def n_instances(self) -> int: ...


class SeriesRow(Protocol):
    """A series as the store lists it (:class:`medsight.serving.store.SeriesRecord`)."""

    @property
    def series_uid(self) -> str: ...
    @property
    def modality(self) -> str | None: ...
    @property
    def series_description(self) -> str | None: ...
    @property
    def series_number(self) -> int | None: ...
    @property
    def n_instances(self) -> int: ...


class InstanceRow(Protocol):
    """An instance as the store lists it (:class:`medsight.serving.store.InstanceRecord`)."""

    @property
    def series_uid(self) -> str: ...
    @property
    def sop_uid(self) -> str: ...
    @property
    def sop_class_uid(self) -> str: ...
    @property
    def instance_number(self) -> int | None: ...
    @property
    def path(self) -> Path: ...


class StoreLike(Protocol):
    """What the API needs from :class:`medsight.serving.store.StudyStore`."""

    def store(self, dataset: Dataset, *, calling_ae: str, peer: str) -> Any: ...

    def study(self, study_uid: str) -> StudyRow | None: ...

    def studies(self, *, limit: int | None = None, offset: int = 0, **filters: Any) -> Sequence[StudyRow]: ...

    def series(self, study_uid: str) -> Sequence[SeriesRow]: ...

    def instances(self, study_uid: str, series_uid: str | None = None) -> Sequence[InstanceRow]: ...

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path | None: ...


# ---- multipart ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaType:
    """A parsed Content-Type / Accept item: ``type/subtype`` and lower-cased parameters."""

    type: str
    params: dict[str, str]


def parse_media_type(value: str) -> MediaType:
    """``multipart/related; type="application/dicom"; boundary=x`` -> type and parameters."""
    head, *rest = value.split(";")
    params: dict[str, str] = {}
    for item in rest:
        key, eq, val = item.strip().partition("=")
        if eq:
            params[key.strip().lower()] = val.strip().strip('"')
    return MediaType(head.strip().lower(), params)


def split_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a ``multipart/related`` body (RFC 2046): each part's headers and exact bytes."""
    delimiter = b"--" + boundary.encode("latin-1")
    pieces = body.split(b"\r\n" + delimiter)
    first = pieces[0]
    if first.startswith(delimiter):
        pieces[0] = first[len(delimiter) :]
    else:  # a preamble before the first delimiter
        found = first.find(delimiter)
        if found < 0 and len(pieces) == 1:
            raise ValueError("the body holds no part with the declared boundary")
        pieces = pieces[1:] if found < 0 else [first[found + len(delimiter) :], *pieces[1:]]
    parts = []
    for piece in pieces:
        if piece.startswith(b"--"):
            break  # the close delimiter
        piece = piece.lstrip(b" \t")
        if not piece.startswith(b"\r\n"):
            raise ValueError("malformed part delimiter")
        header_blob, sep, content = piece[2:].partition(b"\r\n\r\n")
        if not sep:
            if header_blob.startswith(b"\r\n"):  # no headers at all
                header_blob, content = b"", header_blob[2:]
            else:
                raise ValueError("a part has no blank line after its headers")
        headers = {}
        for line in header_blob.decode("latin-1").split("\r\n"):
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        parts.append((headers, content))
    return parts


def _multipart_stream(paths: Sequence[Path], boundary: str) -> Iterator[bytes]:
    for path in paths:
        try:
            syntax = str(pydicom.filereader.read_file_meta_info(path).TransferSyntaxUID)
        except (OSError, InvalidDicomError, AttributeError):
            syntax = ""
        content_type = "application/dicom" + (f"; transfer-syntax={syntax}" if syntax else "")
        yield f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode("ascii")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


def _accepts(request: Request, *wanted: str) -> bool:
    """Whether the Accept header allows one of ``wanted`` (``*/*`` and ``type/*`` count; no header allows all)."""
    header = request.headers.get("accept", "")
    if not header.strip():
        return True
    for item in header.split(","):
        media = parse_media_type(item)
        if media.params.get("q") in ("0", "0.0", "0.00", "0.000"):
            continue
        for w in wanted:
            if media.type in ("*/*", w, w.split("/")[0] + "/*"):
                if w == "multipart/related" and media.type == w:
                    inner = media.params.get("type", "application/dicom")
                    if inner not in ("application/dicom", "*/*", "application/*"):
                        continue
                return True
    return False


# ---- DICOM JSON -----------------------------------------------------------------------------------------------


def _keyword(key: str) -> str:
    """A QIDO key (keyword or 8-hex-digit tag) as its keyword; ``ValueError`` when it names no attribute."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        word = keyword_for_tag(int(key, 16))
        if not word:
            raise ValueError(f"unknown attribute tag {key}")
        return word
    if tag_for_keyword(key) is None:
        raise ValueError(f"unknown attribute {key!r}")
    return key


def _select(ds: Dataset, keywords: Sequence[str]) -> Dataset:
    out = Dataset()
    for word in keywords:
        if word in ds:
            out[word] = ds[word]
    return out


def _json(ds: Dataset) -> dict[str, Any]:
    return ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD)


def _without_bulk(ds: Dataset) -> Dataset:
    """``ds`` with long binary values removed (pixel data is not read in the first place)."""

    def drop(dataset: Dataset, elem: DataElement) -> None:
        if elem.VR in _BINARY_VRS and elem.value is not None and len(elem.value) > BULK_THRESHOLD:
            del dataset[elem.tag]

    ds.walk(drop)
    return ds


def _header(path: Path) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def _element(keyword: str, value: Any) -> DataElement:
    tag = tag_for_keyword(keyword)
    assert tag is not None
    return DataElement(tag, dictionary_VR(tag), value)


# ---- query parsing --------------------------------------------------------------------------------------------

_DATE = re.compile(r"^\d{8}$")


def _date(text: str) -> str:
    if not _DATE.match(text):
        raise ValueError(f"dates are YYYYMMDD, not {text!r}")
    date(int(text[:4]), int(text[4:6]), int(text[6:]))  # raises ValueError for 20240231
    return text


def parse_date_range(value: str) -> tuple[str | None, str | None]:
    """``20240101``, ``20240101-20241231``, ``-20241231`` or ``20240101-`` -> (first, last), inclusive."""
    if "-" not in value:
        day = _date(value)
        return day, day
    lo, _, hi = value.partition("-")
    if not lo and not hi:
        raise ValueError("a date range needs at least one end")
    first, last = (_date(lo) if lo else None), (_date(hi) if hi else None)
    if first and last and first > last:
        raise ValueError(f"date range {value!r} ends before it starts")
    return first, last


@dataclass
class Query:
    """A parsed QIDO-RS query: matching keys (by keyword), paging and extra fields to include."""

    match: dict[str, str]
    limit: int
    offset: int
    include: list[str]
    include_all: bool


def parse_query(request: Request, allowed: Sequence[str]) -> Query:
    """Parse and check the query string; a 400 naming the first problem."""
    match: dict[str, str] = {}
    include: list[str] = []
    include_all = False
    limit, offset = DEFAULT_LIMIT, 0
    try:
        for key, value in request.query_params.multi_items():
            if key == "limit":
                limit = int(value)
                if not 1 <= limit <= MAX_LIMIT:
                    raise ValueError(f"limit must be 1..{MAX_LIMIT}, not {limit}")
            elif key == "offset":
                offset = int(value)
                if offset < 0:
                    raise ValueError(f"offset must be 0 or more, not {offset}")
            elif key == "includefield":
                for field in filter(None, (v.strip() for v in value.split(","))):
                    if field == "all":
                        include_all = True
                    else:
                        include.append(_keyword(field))
            elif key == "fuzzymatching":
                if value not in ("true", "false"):
                    raise ValueError("fuzzymatching is true or false")
            else:
                word = _keyword(key)
                if word not in allowed:
                    raise ValueError(
                        f"matching on {word} is not supported here; supported: {', '.join(allowed)}, "
                        f"and {', '.join(_CONTROL_KEYS)}"
                    )
                if word.endswith("Date"):
                    parse_date_range(value)
                if word in ("SeriesNumber", "InstanceNumber"):
                    int(value)
                match[word] = value
    except ValueError as exc:
        raise HTTPException(status_code=400, detail=f"bad query: {exc}") from None
    return Query(match, limit, offset, include, include_all)


def _wildcard(pattern: str) -> re.Pattern[str]:
    """PS3.4 C.2.2.2.4 wildcard matching (``*`` any run, ``?`` one character), case-insensitive."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.I)


def _matches(value: Any, keyword: str, wanted: str) -> bool:
    """Single-value, UID-list and wildcard matching of one attribute (series and instance levels)."""
    text = "" if value is None else str(value)
    if keyword.endswith("UID"):
        return text in [u for u in re.split(r"[,\\]", wanted) if u]
    if keyword in ("SeriesNumber", "InstanceNumber"):
        return value is not None and int(value) == int(wanted)
    return _wildcard(wanted).fullmatch(text) is not None


def study_filters(match: dict[str, str]) -> dict[str, Any]:
    """QIDO study keys as :meth:`StudyStore.studies` keyword filters."""
    filters: dict[str, Any] = {}
    if "StudyInstanceUID" in match:
        filters["study_uids"] = [u for u in re.split(r"[,\\]", match["StudyInstanceUID"]) if u]
    if "PatientID" in match:
        filters["patient_id"] = match["PatientID"]
    if "PatientName" in match:
        filters["patient_name"] = match["PatientName"]
    if "AccessionNumber" in match:
        filters["accession_number"] = match["AccessionNumber"]
    if "ModalitiesInStudy" in match:
        filters["modality"] = match["ModalitiesInStudy"]
    if "StudyDate" in match:
        filters["study_date"] = parse_date_range(match["StudyDate"])
    return filters


# ---- the app --------------------------------------------------------------------------------------------------


def create_app(
    store: StoreLike,
    users: UserDirectory,
    audit: AuditLog,
    *,
    on_complete: Callable[[str], bool] | None = None,
    metrics: Callable[[], bytes] | None = None,
    health: Callable[[], dict[str, Any]] | None = None,
    workstation_dir: Path | None = None,
    routers: Sequence[Callable[[Authorizer], APIRouter]] = (),
    max_stow_bytes: int = DEFAULT_MAX_STOW_BYTES,
) -> FastAPI:
    """The service's HTTP app over ``store``, admitting requests by ``users`` and recording them in ``audit``.

    ``on_complete(study_uid)`` is called by ``POST /api/studies/{study}/complete`` and returns whether the
    study was newly completed (queued); ``metrics()`` returns Prometheus text; ``health()`` a JSON-ready dict
    whose ``status`` is ``"ok"`` when healthy (anything else answers 503). ``workstation_dir`` is the built
    workstation (default :data:`WORKSTATION_DIST`), served under ``/workstation/``. Each of ``routers`` is called
    with the app's :class:`Authorizer` and its routes are added (the review routes, :mod:`medsight.review.api`).
    ``max_stow_bytes``: a larger STOW-RS body is refused with 413 before it is read whole.
    """
    app = FastAPI(title="medsight service", description=__doc__)
    app.mount(
        "/workstation",
        WorkstationFiles(directory=workstation_dir or WORKSTATION_DIST, html=True, check_dir=False),
        name="workstation",
    )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422, without echoing the values given: a NaN there cannot be written as JSON (it turned the
        answer into a 500), and an echoed value may hold what a client should not see back in a log."""
        errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    def refused(request: Request, actor: str, status: int, reason: str) -> None:
        audit.append(
            actor=actor, action="auth.refused", target={"path": request.url.path}, outcome=f"{status}: {reason}"
        )

    auth = Authorizer(users, on_refused=refused)
    for make_router in routers:
        app.include_router(make_router(auth))
    Viewer = Annotated[Principal, Depends(auth.require("viewer"))]
    Admin = Annotated[Principal, Depends(auth.require("admin"))]

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/") + "/dicomweb"

    def record(who: Principal, action: str, target: dict[str, Any], outcome: str = "ok") -> None:
        audit.append(actor=who.user, action=action, target=target, outcome=outcome)

    def require_study(who: Principal, action: str, study: str) -> Any:
        found = store.study(study)
        if found is None:
            record(who, action, {"study": study}, "not_found")
            raise HTTPException(status_code=404, detail=f"study {study} not found")
        return found

    def series_of(who: Principal, action: str, study: str, series: str) -> list[InstanceRow]:
        require_study(who, action, study)
        found = list(store.instances(study, series))
        if not found:
            record(who, action, {"study": study, "series": series}, "not_found")
            raise HTTPException(status_code=404, detail=f"series {series} not found in study {study}")
        return found

    def instance_file(who: Principal, action: str, study: str, series: str, sop: str) -> Path:
        require_study(who, action, study)
        path = store.instance_path(study, series, sop)
        if path is None or not Path(path).is_file():
            record(who, action, {"study": study, "series": series, "instance": sop}, "not_found")
            raise HTTPException(status_code=404, detail=f"instance {sop} not found in series {series}")
        return Path(path)

    def paths(study: str, series: str | None = None) -> list[Path]:
        return [Path(inst.path) for inst in store.instances(study, series)]

    # ---- operations ----------------------------------------------------------------------------------------

    @app.get("/healthz", summary="liveness and readiness; no token, no patient data")
    def healthz() -> JSONResponse:
        state = health() if health is not None else {"status": "ok"}
        return JSONResponse(state, status_code=200 if state.get("status") == "ok" else 503)

    @app.get("/metrics", summary="Prometheus metrics; no token (counts only)")
    def get_metrics() -> Response:
        if metrics is None:
            raise HTTPException(status_code=404, detail="metrics are not enabled in this service")
        return Response(metrics(), media_type=PROMETHEUS)

    @app.post("/api/studies/{study}/complete", summary="mark a study complete now (admin)")
    def complete(study: str, who: Admin) -> JSONResponse:
        require_study(who, "study.complete", study)
        if on_complete is None:
            record(who, "study.complete", {"study": study}, "unavailable")
            raise HTTPException(status_code=503, detail="completion is not wired in this service")
        queued = bool(on_complete(study))
        record(who, "study.complete", {"study": study}, "queued" if queued else "already_complete")
        if not queued:
            return JSONResponse({"study": study, "queued": False, "detail": "study already complete"}, 409)
        return JSONResponse({"study": study, "queued": True}, status_code=202)

    # ---- STOW-RS -------------------------------------------------------------------------------------------

    async def stow(request: Request, who: Principal, study: str | None) -> Response:
        media = parse_media_type(request.headers.get("content-type", ""))
        if media.type != "multipart/related" or media.params.get("type", "application/dicom") != "application/dicom":
            record(who, "stow", {"study": study} if study else {}, "415")
            raise HTTPException(
                status_code=415,
                detail='STOW-RS here takes multipart/related; type="application/dicom" (one instance per part)',
            )
        boundary = media.params.get("boundary")
        if not boundary:
            raise HTTPException(status_code=400, detail="multipart/related without a boundary parameter")
        body = await read_capped(request, who, study)
        try:
            parts = split_multipart(body, boundary)
        except ValueError as exc:
            record(who, "stow", {"study": study} if study else {}, "400")
            raise HTTPException(status_code=400, detail=f"malformed multipart body: {exc}") from None
        peer = request.client.host if request.client else "-"
        return await run_in_threadpool(store_parts, request, who, study, parts, peer)

    async def read_capped(request: Request, who: Principal, study: str | None) -> bytes:
        """The request body, refused with 413 as soon as it is known to exceed ``max_stow_bytes``: from its
        declared length, or counted as a chunked body arrives."""
        too_large = HTTPException(
            status_code=413,
            detail=f"the STOW-RS body is larger than this service takes ({max_stow_bytes / 1e6:g} MB, "
            "[service] max_stow_mb); send fewer instances per request",
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_stow_bytes:
            record(who, "stow", {"study": study} if study else {}, "413")
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_stow_bytes:
                record(who, "stow", {"study": study} if study else {}, "413")
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def store_parts(
        request: Request, who: Principal, study: str | None, parts: list[tuple[dict[str, str], bytes]], peer: str
    ) -> Response:
        stored: list[Dataset] = []
        failed: list[Dataset] = []
        for headers, content in parts:
            part_type = parse_media_type(headers.get("content-type", "application/dicom")).type
            ds: Dataset | None = None
            try:
                if part_type != "application/dicom":
                    raise ValueError(f"part of type {part_type}")
                ds = pydicom.dcmread(io.BytesIO(content))
                check_part10_complete(content)  # pydicom keeps a value cut short; C-STORE refuses it too
                sop_class, sop = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
                str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
            except Exception:  # any unreadable part is one failed instance, not a failed request
                failed.append(_failed_item(ds, FAILURE_CANNOT_UNDERSTAND))
                continue
            if study is not None and str(ds.StudyInstanceUID) != study:
                failed.append(_failed_item(ds, FAILURE_MISMATCH))
                continue
            try:
                store.store(ds, calling_ae="STOW-RS", peer=peer)
            except (OSError, StorageUnavailable):  # no room or an I/O error: the sender may retry later
                failed.append(_failed_item(ds, FAILURE_OUT_OF_RESOURCES))
                continue
            except DuplicateInstance:
                failed.append(_failed_item(ds, FAILURE_DUPLICATE))
                continue
            except Exception:  # the store refused this instance; the others still go in
                failed.append(_failed_item(ds, FAILURE_PROCESSING))
                continue
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop
            item.RetrieveURL = (
                f"{base(request)}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{sop}"
            )
            stored.append(item)
            record(
                who,
                "stow",
                {"study": str(ds.StudyInstanceUID), "series": str(ds.SeriesInstanceUID), "instance": sop},
            )
        for item in failed:
            target = {"study": study} if study else {}
            if "ReferencedSOPInstanceUID" in item:
                target["instance"] = str(item.ReferencedSOPInstanceUID)
            record(who, "stow", target, f"failed: 0x{int(item.FailureReason):04X}")
        response = Dataset()
        if study is not None:
            response.RetrieveURL = f"{base(request)}/studies/{study}"
        if stored:
            response.ReferencedSOPSequence = stored
        if failed:
            response.FailedSOPSequence = failed
        status = 200 if not failed else 202 if stored else 409
        if not parts:
            status = 400
        return JSONResponse(_json(response), status_code=status, media_type=DICOM_JSON)

    @app.post("/dicomweb/studies", summary="STOW-RS (admin)")
    async def stow_any(request: Request, who: Admin) -> Response:
        return await stow(request, who, None)

    @app.post("/dicomweb/studies/{study}", summary="STOW-RS into one study (admin)")
    async def stow_study(request: Request, study: str, who: Admin) -> Response:
        return await stow(request, who, study)

    # ---- QIDO-RS -------------------------------------------------------------------------------------------

    def add_includes(out: Dataset, path: Path | None, query: Query) -> None:
        """``includefield`` attributes (or all with ``includefield=all``) from an instance's header."""
        if path is None or not (query.include or query.include_all):
            return
        header = _header(path)
        if query.include_all:
            for elem in _without_bulk(header):
                if elem.tag not in out and elem.tag != 0x7FE00010:
                    out.add(elem)
        for word in query.include:
            if word in header and word not in out:
                out[word] = header[word]

    def set_values(out: Dataset, values: dict[str, Any]) -> None:
        for keyword, value in values.items():
            if value is not None and value != "":
                out.add(_element(keyword, value))

    def first_file(study: str, series: str | None = None) -> Path | None:
        found = store.instances(study, series)
        return Path(found[0].path) if found else None

    def study_json(request: Request, row: StudyRow, query: Query) -> dict[str, Any]:
        out = Dataset()
        set_values(
            out,
            {
                "StudyDate": row.study_date,
                "StudyTime": row.study_time,
                "AccessionNumber": row.accession_number,
                "ModalitiesInStudy": list(row.modalities),
                "ReferringPhysicianName": row.referring_physician,
                "RetrieveURL": f"{base(request)}/studies/{row.study_uid}",
                "PatientName": row.patient_name,
                "PatientID": row.patient_id,
                "PatientBirthDate": row.patient_birth_date,
                "PatientSex": row.patient_sex,
                "StudyInstanceUID": row.study_uid,
                "StudyDescription": row.study_description,
                "NumberOfStudyRelatedSeries": row.n_series,
                "NumberOfStudyRelatedInstances": row.n_instances,
            },
        )
        add_includes(out, first_file(row.study_uid) if query.include or query.include_all else None, query)
        return _json(out)

    def paged(items: list[dict[str, Any]], more: bool) -> Response:
        headers = {"Warning": '299 medsight "There are additional results that can be requested"'} if more else {}
        return JSONResponse(items, media_type=DICOM_JSON, headers=headers)

    @app.get("/dicomweb/studies", summary="QIDO-RS: search for studies (viewer)")
    def search_studies(request: Request, who: Viewer) -> Response:
        query = parse_query(request, STUDY_KEYS)
        found = list(store.studies(limit=query.limit + 1, offset=query.offset, **study_filters(query.match)))
        rows = found[: query.limit]
        results = [study_json(request, row, query) for row in rows]
        record(who, "qido.studies", {"keys": sorted(query.match), "studies": [r.study_uid for r in rows]})
        return paged(results, len(found) > query.limit)

    @app.get("/dicomweb/studies/{study}/series", summary="QIDO-RS: search for a study's series (viewer)")
    def search_series(request: Request, study: str, who: Viewer) -> Response:
        query = parse_query(request, SERIES_KEYS)
        require_study(who, "qido.series", study)
        fields = {"SeriesInstanceUID": "series_uid", "Modality": "modality", "SeriesNumber": "series_number"}
        selected = [
            row
            for row in store.series(study)
            if all(_matches(getattr(row, fields[k]), k, v) for k, v in query.match.items())
        ]
        page = selected[query.offset : query.offset + query.limit]
        results = []
        for row in page:
            out = Dataset()
            first = first_file(study, row.series_uid)
            header = _header(first) if first is not None else Dataset()
            set_values(
                out,
                {
                    "Modality": row.modality,
                    "TimezoneOffsetFromUTC": header.get("TimezoneOffsetFromUTC"),
                    "SeriesDescription": row.series_description,
                    "RetrieveURL": f"{base(request)}/studies/{study}/series/{row.series_uid}",
                    "SeriesInstanceUID": row.series_uid,
                    "SeriesNumber": row.series_number,
                    "NumberOfSeriesRelatedInstances": row.n_instances,
                    "PerformedProcedureStepStartDate": header.get("PerformedProcedureStepStartDate"),
                    "PerformedProcedureStepStartTime": header.get("PerformedProcedureStepStartTime"),
                },
            )
            add_includes(out, first, query)
            results.append(_json(out))
        record(who, "qido.series", {"study": study, "keys": sorted(query.match), "series": len(results)})
        return paged(results, len(selected) > query.offset + query.limit)

    @app.get(
        "/dicomweb/studies/{study}/series/{series}/instances",
        summary="QIDO-RS: search for a series' instances (viewer)",
    )
    def search_instances(request: Request, study: str, series: str, who: Viewer) -> Response:
        query = parse_query(request, INSTANCE_KEYS)
        fields = {"SOPInstanceUID": "sop_uid", "SOPClassUID": "sop_class_uid", "InstanceNumber": "instance_number"}
        selected = [
            row
            for row in series_of(who, "qido.instances", study, series)
            if all(_matches(getattr(row, fields[k]), k, v) for k, v in query.match.items())
        ]
        page = selected[query.offset : query.offset + query.limit]
        results = []
        for row in page:
            header = _header(Path(row.path))
            out = _select(header, INSTANCE_KEYWORDS)
            set_values(
                out,
                {
                    "SOPClassUID": row.sop_class_uid,
                    "SOPInstanceUID": row.sop_uid,
                    "RetrieveURL": f"{base(request)}/studies/{study}/series/{series}/instances/{row.sop_uid}",
                    "InstanceNumber": row.instance_number,
                },
            )
            add_includes(out, Path(row.path), query)
            results.append(_json(out))
        record(
            who,
            "qido.instances",
            {"study": study, "series": series, "keys": sorted(query.match), "instances": len(results)},
        )
        return paged(results, len(selected) > query.offset + query.limit)

    # ---- WADO-RS -------------------------------------------------------------------------------------------

    def retrieve(request: Request, files: list[Path]) -> Response:
        if not _accepts(request, "multipart/related"):
            raise HTTPException(
                status_code=406,
                detail='instances are returned as multipart/related; type="application/dicom" only',
            )
        boundary = secrets.token_hex(16)
        return StreamingResponse(
            _multipart_stream(files, boundary),
            media_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
        )

    def metadata(files: list[Path]) -> Response:
        items = [_json(_without_bulk(_header(path))) for path in files]
        return JSONResponse(items, media_type=DICOM_JSON)

    @app.get("/dicomweb/studies/{study}", summary="WADO-RS: a study's instances (viewer)")
    def retrieve_study(request: Request, study: str, who: Viewer) -> Response:
        require_study(who, "wado.study", study)
        files = paths(study)
        response = retrieve(request, files)
        record(who, "wado.study", {"study": study, "instances": len(files)})
        return response

    @app.get("/dicomweb/studies/{study}/metadata", summary="WADO-RS: a study's metadata (viewer)")
    def study_metadata(study: str, who: Viewer) -> Response:
        require_study(who, "wado.metadata", study)
        files = paths(study)
        response = metadata(files)
        record(who, "wado.metadata", {"study": study, "instances": len(files)})
        return response

    @app.get("/dicomweb/studies/{study}/series/{series}", summary="WADO-RS: a series' instances (viewer)")
    def retrieve_series(request: Request, study: str, series: str, who: Viewer) -> Response:
        series_of(who, "wado.series", study, series)
        files = paths(study, series)
        response = retrieve(request, files)
        record(who, "wado.series", {"study": study, "series": series, "instances": len(files)})
        return response

    @app.get("/dicomweb/studies/{study}/series/{series}/metadata", summary="WADO-RS: a series' metadata (viewer)")
    def series_metadata(study: str, series: str, who: Viewer) -> Response:
        series_of(who, "wado.metadata", study, series)
        files = paths(study, series)
        response = metadata(files)
        record(who, "wado.metadata", {"study": study, "series": series, "instances": len(files)})
        return response

    @app.get("/dicomweb/studies/{study}/series/{series}/instances/{sop}", summary="WADO-RS: one instance (viewer)")
    def retrieve_instance(request: Request, study: str, series: str, sop: str, who: Viewer) -> Response:
        path = instance_file(who, "wado.instance", study, series, sop)
        response = retrieve(request, [path])
        record(who, "wado.instance", {"study": study, "series": series, "instance": sop})
        return response

    @app.get(
        "/dicomweb/studies/{study}/series/{series}/instances/{sop}/metadata",
        summary="WADO-RS: one instance's metadata (viewer)",
    )
    def instance_metadata(study: str, series: str, sop: str, who: Viewer) -> Response:
        path = instance_file(who, "wado.metadata", study, series, sop)
        response = metadata([path])
        record(who, "wado.metadata", {"study": study, "series": series, "instance": sop})
        return response

    def rendered(request: Request, who: Principal, study: str, series: str, sop: str, frame: int) -> Response:
        path = instance_file(who, "wado.rendered", study, series, sop)
        target = {"study": study, "series": series, "instance": sop, "frame": frame}
        if not _accepts(request, "image/png"):
            record(who, "wado.rendered", target, "406")
            raise HTTPException(status_code=406, detail="rendered images are returned as image/png only")
        window = parse_window(request.query_params.get("window"))
        try:
            png = render_png(path, frame, window)
        except LookupError as exc:
            record(who, "wado.rendered", target, "not_found")
            raise HTTPException(status_code=404, detail=str(exc)) from None
        except MedsightError as exc:
            record(who, "wado.rendered", target, "400")
            raise HTTPException(status_code=400, detail=f"cannot render this instance: {exc.problem}") from None
        record(who, "wado.rendered", target)
        return Response(png, media_type="image/png")

    @app.get(
        "/dicomweb/studies/{study}/series/{series}/instances/{sop}/rendered",
        summary="WADO-RS: an instance as PNG (its first frame when multi-frame) (viewer)",
    )
    def rendered_instance(request: Request, study: str, series: str, sop: str, who: Viewer) -> Response:
        return rendered(request, who, study, series, sop, 1)

    @app.get(
        "/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/rendered",
        summary="WADO-RS: one frame (1-based) as PNG (viewer)",
    )
    def rendered_frame(request: Request, study: str, series: str, sop: str, frame: str, who: Viewer) -> Response:
        if not re.fullmatch(r"[1-9]\d*", frame):
            raise HTTPException(status_code=400, detail=f"a rendered frame is one number from 1, not {frame!r}")
        return rendered(request, who, study, series, sop, int(frame))

    @app.get(
        "/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/{frames}",
        summary="WADO-RS: raw frames (1-based list), multipart/related application/octet-stream (viewer)",
    )
    def retrieve_frames(request: Request, study: str, series: str, sop: str, frames: str, who: Viewer) -> Response:
        path = instance_file(who, "wado.frames", study, series, sop)
        target = {"study": study, "series": series, "instance": sop, "frames": frames}
        if not re.fullmatch(r"[1-9]\d*(,[1-9]\d*)*", frames):
            record(who, "wado.frames", target, "400")
            raise HTTPException(
                status_code=400, detail=f"frames are numbers from 1 separated by commas, not {frames!r}"
            )
        as_stored = accepts_frames(request.headers.get("accept", ""))
        if as_stored is None:
            record(who, "wado.frames", target, "406")
            raise HTTPException(
                status_code=406, detail='frames are returned as multipart/related; type="application/octet-stream" only'
            )
        try:
            data, syntax = frame_bytes(path, [int(n) for n in frames.split(",")], as_stored=as_stored)
        except LookupError as exc:
            record(who, "wado.frames", target, "not_found")
            raise HTTPException(status_code=404, detail=str(exc)) from None
        except MedsightError as exc:
            record(who, "wado.frames", target, "400")
            raise HTTPException(status_code=400, detail=f"cannot read frames of this instance: {exc.problem}") from None
        record(who, "wado.frames", target)
        boundary = secrets.token_hex(16)
        part = f"--{boundary}\r\nContent-Type: application/octet-stream; transfer-syntax={syntax}\r\n\r\n"
        body = b"".join(part.encode("ascii") + frame + b"\r\n" for frame in data) + f"--{boundary}--\r\n".encode()
        return Response(
            body,
            media_type=f'multipart/related; type="application/octet-stream"; transfer-syntax={syntax}; '
            f"boundary={boundary}",
        )

    return app


#: Where ``make web`` builds the workstation (``web/workstation/dist`` in the checkout).
WORKSTATION_DIST = Path(__file__).resolve().parents[3] / "web" / "workstation" / "dist"

_NOT_BUILT = """<!doctype html><html><head><meta charset="utf-8"><title>Workstation not built</title></head>
<body style="font-family:sans-serif;max-width:40em;margin:3em auto">
<h1>The review workstation is not built</h1>
<p>This service serves the workstation from <code>web/workstation/dist</code>, which does not exist yet.
Run <code>make web</code> in the medsight checkout (it runs <code>npm ci</code> and the build), then reload
this page. The DICOMweb and <code>/api</code> routes work without it.</p></body></html>"""


class WorkstationFiles(StaticFiles):
    """The built workstation's static files, or a 404 page that says how to build it (not a bare 404)."""

    async def check_config(self) -> None:
        if Path(str(self.directory)).is_dir():  # a missing build is answered by get_response, not a crash
            await super().check_config()

    async def get_response(self, path: str, scope: Any) -> Response:
        directory = Path(str(self.directory))
        if not (directory / "index.html").is_file():
            return HTMLResponse(_NOT_BUILT, status_code=404)
        return await super().get_response(path, scope)


def accepts_frames(header: str) -> bool | None:
    """Whether frames may be sent as stored (``transfer-syntax=*``), must be uncompressed (False), or the Accept
    header allows no octet-stream at all (None). No header, ``*/*`` or no transfer-syntax mean PS3.18's default,
    Explicit VR Little Endian."""
    if not header.strip():
        return False
    allowed: bool | None = None
    for item in header.split(","):
        media = parse_media_type(item)
        if media.params.get("q") in ("0", "0.0", "0.00", "0.000"):
            continue
        if media.type == "multipart/related":
            if media.params.get("type", "application/octet-stream") not in ("application/octet-stream", "*/*"):
                continue
        elif media.type not in ("*/*", "multipart/*", "application/octet-stream"):
            continue
        if media.params.get("transfer-syntax") == "*":
            return True
        allowed = False
    return allowed


def frame_bytes(path: Path, frames: Sequence[int], *, as_stored: bool) -> tuple[list[bytes], str]:
    """The pixel bytes of ``frames`` (1-based) and their transfer syntax UID.

    Encapsulated (compressed) pixel data goes out as stored when ``as_stored``; otherwise, and for big endian,
    pydicom decodes it and the frames go out as Explicit VR Little Endian. Native little-endian frames are sliced
    from the file; 1-bit frames (binary SEG) are re-packed so that each starts on a byte. ``LookupError`` for a
    frame out of range, ``MedsightError`` for an instance without pixel data.
    """
    from pydicom.encaps import generate_frames
    from pydicom.pixels import pack_bits, unpack_bits
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.dcmread(path)
    if not ds.get("PixelData") or not int(ds.get("Rows", 0) or 0) or not int(ds.get("Columns", 0) or 0):
        raise MedsightError("the instance has no pixel data (PixelData)", path)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    bad = [f for f in frames if not 1 <= f <= n]
    if bad:
        raise LookupError(f"frame {bad[0]} out of range: this instance has {n} frame(s), numbered from 1")
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_encapsulated and as_stored:
        stored = list(generate_frames(ds.PixelData, number_of_frames=n))
        return [stored[f - 1] for f in frames], str(syntax)
    rows, cols, samples = int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1))
    bits = int(ds.BitsAllocated)
    if bits == 1:
        flat = np.asarray(unpack_bits(ds.PixelData))
        size = rows * cols * samples
        return [pack_bits(flat[(f - 1) * size : f * size]) for f in frames], str(ExplicitVRLittleEndian)
    if not syntax.is_encapsulated and syntax.is_little_endian:
        size = rows * cols * samples * bits // 8
        raw = ds.PixelData  # implicit and explicit VR little endian frames are the same bytes
        return [bytes(raw[(f - 1) * size : f * size]) for f in frames], str(ExplicitVRLittleEndian)
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # a codec pydicom lacks: say so instead of a bare 500
        raise MedsightError(f"cannot decode {syntax.name}: {exc}", path) from exc
    if n == 1:
        pixels = pixels[None]
    out = [np.ascontiguousarray(pixels[f - 1]).astype(pixels.dtype.newbyteorder("<")).tobytes() for f in frames]
    return out, str(ExplicitVRLittleEndian)


def _failed_item(ds: Dataset | None, reason: int) -> Dataset:
    item = Dataset()
    if ds is not None:
        if "SOPClassUID" in ds:
            item.ReferencedSOPClassUID = ds.SOPClassUID
        if "SOPInstanceUID" in ds:
            item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    item.FailureReason = reason
    return item


def parse_window(value: str | None) -> tuple[float, float] | None:
    """PS3.18 ``window=center,width[,function]`` (the function must be LINEAR); a 400 when malformed."""
    if value is None:
        return None
    fields = value.split(",")
    try:
        if len(fields) not in (2, 3) or (len(fields) == 3 and fields[2].strip().upper() != "LINEAR"):
            raise ValueError
        center, width = float(fields[0]), float(fields[1])
        if width <= 0:
            raise ValueError
    except ValueError:
        raise HTTPException(
            status_code=400, detail=f"window is center,width[,linear] with a positive width, not {value!r}"
        ) from None
    return center, width


def render_png(path: Path, frame: int, window: tuple[float, float] | None = None) -> bytes:
    """Frame ``frame`` (1-based) of an image instance as 8-bit PNG, through the Modality and VOI LUTs.

    The window is ``window``, else the header's VOI LUT or first Window Center/Width, else the frame's
    min-max (:func:`medsight.io.dicom.read_dicom_image` composes pydicom's ``apply_modality_lut`` and
    ``apply_voi_lut``). Colour images keep their colours. ``LookupError`` for a frame out of range.
    """
    from PIL import Image

    from medsight.io.dicom import read_dicom_image

    header = _header(path)
    n = int(header.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame <= n:
        raise LookupError(f"frame {frame} out of range: this instance has {n} frame(s), numbered from 1")
    values = read_dicom_image(path, voi=window if window is not None else True, frame=frame - 1 if n > 1 else None)
    if values.ndim == 2:
        image = Image.fromarray(np.round(values * 255.0).astype(np.uint8), mode="L")
    else:
        image = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), mode="RGB")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
