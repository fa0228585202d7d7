"""Findings as a FHIR R4 DiagnosticReport with Observations, validated by ``fhir.resources``, and its POST.

The report is self-contained: the algorithm is a contained Device (name, version and bundle checksum, IHE AI
Results provenance), each finding a contained Observation (code from :mod:`medsight.serving.codes`, probability
as a Quantity of UCUM unit "1", the Device as ``device``), and the study is referenced by its Study Instance UID
as an identifier (system ``urn:dicom:uid``, value ``urn:oid:<uid>``), as the DICOM/FHIR mapping does. R4's
DiagnosticReport.performer cannot be a Device, so the algorithm is named on each Observation. The model classes
are fhir.resources' R4B package (FHIR 4.3, the R4 family; the fields used here are the same as R4's), so pydantic
checks every field and reference type before anything is sent.

:func:`post_report` sends one POST of the report (with its contained resources) to ``<base>/DiagnosticReport``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydantic import ValidationError
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from medsight.errors import DestinationRejected, MedsightError
from medsight.serving.dicom_objects import Finding, resolve_label
from medsight.serving.provenance import AlgorithmIdentity
from medsight.serving.stow_out import post

#: FHIR code systems for DICOM coding scheme designators (HL7 terminology; RadLex's is its own URL).
SYSTEMS = {
    "SCT": "http://snomed.info/sct",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "LN": "http://loinc.org",
    "RADLEX": "http://radlex.org",
    "UCUM": "http://unitsofmeasure.org",
}
LOCAL_SYSTEM = "urn:medsight:labels"
#: LOINC 18748-4 "Diagnostic imaging study" for the report's code.
REPORT_CODE = {"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}


@dataclass(frozen=True)
class StudyInfo:
    """What the report may say about the study: its UID always, patient and accession only when configured."""

    study_instance_uid: str
    patient_id: str = ""
    accession_number: str = ""

    @classmethod
    def from_dataset(cls, ds: Dataset, *, identified: bool = False) -> StudyInfo:
        """From any instance of the study; patient id and accession only when ``identified`` output is allowed."""
        return cls(
            study_instance_uid=str(ds.StudyInstanceUID),
            patient_id=str(ds.get("PatientID", "") or "") if identified else "",
            accession_number=str(ds.get("AccessionNumber", "") or "") if identified else "",
        )


def coding(code: Code) -> dict[str, str]:
    system = SYSTEMS.get(str(code.scheme_designator), LOCAL_SYSTEM)
    return {"system": system, "code": str(code.value), "display": str(code.meaning)}


def diagnostic_report(
    findings: Sequence[Finding],
    study: StudyInfo,
    identity: AlgorithmIdentity,
    *,
    codes: Mapping[str, Code] | None = None,
    issued: dt.datetime | None = None,
    status: str = "final",
) -> DiagnosticReport:
    """A validated DiagnosticReport with one contained Observation per finding and the algorithm as Device."""
    when = (issued or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="seconds")
    study_ref = {
        "type": "ImagingStudy",
        "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study.study_instance_uid}"},
    }
    subject = {"type": "Patient", "identifier": {"value": study.patient_id}} if study.patient_id else None
    device: dict[str, Any] = {
        "resourceType": "Device",
        "id": "algorithm",
        "deviceName": [{"name": identity.name, "type": "model-name"}],
        "version": [{"value": identity.version or "unknown"}],
        "manufacturer": "medsight",
    }
    if identity.checksum:
        device["identifier"] = [{"system": "urn:medsight:bundle-sha256", "value": identity.checksum}]
    contained: list[dict[str, Any]] = [device]
    results = []
    for n, finding in enumerate(findings, start=1):
        p = float(finding.probability)
        if not 0.0 <= p <= 1.0:
            raise MedsightError(f"finding {n}: probability {p} is outside [0, 1]")
        label = resolve_label(finding.label, codes)
        assert label.code is not None  # resolve_label always codes a label
        observation: dict[str, Any] = {
            "resourceType": "Observation",
            "id": f"finding-{n}",
            "status": status,
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "imaging",
                        }
                    ]
                }
            ],
            "code": {"coding": [coding(label.code)], "text": label.name},
            "valueQuantity": {"value": round(p, 6), "unit": "probability", "system": SYSTEMS["UCUM"], "code": "1"},
            "device": {"reference": "#algorithm"},
            "derivedFrom": [study_ref],
            "issued": when,
        }
        if subject:
            observation["subject"] = subject
        contained.append(observation)
        results.append({"reference": f"#finding-{n}"})
    data: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "status": status,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}],
        "code": {"coding": [REPORT_CODE]},
        "issued": when,
        "effectiveDateTime": when,
        "contained": contained,
        "result": results,
        "imagingStudy": [study_ref],
        "conclusion": f"{identity.name} {identity.version}: "
        + "; ".join(f"{resolve_label(f.label, codes).name} p={float(f.probability):.3f}" for f in findings),
    }
    if subject:
        data["subject"] = subject
    if study.accession_number:
        data["identifier"] = [{"type": {"text": "accession"}, "value": study.accession_number}]
    try:
        return DiagnosticReport.model_validate(data)
    except ValidationError as exc:
        raise MedsightError(f"the FHIR DiagnosticReport does not validate ({exc.error_count()} errors)") from exc


def post_report(
    url: str,
    report: DiagnosticReport,
    *,
    token: str | None = None,
    timeout_s: float = 30.0,
    client: httpx.Client | None = None,
) -> str:
    """POST the report to ``<url>/DiagnosticReport`` (one request; Observations and Device are contained).

    Returns the server's Location (or the new id). Connection errors, timeouts and 5xx raise
    :class:`DestinationUnavailable` (retry), 4xx :class:`DestinationRejected` with the OperationOutcome text."""
    target = url.rstrip("/") + "/DiagnosticReport"
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = report.model_dump_json(exclude_none=True).encode()
    response = post(target, body, headers, what="FHIR server", timeout_s=timeout_s, client=client)
    if response.status_code >= 400:
        raise DestinationRejected(
            f"FHIR server rejected the report: HTTP {response.status_code} {_outcome(response)}".rstrip(), target
        )
    location = response.headers.get("Location", "")
    if location:
        return str(location)
    try:
        return str(response.json().get("id", ""))
    except ValueError:
        return ""


def _outcome(response: httpx.Response) -> str:
    """The diagnostics of an OperationOutcome, if the server sent one (servers put no patient data there)."""
    try:
        data = response.json()
    except ValueError:
        return ""
    issues = data.get("issue", []) if isinstance(data, dict) else []
    return "; ".join(str(i.get("diagnostics") or i.get("code", "")) for i in issues)[:300]
