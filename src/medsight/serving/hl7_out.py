"""Findings as an HL7 v2.5 ORU^R01 message, sent over MLLP: the record systems that predate FHIR read these.

The message is built and parsed with the ``hl7`` package; the PID segment carries only what the study carries
and only when the caller passes it (``patient`` is None for a de-identified feed), the OBR names the study and the
algorithm, and each finding is one OBX (coded observation id, probability as a numeric value, the algorithm with
its bundle checksum as responsible observer). MLLP framing is ``0x0B message 0x1C 0x0D``; :func:`send_mllp`
waits for the ACK and maps AA to success, AE/AR and silence to the errors the job queue understands.
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import hl7
from pydicom.sr.coding import Code

from medsight.errors import DestinationRejected, DestinationUnavailable, MedsightError
from medsight.serving.codes import local_code
from medsight.serving.dicom_objects import Finding, resolve_label
from medsight.serving.provenance import AlgorithmIdentity

START, END = b"\x0b", b"\x1c\x0d"
#: HL7 escape sequences for the delimiters (v2.5 2.7.4), so free text cannot break the message structure.
_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))


@dataclass(frozen=True)
class Patient:
    """What PID carries: only fields the study has, and only when identified output is configured."""

    id: str = ""
    name: str = ""
    birth_date: str = ""
    sex: str = ""


@dataclass(frozen=True)
class Ack:
    """The receiver's answer: MSA-1 (AA, AE, AR, or CA/CE/CR) and its text."""

    code: str
    control_id: str
    text: str
    message: str


def escape(value: str) -> str:
    out = str(value).replace("\r", " ").replace("\n", " ")
    for raw, escaped in _ESCAPES:
        out = out.replace(raw, escaped)
    return out


def _coded(code: Code) -> str:
    """CE/CWE: identifier^text^coding system."""
    return "^".join(escape(v) for v in (code.value, code.meaning, code.scheme_designator))


def oru_r01(
    findings: Sequence[Finding],
    study_instance_uid: str,
    identity: AlgorithmIdentity,
    *,
    patient: Patient | None = None,
    accession_number: str = "",
    sending_application: str = "MEDSIGHT",
    receiving_application: str = "",
    control_id: str | None = None,
    codes: Mapping[str, Code] | None = None,
    now: dt.datetime | None = None,
) -> str:
    """An ORU^R01 (v2.5) with one OBX per finding; the result is checked by parsing it with ``hl7``."""
    when = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%d%H%M%S")
    control = control_id or hl7.generate_message_control_id()
    pid = patient or Patient()
    segments = [
        f"MSH|^~\\&|{escape(sending_application)}||{escape(receiving_application)}||{when}||ORU^R01^ORU_R01|"
        f"{escape(control)}|P|2.5",
        f"PID|1||{escape(pid.id)}||{escape(pid.name)}||{escape(pid.birth_date)}|{escape(pid.sex)}",
        f"OBR|1|{escape(accession_number)}|{escape(study_instance_uid)}^^{escape(study_instance_uid)}^DICOM|"
        f"{escape(identity.name)}^{escape(identity.name)}^L|||{when}|||||||||||||||{when}||||F",
    ]
    observer = f"{escape(identity.name)} {escape(identity.version)} sha256:{escape(identity.checksum)}"
    for n, finding in enumerate(findings, start=1):
        p = float(finding.probability)
        if not 0.0 <= p <= 1.0:
            raise MedsightError(f"finding {n}: probability {p} is outside [0, 1]")
        code = resolve_label(finding.label, codes).code or local_code(str(finding.label))
        segments.append(f"OBX|{n}|NM|{_coded(code)}|{n}|{p:.6g}|1^^UCUM|||||F|||{when}||{observer}")
    message = "\r".join(segments)
    try:
        hl7.parse(message)
    except Exception as exc:  # the hl7 parser raises several types
        raise MedsightError(f"built an ORU^R01 that does not parse ({type(exc).__name__})") from exc
    return message


def with_sender(message: str, application: str | None, facility: str | None) -> str:
    """``message`` with MSH-3 (sending application) and MSH-4 (sending facility) set to a destination's
    ``application`` and ``facility``; the rest (control id, time, findings) is unchanged, so every re-send to that
    destination is the same message."""
    segments = message.split("\r")
    fields = segments[0].split("|")
    if fields[0] != "MSH" or len(fields) < 5:
        raise MedsightError("not an HL7 v2 message (no MSH segment first)")
    if application is not None:
        fields[2] = escape(application)
    if facility is not None:
        fields[3] = escape(facility)
    segments[0] = "|".join(fields)
    return "\r".join(segments)


def send_mllp(host: str, port: int, message: str, timeout_s: float = 10.0) -> Ack:
    """Send one message with MLLP framing and wait for its ACK.

    AA (or CA) returns the :class:`Ack`; AE/CE (application error: may pass) raises
    :class:`DestinationUnavailable`, AR/CR (rejected) :class:`DestinationRejected`; no connection, a timeout
    or a closed socket before the ACK raise :class:`DestinationUnavailable`."""
    where = f"mllp://{host}:{port}"
    control = str(hl7.parse(message).segment("MSH")[10])
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(START + message.encode("utf-8") + END)
            buffer = b""
            while END not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise DestinationUnavailable("MLLP peer closed the connection before its ACK", where)
                buffer += chunk
    except OSError as exc:
        raise DestinationUnavailable(f"MLLP peer unreachable ({type(exc).__name__})", where) from exc
    frame = buffer[buffer.find(START) + 1 : buffer.find(END)]
    text = frame.decode("utf-8", errors="replace")
    try:
        msa = hl7.parse(text).segment("MSA")
    except Exception as exc:  # KeyError when there is no MSA, parse errors otherwise
        raise DestinationRejected(f"MLLP answer is not an HL7 ACK ({type(exc).__name__})", where) from exc
    ack = Ack(code=str(msa[1]), control_id=str(msa[2]), text=str(msa[3]) if len(msa) > 3 else "", message=text)
    if ack.control_id != control:
        raise DestinationRejected(f"ACK answers message {ack.control_id!r}, not {control!r}", where)
    if ack.code in ("AA", "CA"):
        return ack
    if ack.code in ("AE", "CE"):
        raise DestinationUnavailable(f"HL7 application error {ack.code}: {ack.text}", where)
    raise DestinationRejected(f"HL7 message rejected {ack.code}: {ack.text}", where)
