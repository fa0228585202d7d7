"""The reader's worklist: studies with the AI's findings, its job state, and a priority to read them in.

Everything is read from what the service already keeps, so nothing can drift: the study store (studies, series),
the job queue (``inference`` jobs give the AI status), the result folders the worker wrote
(``<results>/<study>/<route>-<job id>/predictions.json`` and the DICOM objects beside it) and the verdict table.
Only the newest result folder of each route counts (a re-run supersedes the earlier one).

A *finding* is one thing the model said about one input: for classification and outcome the decision on an image
(multi-label: one finding per label), for detection the boxes on an image, for segmentation each structure of a
series. Its id, ``<route>-<job id>/<entry>[/<label index>]``, is stable for as long as the result folder exists.

Priority (higher first; the reason is given in words beside it):

- a positive finding (at or above the model's operating point): ``2 + p`` with ``p`` its probability (1 when the
  model gives none), so the most certain positives come first;
- a deferred or uncertain result (``defer_to_radiologist`` or ``flag_for_review``): ``+ 1.5``;
- the AI failed: at least ``1`` (read without AI help); AI queued or running: ``0.75``; no AI route: ``0.25``;
- done, negative and certain: ``0.5``;
- a study already reviewed goes to the end (``- 10``).

Ties are broken by the time the study was received, oldest first.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom

from medsight.errors import MedsightError

if TYPE_CHECKING:
    from medsight.serving.jobs import Job
    from medsight.serving.store import StudyStore

#: Labels taken as "no finding" when a multi-class model has no operating point to say which class is positive.
NEGATIVE_LABELS = frozenset({"normal", "negative", "healthy", "no finding", "none", "background", "benign"})
AI_STATES = ("none", "queued", "running", "done", "failed")
log = logging.getLogger("medsight.serve")
_FOLDER = re.compile(r"^(?P<route>.+)-(?P<job>\d+)$")


@dataclass(frozen=True)
class Overlay:
    """What the viewer draws for a finding: a SEG segment, a heatmap Secondary Capture, boxes, or nothing."""

    kind: str = "none"
    series_uid: str | None = None
    sop_uid: str | None = None
    segment_number: int | None = None
    boxes: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "series_uid": self.series_uid,
            "sop_uid": self.sop_uid,
            "segment_number": self.segment_number,
            "boxes": [dict(b) for b in self.boxes],
        }


@dataclass(frozen=True)
class AiFinding:
    """One finding of the AI on one study, with where it came from (result folder, SR, source images)."""

    finding_id: str
    model: str
    model_version: str
    bundle_checksum: str
    task: str
    label: str
    probability: float | None
    operating_point: dict[str, Any] | None
    positive: bool
    defer: bool
    label_names: tuple[str, ...]
    source_series_uid: str | None
    source_sop_uids: tuple[str, ...]
    ai_sr_sop_uid: str | None
    ai_sr_file: str | None  # relative to the results folder
    overlay: Overlay = field(default_factory=Overlay)
    summary: str = ""

    def to_json(self, *, detail: bool = False) -> dict[str, Any]:
        """The worklist entry; ``detail`` adds what the study view needs (overlay, provenance, sources)."""
        out: dict[str, Any] = {
            "finding_id": self.finding_id,
            "model": self.model,
            "model_version": self.model_version,
            "label": self.label,
            "probability": self.probability,
            "operating_point": self.operating_point,
            "positive": self.positive,
            "defer": self.defer,
        }
        if detail:
            out |= {
                "bundle_checksum": self.bundle_checksum,
                "model_card_url": f"/api/models/{self.model}/card",
                "task": self.task,
                "label_names": list(self.label_names),
                "summary": self.summary,
                "overlay": self.overlay.to_json(),
                "source_series_uid": self.source_series_uid,
                "source_sop_uids": list(self.source_sop_uids),
                "ai_sr_sop_uid": self.ai_sr_sop_uid,
            }
        return out


# ---------------------------------------------------------------------------------------------------- results


@functools.lru_cache(maxsize=4096)
def _header(path: Path, stamp: tuple[int, int]) -> tuple[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID", "SeriesInstanceUID"])
    return str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)


def object_uids(path: Path) -> tuple[str, str]:
    """(SOP Instance UID, Series Instance UID) of a result object (cached: result files are written once)."""
    st = path.stat()
    return _header(path, (st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=1024)
def _sr_identity(path: Path, stamp: tuple[int, int]) -> tuple[str, str]:
    from medsight.serving.dicom_objects import read_sr

    found = read_sr(path)
    return (found[0].model_version, found[0].model_checksum) if found else ("", "")


@functools.lru_cache(maxsize=64)
def _bundle_identity(bundle: str) -> tuple[str, str]:
    from medsight.serving.provenance import AlgorithmIdentity

    try:
        identity = AlgorithmIdentity.from_bundle(bundle)
    except MedsightError:
        return "", ""
    return identity.version, identity.checksum


def _identity(sr: Path | None, bundle: str) -> tuple[str, str]:
    """(version, bundle checksum) of the model that made a result: from its SR, else from its bundle folder."""
    if sr is not None and sr.is_file():
        st = sr.stat()
        try:
            found = _sr_identity(sr, (st.st_mtime_ns, st.st_size))
        except MedsightError:
            found = ("", "")
        if found[1]:
            return found
    return _bundle_identity(bundle) if bundle else ("", "")


def result_folders(results_dir: Path, study_uid: str) -> dict[str, tuple[int, Path]]:
    """The newest result folder of each route for a study: ``{route: (job id, folder)}``."""
    newest: dict[str, tuple[int, Path]] = {}
    root = results_dir / study_uid
    if not root.is_dir():
        return newest
    for folder in root.iterdir():
        m = _FOLDER.match(folder.name)
        if not m or not (folder / "predictions.json").is_file():
            continue
        route, job = m.group("route"), int(m.group("job"))
        if route not in newest or job > newest[route][0]:
            newest[route] = (job, folder)
    return newest


def _sources(store: StudyStore, study_uid: str, name: str) -> tuple[str | None, tuple[str, ...]]:
    """The series and SOP instances an input was: the store names files ``<SOP UID>.dcm`` and series folders by
    their UID, so the entry's ``input`` says which."""
    if name.endswith(".dcm"):
        inst = store.instance(name[: -len(".dcm")])
        if inst is None or inst.study_uid != study_uid:
            return None, ()
        return inst.series_uid, (inst.sop_uid,)
    found = store.instances(study_uid, name)
    return (name, tuple(i.sop_uid for i in found)) if found else (None, ())


def _finite(value: Any) -> float | None:
    """A number from predictions.json, None when missing or not finite (NaN is valid JSON to Python, not to a
    browser: one NaN probability made every worklist request fail)."""
    if value is None or isinstance(value, bool):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def read_findings(store: StudyStore, results_dir: Path, study_uid: str) -> list[AiFinding]:
    """Every finding of the newest result folder of each route, in route then entry order."""
    out: list[AiFinding] = []
    for route, (_job, folder) in sorted(result_folders(results_dir, study_uid).items()):
        try:
            doc = json.loads((folder / "predictions.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a folder being replaced; the next request sees it whole
        entries = doc.get("predictions") if isinstance(doc, dict) else None
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
            try:
                out.extend(_entry_findings(store, results_dir, study_uid, route, folder, doc, index, entry))
            except (TypeError, ValueError, KeyError, AttributeError, IndexError, MedsightError) as exc:
                # one odd entry (a hand edit, an older writer) must not take the worklist down for every study
                log.warning("result %s entry %d left out of the worklist: %s", folder.name, index, type(exc).__name__)
    return out


def superseded_by(results_dir: Path, study_uid: str, finding_id: str) -> str | None:
    """The result folder (``<route>-<job id>``) of the re-run that replaced the one ``finding_id`` came from, or None
    when that folder is the current one or never existed."""
    folder = finding_id.split("/", 1)[0]
    m = _FOLDER.match(folder)
    if not m or not (results_dir / study_uid / folder / "predictions.json").is_file():
        return None
    job, current = result_folders(results_dir, study_uid).get(m.group("route"), (None, None))
    return current.name if current is not None and job != int(m.group("job")) else None


def reviewed(findings: Sequence[AiFinding], judged: set[str]) -> bool:
    """Whether every current AI result of a study (each route's newest result folder) has a verdict on one of its
    findings. A re-run that replaced a judged result is not reviewed: its findings are new, and may differ."""
    results: dict[str, bool] = {}
    for f in findings:
        folder = f.finding_id.split("/", 1)[0]
        results[folder] = results.get(folder, False) or f.finding_id in judged
    return bool(results) and all(results.values())


def _entry_findings(
    store: StudyStore,
    results_dir: Path,
    study_uid: str,
    route: str,
    folder: Path,
    doc: dict[str, Any],
    index: int,
    entry: dict[str, Any],
) -> list[AiFinding]:
    task = str(doc.get("task", ""))
    dicom = {k: v for k, v in (entry.get("dicom") or {}).items() if isinstance(v, str) and v}
    sr = folder / dicom["sr"] if "sr" in dicom else None
    version, checksum = _identity(sr, str(doc.get("bundle", "")))
    sr_uid = object_uids(sr)[0] if sr is not None and sr.is_file() else None
    series_uid, sops = _sources(store, study_uid, str(entry.get("input", "")))
    defer = bool(entry.get("defer_to_radiologist") or entry.get("flag_for_review"))
    base: dict[str, Any] = {
        "model": route,
        "model_version": version,
        "bundle_checksum": checksum,
        "task": task,
        "defer": defer,
        "source_series_uid": series_uid,
        "source_sop_uids": sops,
        "ai_sr_sop_uid": sr_uid,
        "ai_sr_file": str(sr.relative_to(results_dir)) if sr is not None and sr.is_file() else None,
        "summary": str(entry.get("summary", "")),
    }
    fid = f"{folder.name}/{index}"
    overlay = Overlay()
    if "secondary_capture" in dicom and (folder / dicom["secondary_capture"]).is_file():
        sc_sop, sc_series = object_uids(folder / dicom["secondary_capture"])
        overlay = Overlay("heatmap", sc_series, sc_sop)
    probabilities = {str(k): _finite(v) for k, v in (entry.get("probabilities") or {}).items()}
    names = tuple(probabilities)
    if any(p is None for p in probabilities.values()):
        base["defer"] = True  # a model that gave no number (NaN) decided nothing: the reader does
    if task in ("classification", "outcome"):
        decision = entry.get("decision")
        point = entry.get("operating_point")
        if isinstance(decision, list):  # multi-label: one finding per label
            return [
                AiFinding(
                    finding_id=f"{fid}/{k}",
                    label=name,
                    probability=p,
                    operating_point=None,
                    positive=name in decision,
                    label_names=(name,),
                    overlay=overlay,
                    **base,
                )
                for k, (name, p) in enumerate(probabilities.items())
            ]
        label = str(decision)
        if isinstance(point, dict) and "on" in point and "threshold" in point:
            positive_label = str(point["on"]) if point["on"] in probabilities else (names[-1] if names else label)
            p_positive = probabilities.get(positive_label, _finite(entry.get("probability")))
            positive = p_positive is not None and p_positive >= float(point["threshold"])
            point = {k: point[k] for k in ("threshold", "method", "on") if k in point}
            if positive_label != point.get("on"):
                point["on"] = positive_label
        else:
            positive = label.strip().lower() not in NEGATIVE_LABELS
            point = None
        return [
            AiFinding(
                finding_id=fid,
                label=label,
                probability=probabilities.get(label),
                operating_point=point,
                positive=positive,
                label_names=names,
                overlay=overlay,
                **base,
            )
        ]
    if task == "detection":
        boxes = [b for b in entry.get("findings", []) if isinstance(b, dict) and len(b.get("box", [])) == 4]
        sop = sops[0] if sops else None
        drawn = tuple(
            {
                "sop_uid": sop,
                "x0": float(b["box"][0]),
                "y0": float(b["box"][1]),
                "x1": float(b["box"][2]),
                "y1": float(b["box"][3]),
                "label": str(b.get("label", "")),
                "score": _finite(b.get("score", 0.0)),
            }
            for b in boxes
        )
        top = max(boxes, key=lambda b: _finite(b.get("score", 0.0)) or 0.0) if boxes else None
        return [
            AiFinding(
                finding_id=fid,
                label=str(top["label"]) if top else "no finding",
                probability=_finite(top["score"]) if top else None,
                operating_point={"threshold": entry["threshold"]} if "threshold" in entry else None,
                positive=bool(boxes),
                label_names=tuple(dict.fromkeys(str(b.get("label", "")) for b in boxes)),
                overlay=Overlay("boxes", series_uid, sop, None, drawn) if drawn else Overlay(),
                **base,
            )
        ]
    if task == "segmentation":
        labels = [str(v) for v in entry.get("labels", [])]
        amounts = entry.get("amounts") or {}
        seg = folder / dicom["seg"] if "seg" in dicom else None
        seg_uids = object_uids(seg) if seg is not None and seg.is_file() else None
        return [
            AiFinding(
                finding_id=f"{fid}/{k}",
                label=name,
                probability=None,
                operating_point=None,
                positive=(_finite(amounts.get(name, 0.0)) or 0.0) > 0.0,
                label_names=tuple(labels),
                overlay=Overlay("seg", seg_uids[1], seg_uids[0], k) if seg_uids else Overlay(),
                **base,
            )
            for k, name in enumerate(labels)
            if k > 0
        ]
    return []


# ---------------------------------------------------------------------------------------------------- worklist


def ai_status(jobs: Iterable[Job], has_results: bool) -> str:
    """none | queued | running | done | failed, from the study's inference jobs (running and waiting win)."""
    states = {str(getattr(j.state, "value", j.state)) for j in jobs if j.kind == "inference"}
    if "running" in states:
        return "running"
    if states & {"queued", "failed"}:  # "failed" in the queue is an attempt waiting for its retry
        return "queued"
    if "dead" in states:
        return "failed"
    if "done" in states or has_results:
        return "done"
    return "none"


def priority(findings: Sequence[AiFinding], status: str, reviewed: bool) -> tuple[float, str]:
    """The study's priority and why (see the module's docstring for the rule)."""
    positives = [f for f in findings if f.positive]
    deferred = [f for f in findings if f.defer]
    score, reasons = 0.0, []
    if positives:
        top = max(positives, key=lambda f: f.probability if f.probability is not None else 1.0)
        p = top.probability if top.probability is not None else 1.0
        score += 2.0 + p
        reasons.append(f"positive finding: {top.label}" + (f" (p = {p:.2f})" if top.probability is not None else ""))
    if deferred:
        score += 1.5
        reasons.append("deferred to the radiologist: " + ", ".join(dict.fromkeys(f.label for f in deferred)))
    if not reasons:
        score, reason = {
            "failed": (1.0, "AI failed: read without AI help"),
            "running": (0.75, "AI running"),
            "queued": (0.75, "AI queued"),
            "none": (0.25, "no AI route for this study"),
        }.get(status, (0.5, "AI negative and certain"))
        reasons.append(reason)
    if reviewed:
        score -= 10.0
        reasons.append("already reviewed")
    return round(score, 4), "; ".join(reasons)
