"""What a worker does with a job: run a model on a complete study, or send its results to one destination.

Two kinds of job, so that a destination that is down never makes a model run again and a slow model never holds
up sending: ``inference`` (route → warm model → result objects written once, under the job's folder, and stored
so DICOMweb serves them) and ``export`` (one destination, the files of one inference job). An inference job
enqueues its exports with a dedupe key before it completes; after a crash the job runs again, finds the exports
already queued, and the PACS receives the first result set only. The SOP Instance UIDs of a result set are fixed
when it is written, so re-sending after a crash mid-send stores nothing twice in a PACS.

Errors kept in the job table are written here and name no patient: the kind of failure, the route or destination,
the exception class and its message for destinations (which hold no identifiers), and for model failures the
:class:`MedsightError` text (which names files by their UID-based store names, never patient data).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom

from medsight.errors import DestinationUnavailable, MedsightError

if TYPE_CHECKING:
    from medsight.serving.audit import AuditLog
    from medsight.serving.config import Destination, Route, SiteConfig
    from medsight.serving.jobs import Job, JobQueue
    from medsight.serving.metrics import ServiceMetrics
    from medsight.serving.store import StudyStore
    from medsight.tasks.contract import Model

log = logging.getLogger("medsight.serve")

INFERENCE = "inference"
EXPORT = "export"
#: DICOM result kinds a task writes (``Result.dicom`` keys) → the route output that asks for them.
DICOM_OUTPUT = {"sr": "sr", "seg": "seg", "secondary_capture": "sc"}


class Retryable(MedsightError):
    """A failure that may pass by itself (a destination down, a timeout): the queue retries with back-off."""


class ModelCache:
    """Bundles loaded once and kept warm (ONNX Runtime sessions), shared by the worker threads."""

    def __init__(self) -> None:
        self._models: dict[Path, Model] = {}
        self._lock = threading.Lock()

    def get(self, bundle: Path) -> Model:
        with self._lock:
            model = self._models.get(bundle)
            if model is None:
                from medsight import runtime

                model = runtime.load(bundle)
                self._models[bundle] = model
            return model

    def preload(self, bundles: Sequence[Path]) -> None:
        for b in bundles:
            self.get(b)


@dataclass
class WorkContext:
    """Everything a job needs, built once by the service."""

    config: SiteConfig
    store: StudyStore
    queue: JobQueue
    audit: AuditLog
    metrics: ServiceMetrics
    models: ModelCache
    results_dir: Path

    def route(self, name: str) -> Route:
        try:
            return self.config.route(name)
        except KeyError:
            raise MedsightError(f"route {name!r} is no longer in the configuration") from None

    def destination(self, name: str) -> Destination:
        try:
            return self.config.destination(name)
        except KeyError:
            raise MedsightError(f"destination {name!r} is no longer in the configuration") from None


# ------------------------------------------------------------------------------------------------ inference


def inference_inputs(ctx: WorkContext, job: Job) -> list[Path]:
    """The files (one per instance) or series folders the route's model takes, from the store."""
    per = job.payload.get("apply_per", "instance")
    inputs: list[Path] = []
    for series_uid in job.payload["series"]:
        instances = ctx.store.instances(job.study_uid, series_uid)
        paths = [Path(i.path) for i in instances]
        if not paths:
            raise MedsightError(f"series {series_uid} of study {job.study_uid} has no stored instances")
        if per == "series":
            inputs.append(paths[0].parent)
        else:
            inputs.extend(sorted(paths))
    return inputs


def run_inference(ctx: WorkContext, job: Job) -> dict[str, Any]:
    """Run the route's model on the job's series; write and store the results; queue one export per destination.

    The result folder is written once (atomically, with ``predictions.json``). A job that runs again after a crash
    finds it and sends those same objects (same UIDs) instead of predicting anew.
    """
    from medsight import runtime

    route = serving_route(ctx, ctx.route(job.target))
    out = ctx.results_dir / job.study_uid / f"{route.name}-{job.id}"
    started = time.monotonic()
    if not out.exists():
        model = ctx.models.get(route.bundle)
        results = model.predict(inference_inputs(ctx, job), explain="sc" in route.outputs)
        runtime.write_predictions(model, results, out)
    entries: list[dict[str, Any]] = json.loads((out / "predictions.json").read_text(encoding="utf-8"))["predictions"]
    by_output: dict[str, list[str]] = {}
    for entry in entries:
        for kind, name in entry.get("dicom", {}).items():
            output = DICOM_OUTPUT.get(kind)
            if output in route.outputs:
                by_output.setdefault(output, []).append(str((out / name).relative_to(ctx.results_dir)))
    messages = write_messages(ctx, job, route, out, entries)
    for rel in (f for files in by_output.values() for f in files):
        ds = pydicom.dcmread(ctx.results_dir / rel)
        ctx.store.store(ds, calling_ae=ctx.config.dicom.ae_title, peer="medsight", result=True)
    exports = []
    for dest_name in route.send_to:
        dest = ctx.destination(dest_name)
        payload = {
            "route": route.name,
            "inference_job": job.id,
            "files": [f for output in sorted(dest.takes) for f in by_output.get(output, [])],
            "messages": {k: v for k, v in messages.items() if k in dest.takes},
        }
        if not payload["files"] and not payload["messages"]:
            continue
        e = ctx.queue.enqueue(EXPORT, job.study_uid, dest_name, payload, dedupe_key=f"{job.dedupe_key}>{dest_name}")
        exports.append(e.id)
    return {
        "results": len(entries),
        "deferred": sum(1 for e in entries if e.get("defer_to_radiologist")),
        "files": [f for files in by_output.values() for f in files],
        "messages": messages,
        "exports": exports,
        "seconds": round(time.monotonic() - started, 3),
        "out": str(out.relative_to(ctx.results_dir)),
        "bundle": str(route.bundle),
    }


def serving_route(ctx: WorkContext, route: Route) -> Route:
    """``route`` with the bundle it uses now: the one promoted with ``medsight models promote``, else the configured
    one (``medsight.feedback.promotion``), so FHIR/HL7 and the SR name the model that actually ran."""
    import dataclasses

    from medsight.feedback.promotion import current_bundle

    bundle = current_bundle(ctx.queue.engine, route)
    return route if bundle == route.bundle else dataclasses.replace(route, bundle=bundle)


def write_messages(
    ctx: WorkContext, job: Job, route: Route, out: Path, entries: Sequence[dict[str, Any]]
) -> dict[str, str]:
    """FHIR DiagnosticReport and HL7 ORU files for the destinations that take them (paths relative to results)."""
    wanted = {o for o in route.outputs if o in ("fhir", "hl7")}
    if not wanted:
        return {}
    from medsight.serving import messages

    written = messages.write(ctx, job, route, out, entries, wanted)
    return {k: str(v.relative_to(ctx.results_dir)) for k, v in written.items()}


# ------------------------------------------------------------------------------------------------ export


def run_export(ctx: WorkContext, job: Job) -> dict[str, Any]:
    """Send one inference job's files to one destination; a refusal or an outage is retryable."""
    dest = ctx.destination(job.target)
    files = [ctx.results_dir / f for f in job.payload.get("files", [])]
    messages = {k: ctx.results_dir / v for k, v in job.payload.get("messages", {}).items()}
    sent: dict[str, Any] = {"destination": dest.name, "kind": dest.kind}
    try:
        if dest.kind == "dicom":
            from medsight.serving.dicom_send import RemoteNode, send_instances

            assert dest.ae_title and dest.host and dest.port
            report = send_instances(
                RemoteNode(dest.ae_title, dest.host, dest.port),
                files,
                calling_ae=dest.calling_ae or ctx.config.dicom.ae_title,
            )
            if report.failed:
                raise Retryable(f"{dest.name} refused {len(report.failed)} of {len(files)} object(s): {report.failed}")
            sent["instances"] = len(files)
        elif dest.kind == "dicomweb":
            from medsight.serving.stow_out import stow

            assert dest.url
            stow(dest.url, files, token=dest.token())
            sent["instances"] = len(files)
        elif dest.kind == "fhir":
            from fhir.resources.R4B.diagnosticreport import DiagnosticReport

            from medsight.serving.fhir_out import post_report

            assert dest.url
            fhir_report = DiagnosticReport.model_validate(json.loads(messages["fhir"].read_text(encoding="utf-8")))
            post_report(dest.url, fhir_report, token=dest.token())
            sent["messages"] = 1
        elif dest.kind == "hl7":
            from medsight.serving.hl7_out import send_mllp, with_sender

            assert dest.host and dest.port
            # bytes, not read_text(): text mode turns the segment separator CR into LF (one long MSH segment)
            text = messages["hl7"].read_bytes().decode("utf-8")
            message = with_sender(text, dest.application, dest.facility)
            send_mllp(dest.host, dest.port, message)
            sent["messages"] = 1
    except DestinationUnavailable as exc:
        raise Retryable(f"{dest.name}: {exc}") from exc
    ctx.audit.append(
        actor="medsight",
        action="result sent",
        target={"study": job.study_uid, "destination": dest.name, "route": job.payload.get("route")},
        outcome="ok",
    )
    return sent
