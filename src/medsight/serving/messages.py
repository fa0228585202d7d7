"""FHIR DiagnosticReport and HL7 ORU^R01 files for one inference job, written once beside its DICOM results.

Why written at inference time rather than when sending: the export job then re-sends the same bytes after any
failure (the same report id, the same HL7 control id), so a record system that receives it twice can tell.
Findings come from the job's ``predictions.json`` entries: probabilities per label
(classification, outcome), boxes with scores (detection) or label amounts (segmentation, reported as present with
probability 1 when the mask holds any of the label). Patient identifiers go out only when the destination is
configured as identified; by default the report carries the Study Instance UID alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom

from medsight.io.atomic import atomic_path

if TYPE_CHECKING:
    from medsight.serving.config import Route
    from medsight.serving.dicom_objects import Finding
    from medsight.serving.jobs import Job
    from medsight.serving.worker import WorkContext


def findings_of(entries: Sequence[dict[str, Any]]) -> list[Finding]:
    """One finding per label and ``predictions.json`` entry (every label with its probability)."""
    from medsight.serving.dicom_objects import Finding

    found: list[Finding] = []
    for entry in entries:
        if "probabilities" in entry:
            for label, p in entry["probabilities"].items():
                found.append(Finding(str(label), float(p)))
        elif "findings" in entry:
            for f in entry["findings"]:
                found.append(Finding(str(f.get("label")), float(f.get("score", f.get("probability", 0.0)))))
        elif "amounts" in entry:
            for label, amount in entry["amounts"].items():
                if label != "unit" and float(amount or 0) > 0:
                    found.append(Finding(str(label), 1.0))
    return found


def write(
    ctx: WorkContext, job: Job, route: Route, out: Path, entries: Sequence[dict[str, Any]], wanted: set[str]
) -> dict[str, Path]:
    """Write ``fhir.json`` and/or ``oru.hl7`` into ``out``; returns kind → path."""
    from medsight.serving.provenance import AlgorithmIdentity

    identity = AlgorithmIdentity.from_bundle(route.bundle)
    first = ctx.store.instances(job.study_uid)[0]
    header = pydicom.dcmread(first.path, stop_before_pixels=True)
    findings = findings_of(entries)
    written: dict[str, Path] = {}
    if "fhir" in wanted:
        from medsight.serving.fhir_out import StudyInfo, diagnostic_report

        report = diagnostic_report(findings, StudyInfo.from_dataset(header), identity)
        path = out / "fhir_diagnostic_report.json"
        _write_text(path, report.model_dump_json(exclude_none=True))
        written["fhir"] = path
    if "hl7" in wanted:
        from medsight.serving.hl7_out import oru_r01

        message = oru_r01(findings, str(header.StudyInstanceUID), identity, control_id=f"MS{job.id}")
        path = out / "oru_r01.hl7"
        _write_text(path, message)
        written["hl7"] = path
    return written


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


