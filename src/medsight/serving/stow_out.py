"""Send result objects to a PACS by DICOMweb STOW-RS (PS3.18 10.5), and the two ways a destination fails.

One request per call, ``multipart/related; type="application/dicom"`` with one part per file, so a study's
result set arrives together. The response tells what happened per instance: a 200 stored all, a 202 stored some
(the others carry a FailureReason), 409 stored none. Failures split into the two kinds the job queue needs:
:class:`DestinationUnavailable` (connection refused, timeout, 5xx: retry later) and :class:`DestinationRejected`
(4xx, 409: the same request will fail again, so it goes to the dead letters with the reason).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
from pydicom.dataset import Dataset

from medsight.errors import DestinationRejected, DestinationUnavailable, MedsightError

#: 4xx answers that mean "not now" (request timeout, too early, too many requests): retried like a 5xx.
RETRY_LATER = frozenset({408, 425, 429})

#: PS3.18 Table 10.5.3-1 attribute tags in a STOW-RS response (JSON model).
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"


@dataclass
class StowReport:
    """What the PACS said: instances stored and those that failed with their FailureReason (PS3.4 codes)."""

    status: int
    stored: list[str] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)
    warnings: list[int] = field(default_factory=list)


def multipart_body(parts: Sequence[bytes], boundary: str) -> bytes:
    """A multipart/related body of ``application/dicom`` parts (PS3.18 8.6.1.2)."""
    out = bytearray()
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        out += part + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def post(
    url: str, body: bytes, headers: dict[str, str], *, what: str, timeout_s: float, client: httpx.Client | None
) -> httpx.Response:
    """One POST to a result destination; connection errors, timeouts, 5xx, 408, 425 and 429 raise
    :class:`DestinationUnavailable` (the queue retries); a redirect (not followed) or another answer that is not a
    success nor an error raises :class:`DestinationRejected`, since nothing was stored; a 2xx or another 4xx is
    returned for the caller to read."""
    try:
        if client is not None:
            response = client.post(url, content=body, headers=headers, timeout=timeout_s)
        else:
            with httpx.Client(timeout=timeout_s) as own:
                response = own.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:  # connect/read errors and timeouts
        raise DestinationUnavailable(f"{what} unreachable ({type(exc).__name__})", url) from exc
    code = response.status_code
    if code >= 500 or code in RETRY_LATER:
        raise DestinationUnavailable(f"{what} failed with HTTP {code}", url)
    if not 200 <= code < 300:
        if 300 <= code < 400:  # not followed: a redirect is a wrong URL or a login page, and nothing was stored
            raise DestinationRejected(f"{what} answered HTTP {code} (a redirect): nothing was stored", url)
        if code < 400:
            raise DestinationRejected(f"{what} answered HTTP {code}, not a success: nothing was stored", url)
    return response


def stow(
    url: str,
    paths: Sequence[str | Path],
    *,
    token: str | None = None,
    timeout_s: float = 30.0,
    client: httpx.Client | None = None,
) -> StowReport:
    """POST ``paths`` to the STOW-RS endpoint ``url`` (e.g. ``http://pacs/dicom-web/studies``) in one request.

    Raises :class:`DestinationUnavailable` on connection errors, timeouts, 5xx, 408, 425 and 429,
    :class:`DestinationRejected` on another 4xx (409 included), on a redirect, when any instance failed (naming the
    FailureReason codes, never patient data) or when the response lists stored instances and one sent is not among
    them."""
    if not paths:
        raise MedsightError("STOW-RS: nothing to send")
    parts = []
    for p in paths:
        try:
            parts.append(Path(p).read_bytes())
        except OSError as exc:
            raise MedsightError(f"cannot read result file ({exc.strerror})", p) from exc
    sent = [_sop_instance_uid(part) for part in parts]
    boundary = f"medsight-{uuid.uuid4().hex}"
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = multipart_body(parts, boundary)
    response = post(url, body, headers, what="STOW-RS destination", timeout_s=timeout_s, client=client)
    report = _report(response)
    if response.status_code >= 400 or report.failed:
        reasons = ", ".join(f"{reason:#06x}" for reason in sorted(set(report.failed.values()))) or "none given"
        raise DestinationRejected(
            f"STOW-RS rejected: HTTP {response.status_code}, {len(report.failed)} of {len(paths)} instance(s) "
            f"failed (FailureReason {reasons})",
            url,
        )
    if report.stored:  # the server said what it stored: each instance sent must be among them
        missing = [uid for uid in sent if uid and uid not in report.stored]
        if missing:
            raise DestinationRejected(
                f"STOW-RS answered HTTP {response.status_code} but lists {len(missing)} of {len(paths)} instance(s) "
                "neither as stored nor as failed",
                url,
            )
    return report


def _sop_instance_uid(part: bytes) -> str:
    """The SOP Instance UID of a Part 10 file's bytes ("" when it cannot be read: the server will say why)."""
    import io

    from pydicom import dcmread

    try:
        return str(dcmread(io.BytesIO(part), stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
    except Exception:  # pydicom raises several types for a damaged file
        return ""


def _report(response: httpx.Response) -> StowReport:
    """Parse the STOW-RS response body (DICOM JSON) when there is one; tolerate an empty or non-JSON body."""
    report = StowReport(status=response.status_code)
    try:
        data: Any = response.json()
    except ValueError:
        return report
    if isinstance(data, list):  # some servers wrap the one response dataset in a list
        data = data[0] if data else {}
    if not isinstance(data, dict):
        return report
    try:
        ds = Dataset.from_json(data)
    except Exception:  # JSON that is not the DICOM JSON model (an error page's JSON): no per-instance report
        return report
    for item in ds.get("ReferencedSOPSequence", []):
        report.stored.append(str(item.get("ReferencedSOPInstanceUID", "")))
        if "WarningReason" in item:
            report.warnings.append(int(item.WarningReason))
    for item in ds.get("FailedSOPSequence", []):
        report.failed[str(item.get("ReferencedSOPInstanceUID", ""))] = int(item.get("FailureReason", 0xC000))
    return report
