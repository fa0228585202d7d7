"""The review workstation's HTTP routes (docs/review_api.md is their reference), as one FastAPI router.

``ReviewBackend(...).router(auth)`` is handed to :func:`medsight.serving.http_api.create_app` (``routers=``), so
the review routes share the service's users, tokens and audit log. Patient names and IDs go only to radiologists
and admins and each such view is audited; every verdict is audited; viewers may read but not judge.
"""

# No ``from __future__ import annotations``: FastAPI must evaluate the route signatures.

import dataclasses
import logging
import secrets
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import pydicom
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import Engine

from medsight.errors import MedsightError
from medsight.review import verdicts as verdict_store
from medsight.review.login_throttle import LoginThrottle
from medsight.review.worklist import (
    AI_STATES,
    NEGATIVE_LABELS,
    AiFinding,
    ai_status,
    priority,
    read_findings,
    reviewed,
    superseded_by,
)
from medsight.serving.audit import AuditLog
from medsight.serving.security import Authorizer, Principal, UserDirectory

log = logging.getLogger("medsight.serve")

#: Lifetime of a token issued by ``POST /api/login`` (a working day).
LOGIN_TOKEN_S = 8 * 3600.0
#: Studies the worklist looks at before filtering (newest received first).
WORKLIST_SCAN = 2000
#: The model card and agreement pages are reports (inline CSS, figures as data: URIs) served from the service's
#: origin; a bundle's own card.html is a file a site copied in. The sandbox runs no script and gives the page no
#: access to the origin (the reader's token, the API), whatever a class name or a copied card holds.
REPORT_PAGE_HEADERS = {
    "Content-Security-Policy": "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
}


class LoginIn(BaseModel):
    user: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class VerdictIn(BaseModel):
    finding_id: str = Field(min_length=1, max_length=300)
    decision: Literal["agree", "disagree", "edit"]
    comment: str = Field(default="", max_length=verdict_store.MAX_COMMENT)
    seconds_spent: float | None = Field(default=None, ge=0, lt=verdict_store.MAX_SECONDS_SPENT, allow_inf_nan=False)
    edit: dict[str, Any] | None = None


@dataclass
class ReviewBackend:
    """What the review routes read and write: the service's database, store, queue, audit log and results.

    ``models()`` maps each model name (a route name) to its bundle folder, read per request so a promoted bundle
    is seen at once; ``send_to`` names the ``[review]`` destinations the reader's objects are exported to
    (``queue`` must be given for that).
    """

    engine: Engine
    store: Any  # medsight.serving.store.StudyStore
    audit: AuditLog
    users: UserDirectory
    results_dir: Path
    queue: Any = None  # medsight.serving.jobs.JobQueue
    models: Callable[[], Mapping[str, Path]] = dict
    send_to: Sequence[str] = ()
    ae_title: str = "MEDSIGHT"
    clock: Callable[[], float] = field(default=time.time)
    throttle: LoginThrottle = field(default_factory=LoginThrottle)

    def router(self, auth: Authorizer) -> APIRouter:
        """The routes, admitting requests through ``auth`` (the service's authoriser)."""
        return _routes(self, auth)


def _iso(stamp: float | None) -> str | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds")


def _routes(b: ReviewBackend, auth: Authorizer) -> APIRouter:
    router = APIRouter()
    Viewer = Annotated[Principal, Depends(auth.require("viewer"))]
    Reader = Annotated[Principal, Depends(auth.require("radiologist"))]

    def record(who: str, action: str, target: dict[str, Any], outcome: str = "ok") -> None:
        b.audit.append(actor=who, action=action, target=target, outcome=outcome)

    # ---- log-in ----------------------------------------------------------------------------------------------

    @router.post("/api/login", summary="exchange a user name and password for an 8-hour bearer token")
    def login(body: LoginIn, request: Request) -> JSONResponse:
        peer = request.client.host if request.client else "-"
        wait = b.throttle.retry_after(body.user, peer)
        if wait is not None:
            record("-", "login", {"user": body.user, "peer": peer}, "429: too many failed log-ins")
            raise HTTPException(
                status_code=429,
                detail=f"too many failed log-ins: try again in {int(wait) + 1} s",
                headers={"Retry-After": str(int(wait) + 1)},
            )
        role = b.users.verify_password(body.user, body.password)
        if role is None:
            b.throttle.failed(body.user, peer)
            record("-", "login", {"user": body.user, "peer": peer}, "401: wrong user name or password")
            raise HTTPException(
                status_code=401,
                detail="wrong user name or password",
                headers={"WWW-Authenticate": 'Bearer realm="medsight"'},
            )
        b.throttle.succeeded(body.user)
        token = b.users.create_token(body.user, expires_in_s=LOGIN_TOKEN_S)
        record(body.user, "login", {"token": token.split(".")[0], "peer": peer})
        return JSONResponse(
            {"token": token, "user": body.user, "role": role, "expires_at": _iso(b.clock() + LOGIN_TOKEN_S)}
        )

    # ---- worklist ------------------------------------------------------------------------------------------

    def study_entry(
        row: Any, findings: list[AiFinding], jobs: list[Any], was_reviewed: bool, identifiers: bool
    ) -> dict[str, Any]:
        status = ai_status(jobs, bool(findings))
        score, reason = priority(findings, status, was_reviewed)
        modalities = sorted({s.modality for s in b.store.series(row.study_uid) if s.modality and not s.is_result})
        entry: dict[str, Any] = {"study_uid": row.study_uid}
        if identifiers:
            entry |= {"patient_name": row.patient_name, "patient_id": row.patient_id}
        return entry | {
            "modalities": modalities,
            "study_date": row.study_date,
            "study_description": row.study_description,
            "received_at": _iso(row.first_received),
            "ai_status": status,
            "findings": [f.to_json() for f in findings],
            "priority": score,
            "priority_reason": reason,
            "reviewed": was_reviewed,
            "_received": row.first_received,
        }

    def worklist_entries(
        who: Principal,
        modality: str | None,
        status: str | None,
        model: str | None,
        wanted: str | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        identifiers = who.may("radiologist")
        judged = verdict_store.judged_findings(b.engine)
        out = []
        for row in b.store.studies(limit=WORKLIST_SCAN, modality=modality or None):
            findings = read_findings(b.store, b.results_dir, row.study_uid)
            was_reviewed = reviewed(findings, judged.get(row.study_uid, set()))
            if wanted is not None and was_reviewed != (wanted == "yes"):
                continue
            jobs = b.queue.list(study_uid=row.study_uid) if b.queue is not None else []
            # a model's studies include those it has not answered yet (queued, running, failed), so that
            # model=cr&status=failed lists the studies to read without that model's help
            answered = model is None or any(f.model == model for f in findings)
            if not answered and not any(j.kind == "inference" and j.target == model for j in jobs):
                continue
            entry = study_entry(row, findings, jobs, was_reviewed, identifiers)
            if entry["modalities"] == [] and not findings:
                continue  # only medsight's own objects: nothing to read
            if status is not None and entry["ai_status"] != status:
                continue
            out.append(entry)
        out.sort(key=lambda e: (-e["priority"], e["_received"]))
        for e in out:
            del e["_received"]
        return out[:limit]

    @router.get("/api/worklist", summary="studies to read, most urgent first (viewer; names for radiologists)")
    async def worklist(
        who: Viewer,
        modality: str | None = None,
        status: Annotated[str | None, Query(pattern="^(" + "|".join(AI_STATES) + ")$")] = None,
        model: str | None = None,
        reviewed: Annotated[str | None, Query(pattern="^(yes|no)$")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> JSONResponse:
        studies = await run_in_threadpool(worklist_entries, who, modality, status, model, reviewed, limit)
        filters = [
            k for k, v in (("modality", modality), ("status", status), ("model", model), ("reviewed", reviewed)) if v
        ]
        record(
            who.user,
            "worklist",
            {
                "studies": [s["study_uid"] for s in studies],
                "identifiers_shown": who.may("radiologist"),
                "filters": filters,
            },
        )
        return JSONResponse({"studies": studies})

    # ---- one study -----------------------------------------------------------------------------------------

    def require_study(who: Principal, action: str, study: str) -> Any:
        found = b.store.study(study)
        if found is None:
            record(who.user, action, {"study": study}, "not_found")
            raise HTTPException(status_code=404, detail=f"study {study} not found")
        return found

    def review_of(who: Principal, study: str) -> dict[str, Any]:
        require_study(who, "review.study", study)
        findings = read_findings(b.store, b.results_dir, study)
        current = {f.finding_id for f in findings}
        by_finding: dict[str, list[dict[str, Any]]] = {}
        superseded: list[dict[str, Any]] = []
        for v in verdict_store.list_verdicts(b.engine, study_uid=study):
            if v.finding_id in current:
                by_finding.setdefault(v.finding_id, []).append(v.to_json())
            else:  # on an AI result a re-run replaced: kept in sight, not shown as the new result's
                superseded.append(v.to_json())
        series = [
            {
                "series_uid": s.series_uid,
                "modality": s.modality,
                "description": s.series_description,
                "series_number": s.series_number,
                "n_instances": s.n_instances,
                "is_result": bool(s.is_result),
                "sop_class_uid": s.sop_classes[0] if s.sop_classes else None,
            }
            for s in b.store.series(study)
        ]
        jobs = b.queue.list(study_uid=study) if b.queue is not None else []
        record(who.user, "review.study", {"study": study, "findings": len(findings)})
        return {
            "study_uid": study,
            "ai_status": ai_status(jobs, bool(findings)),
            "series": series,
            "findings": [f.to_json(detail=True) | {"verdicts": by_finding.get(f.finding_id, [])} for f in findings],
            "superseded_verdicts": superseded,
        }

    @router.get("/api/studies/{study}/review", summary="a study's series, AI findings and verdicts (viewer)")
    async def study_review(study: str, who: Viewer) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(review_of, who, study))

    # ---- verdicts ------------------------------------------------------------------------------------------

    @router.post(
        "/api/studies/{study}/verdicts",
        status_code=201,
        summary="the reader's verdict on one finding: stored, written as SR (+ SEG), exported (radiologist)",
    )
    async def post_verdict(study: str, body: VerdictIn, who: Reader) -> JSONResponse:
        try:
            result = await run_in_threadpool(submit_verdict, b, who, study, body)
        except SupersededFinding as exc:
            record(who.user, "review.verdict", {"study": study, "finding": body.finding_id}, "409: superseded")
            raise HTTPException(status_code=409, detail=str(exc)) from None
        except LookupError as exc:
            record(who.user, "review.verdict", {"study": study, "finding": body.finding_id}, "not_found")
            raise HTTPException(status_code=404, detail=str(exc)) from None
        except MedsightError as exc:
            record(who.user, "review.verdict", {"study": study, "finding": body.finding_id}, "400")
            raise HTTPException(status_code=400, detail=exc.problem) from None
        return JSONResponse(result, status_code=201)

    # ---- models --------------------------------------------------------------------------------------------

    def bundle_of(name: str) -> Path:
        found = b.models().get(name)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no model {name!r} (models are the service's routes)")
        return Path(found)

    @router.get("/api/models/{name}/card", summary="the model card of a model's bundle, as HTML (viewer)")
    def model_card(name: str, who: Viewer) -> HTMLResponse:
        from medsight.review.model_card import model_card_html

        bundle = bundle_of(name)
        try:
            page = model_card_html(bundle, name)
        except MedsightError as exc:
            raise HTTPException(status_code=404, detail=f"no model card for {name!r}: {exc.problem}") from None
        record(who.user, "review.card", {"model": name})
        return HTMLResponse(page, headers=REPORT_PAGE_HEADERS)

    def agreement_of(name: str) -> Any:
        from medsight.review.agreement import agreement

        verdicts = verdict_store.list_verdicts(b.engine, model=name)
        if name not in b.models() and not verdicts:
            raise HTTPException(status_code=404, detail=f"no model {name!r} and no verdicts about it")
        return agreement(name, verdicts)

    @router.get("/api/models/{name}/agreement", summary="how readers judge a model, with 95% CIs (viewer)")
    async def model_agreement(name: str, who: Viewer) -> JSONResponse:
        found = await run_in_threadpool(agreement_of, name)
        record(who.user, "review.agreement", {"model": name})
        return JSONResponse(found.to_json())

    @router.get("/review/agreement/{name}", summary="the agreement page with plots, HTML (viewer)")
    async def agreement_page(name: str, who: Viewer) -> HTMLResponse:
        from medsight.review.agreement import render_page

        found = await run_in_threadpool(agreement_of, name)
        record(who.user, "review.agreement", {"model": name, "page": True})
        return HTMLResponse(await run_in_threadpool(render_page, found), headers=REPORT_PAGE_HEADERS)

    return router


# ---------------------------------------------------------------------------------------------------- verdicts


class SupersededFinding(LookupError):
    """The finding judged belongs to an AI result a re-run has replaced (409: the reader must see the new one)."""


def reader_outcome(finding: AiFinding, decision: str, edit: Mapping[str, Any] | None) -> tuple[str, bool]:
    """(the label the reader settled on, whether that is a positive finding).

    agree: the model's; disagree: the other label of a two-label model, else ``not <label>``, and the opposite
    positivity; edit: the edited label (checked against the model's labels), the boxes' labels (positive when
    any box is left) or the mask's finding (positive when any pixel is drawn).
    """
    if decision == "agree":
        return finding.label, finding.positive
    if decision == "disagree":
        others = [n for n in finding.label_names if n != finding.label]
        if finding.task in ("classification", "outcome") and len(finding.label_names) == 2 and len(others) == 1:
            return others[0], not finding.positive
        return f"not {finding.label}", not finding.positive
    assert edit is not None
    if "label" in edit:
        label = str(edit["label"])
        if finding.task in ("classification", "outcome") and len(finding.label_names) > 1:
            if label not in finding.label_names:
                raise MedsightError(f"label {label!r} is not one of the model's: {', '.join(finding.label_names)}")
            point = finding.operating_point or {}
            if "on" in point:
                return label, label == point["on"]
        return label, label.strip().lower() not in NEGATIVE_LABELS
    if "boxes" in edit:
        labels = [str(bx.get("label") or finding.label) for bx in edit["boxes"]]
        return (max(set(labels), key=labels.count) if labels else "no finding"), bool(labels)
    return finding.label, bool(edit.get("_drawn"))


def _check_edit(edit: Mapping[str, Any] | None, decision: str) -> None:
    if decision != "edit":
        if edit:
            raise MedsightError(f"a {decision!r} verdict carries no edit; use decision 'edit'")
        return
    if not edit or len(edit) != 1 or next(iter(edit)) not in ("label", "boxes", "mask"):
        raise MedsightError('an edit is one of {"label": ...}, {"boxes": [...]} or {"mask": {...}}')
    if "label" in edit and (not isinstance(edit["label"], str) or not edit["label"].strip()):
        raise MedsightError("an edited label must be a non-empty string")
    if "boxes" in edit:
        boxes = edit["boxes"]
        if not isinstance(boxes, list) or not all(isinstance(bx, dict) for bx in boxes):
            raise MedsightError("edit.boxes must be a list of {sop_uid, x0, y0, x1, y1, label}")
        for n, bx in enumerate(boxes):
            try:
                [float(bx[k]) for k in ("x0", "y0", "x1", "y1")]
                str(bx["sop_uid"])
            except (KeyError, TypeError, ValueError):
                raise MedsightError(f"edit.boxes[{n}] needs sop_uid and numeric x0, y0, x1, y1") from None
            label = bx.get("label")
            if label is not None and not isinstance(label, str):  # it goes into the reader's SR and the statistics
                raise MedsightError(f"edit.boxes[{n}].label must be a string (or left out for the finding's label)")
            frame = bx.get("frame")
            if frame is not None and (isinstance(frame, bool) or not isinstance(frame, int) or frame < 1):
                raise MedsightError(f"edit.boxes[{n}].frame must be a frame number (1-based), or left out")
    if "mask" in edit and (not isinstance(edit["mask"], dict) or not edit["mask"]):
        raise MedsightError('edit.mask maps source image SOP Instance UIDs to base64 PNGs: {"<uid>": "<png>"}')


def _write_reader_objects(
    b: ReviewBackend, who: Principal, finding: AiFinding, body: VerdictIn, sources: list[Any], folder: Path
) -> tuple[dict[str, Any] | None, dict[str, str], str, bool]:
    """The reader's mask PNGs, SR and SEG in ``folder``: (the edit as recorded, files relative to the results
    folder, the reader's label, whether it is positive)."""
    from medsight.review.reader_objects import ReaderBox, decode_mask, mask_png, write_reader_seg, write_reader_sr

    by_sop = {str(s.SOPInstanceUID): s for s in sources}
    ai_sr = pydicom.dcmread(b.results_dir / finding.ai_sr_file) if finding.ai_sr_file else None
    rel = lambda p: str(p.relative_to(b.results_dir))  # noqa: E731
    edit: dict[str, Any] | None = None if body.edit is None else dict(body.edit)
    masks = {}
    boxes: list[ReaderBox] = []
    if edit is not None and "mask" in edit:
        saved = {}
        for uid, encoded in edit["mask"].items():
            if uid not in by_sop:
                raise MedsightError("a mask is on an image that is not one of the finding's images")
            ds = by_sop[uid]
            masks[uid] = decode_mask(str(encoded), int(ds.Rows), int(ds.Columns))
            path = folder / f"mask_{uid}.png"
            path.write_bytes(mask_png(masks[uid]))
            saved[uid] = rel(path)
        edit = {"mask": saved}
    if edit is not None and "boxes" in edit:
        boxes = [
            ReaderBox(
                str(bx["sop_uid"]),
                float(bx["x0"]),
                float(bx["y0"]),
                float(bx["x1"]),
                float(bx["y1"]),
                str(bx.get("label") or finding.label),
                bx.get("frame"),
            )
            for bx in edit["boxes"]
        ]
        edit = {"boxes": [dataclasses.asdict(bx) for bx in boxes]}
    drawn = {"_drawn": any(m.any() for m in masks.values())} if masks else {}
    reader_label, reader_positive = reader_outcome(finding, body.decision, None if edit is None else {**edit, **drawn})
    sr_path = write_reader_sr(
        ai_sr,
        sources,
        folder / "reader_sr.dcm",
        reader=who.user,
        decision=body.decision,
        ai_label=finding.label,
        reader_label=reader_label,
        comment=body.comment,
        boxes=boxes,
        finding_id=finding.finding_id,
    )
    files = {"sr": rel(sr_path)}
    if masks:
        seg_path = write_reader_seg(masks, sources, folder / "reader_seg.dcm", reader=who.user, label=finding.label)
        files["seg"] = rel(seg_path)
    return edit, files, reader_label, reader_positive


def submit_verdict(b: ReviewBackend, who: Principal, study: str, body: VerdictIn) -> dict[str, Any]:
    """Write the reader's objects, store them, record the verdict, audit it and queue its exports.

    Everything that can refuse the verdict is checked before the first object is written, and a failure while
    writing removes the verdict's folder: a refused verdict leaves no reader SR in the store (where DICOMweb and the
    PACS export would find it) and no files behind."""
    from medsight.serving.worker import EXPORT

    if b.store.study(study) is None:
        raise LookupError(f"study {study} not found")
    finding = next((f for f in read_findings(b.store, b.results_dir, study) if f.finding_id == body.finding_id), None)
    if finding is None:
        newer = superseded_by(b.results_dir, study, body.finding_id)
        if newer is not None:
            raise SupersededFinding(
                f"finding {body.finding_id!r} is from an AI result that a re-run replaced ({newer}): "
                "reload the study and judge the current finding"
            )
        raise LookupError(f"finding {body.finding_id!r} not found in study {study}")
    _check_edit(body.edit, body.decision)
    verdict_store.check_verdict(
        study_uid=study,
        finding_id=finding.finding_id,
        model=finding.model,
        reader=who.user,
        decision=body.decision,
        edit=body.edit,
        comment=body.comment,
        seconds_spent=body.seconds_spent,
        probability=finding.probability,
    )
    instances = [b.store.instance(uid) for uid in finding.source_sop_uids]
    sources = [pydicom.dcmread(i.path, stop_before_pixels=True) for i in instances if i is not None]
    if not sources:
        raise MedsightError("the finding's source images are no longer in the store")

    folder = b.results_dir / study / f"review-{int(b.clock() * 1000)}-{secrets.token_hex(3)}"
    folder.mkdir(parents=True)
    try:
        written = _write_reader_objects(b, who, finding, body, sources, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    edit, files, reader_label, reader_positive = written
    uids: dict[str, str] = {}
    for kind, name in files.items():
        ds = pydicom.dcmread(b.results_dir / name)
        b.store.store(ds, calling_ae=b.ae_title, peer="medsight-review", result=True)
        uids[kind] = str(ds.SOPInstanceUID)
    verdict = verdict_store.record_verdict(
        b.engine,
        study_uid=study,
        finding_id=finding.finding_id,
        model=finding.model,
        model_version=finding.model_version,
        bundle_checksum=finding.bundle_checksum,
        label=finding.label,
        probability=finding.probability,
        ai_positive=finding.positive,
        reader=who.user,
        role=who.role,
        decision=body.decision,
        reader_label=reader_label,
        reader_positive=reader_positive,
        comment=body.comment,
        seconds_spent=body.seconds_spent,
        edit=edit,
        source_sop_uids=finding.source_sop_uids,
        reader_sr_sop_uid=uids.get("sr"),
        reader_seg_sop_uid=uids.get("seg"),
        files=files,
        submitted_at=b.clock(),
    )
    b.audit.append(
        actor=who.user,
        action="review.verdict",
        target={
            "study": study,
            "finding": finding.finding_id,
            "model": finding.model,
            "decision": body.decision,
            "verdict": verdict.verdict_id,
            "reader_sr": uids.get("sr"),
            "reader_seg": uids.get("seg"),
        },
    )
    export_jobs = []
    if b.queue is not None:
        for dest in b.send_to:
            job = b.queue.enqueue(
                EXPORT,
                study,
                dest,
                {"route": "review", "verdict": verdict.verdict_id, "files": list(files.values()), "messages": {}},
                dedupe_key=f"review/{verdict.verdict_id}>{dest}",
            )
            export_jobs.append(job.id)
    log.info("verdict %d recorded (%s), %d export job(s)", verdict.verdict_id, body.decision, len(export_jobs))
    return {
        "verdict_id": verdict.verdict_id,
        "reader_sr_sop_uid": uids.get("sr"),
        "reader_seg_sop_uid": uids.get("seg"),
        "export_jobs": export_jobs,
        "reader_label": reader_label,
    }
