"""``medsight feedback export``: the readers' verdicts on a model's findings as a data set ``medsight train`` reads.

What is exported (classification routes): one row per reviewed finding whose readers settled on a label the model
knows. The image is the finding's source instance read from the service's store (``medsight.io.images``, the reader
``train`` uses) and saved as ``images/<case>.npy`` (pixels only: no DICOM header, so no identifier travels with the
data); the label is the reader's (``reader_label``); ``patient_id`` is a keyed pseudonym of the stored PatientID
(the case's own pseudonym when the study names no patient); ``split`` comes from the model's frozen split
(:mod:`medsight.feedback.splits`). Each reader's newest verdict on a finding counts; a finding whose readers settled
on different labels is left out (and counted), as is a verdict that says only what a finding is not. ``export.json``
beside the manifest lists what was exported and what was left out and why, with no identifiers; the export is
recorded in the service's audit log.

Not exported (said in ``export.json`` as left out): findings of segmentation and detection routes (the readers'
masks and boxes are kept by the service as SEG/SR and PNG files; turning them into training labels is not built yet)
and multi-label findings.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsight.errors import MedsightError
from medsight.feedback.splits import FrozenSplit, feedback_key, pseudonym
from medsight.io.atomic import atomic_dir, write_json, write_text

log = logging.getLogger("medsight.feedback")


@dataclass(frozen=True)
class Case:
    """One exported row, by pseudonyms only."""

    key: str
    patient: str
    label: str
    split: str
    verdicts: int


def feedback_folder(data_dir: Path, model: str) -> Path:
    """Where a model's frozen split lives in the service's data folder."""
    if not model or "/" in model or model.startswith("."):
        raise MedsightError(f"not a model (route) name: {model!r}")
    return Path(data_dir) / "feedback" / model


def export(config_path: Path | None, model: str, out: Path, actor: str = "medsight feedback") -> dict[str, Any]:
    """Write ``out/manifest.csv`` (+ ``images/``, ``manifest.json``, ``export.json``) from ``model``'s verdicts."""
    from medsight.review.verdicts import latest_per_finding, list_verdicts
    from medsight.serving.audit import AuditLog
    from medsight.serving.config import load_config
    from medsight.serving.database import open_database
    from medsight.serving.store import StudyStore

    config = load_config(config_path)
    data_dir = Path(config.service.data_dir)
    try:
        route = config.route(model)
    except KeyError:
        known = ", ".join(r.name for r in config.routes)
        raise MedsightError(f"no route {model!r} in the configuration (routes: {known})") from None
    engine = open_database(config.database.sqlalchemy_url(), data_dir)
    try:
        store = StudyStore(engine, data_dir / "instances")
        verdicts = latest_per_finding(list_verdicts(engine, model=model))
        if not verdicts:
            raise MedsightError(f"no verdicts on model {model!r} yet: nothing to export")
        folder = feedback_folder(data_dir, model)
        key = feedback_key(folder)
        split = FrozenSplit.open(folder / "split.json")
        label_names = list(route.label_names)
        left_out: Counter[str] = Counter()
        by_finding: dict[str, list[Any]] = {}
        for v in verdicts:
            by_finding.setdefault(v.finding_id, []).append(v)
        cases: list[tuple[Case, Path]] = []
        for finding_id, group in by_finding.items():
            reason = _unusable(route.task, route.task_type, label_names, group)
            if reason:
                left_out[reason] += 1
                continue
            v = group[-1]
            source = store.instance(v.source_sop_uids[0])
            if source is None or not source.path.is_file():
                left_out["its source image is no longer in the store"] += 1
                continue
            study = store.study(v.study_uid)
            case_key = pseudonym(key, "case", f"{v.study_uid}/{finding_id}")
            patient = pseudonym(key, "patient", study.patient_id) if study and study.patient_id else case_key
            side = split.side(key, patient)
            cases.append((Case(case_key, patient, v.reader_label, side, len(group)), source.path))
        if not cases:
            raise MedsightError(f"none of the {len(by_finding)} reviewed finding(s) of {model!r} could be exported: "
                                + "; ".join(f"{n} {why}" for why, n in left_out.items()))  # fmt: skip
        summary = _write(out, cases, label_names, route, split, left_out, model, verdicts)
        split.save()  # only once the data set is written: a failed export assigns nothing
        AuditLog(data_dir / "audit.log").append(
            actor=actor,
            action="feedback.export",
            target={"model": model, "cases": len(cases), "left_out": sum(left_out.values())},
            outcome="ok",
        )
        return summary
    finally:
        engine.dispose()


def _unusable(task: str, task_type: str, label_names: Sequence[str], group: Sequence[Any]) -> str | None:
    """Why a finding's verdicts give no training label (None when they give one)."""
    if task != "classification":
        return f"{task} findings (reader masks and boxes are not exported yet)"
    if task_type == "multilabel":
        return "multi-label findings (not exported yet)"
    labels = {v.reader_label for v in group}
    if len(labels) > 1:
        return "readers settled on different labels"
    label = labels.pop()
    if label not in label_names:
        return "the reader said only what the finding is not"
    if not group[-1].source_sop_uids:
        return "the verdict names no source image"
    return None


def _as_saved(image: np.ndarray) -> np.ndarray:
    """``(C, *spatial)`` in the layout the numpy reader reads back as the same image: one channel without its axis,
    a 2D colour image channels-last."""
    if image.shape[0] == 1:
        return image[0]
    if image.ndim == 3 and image.shape[0] == 3:
        return np.moveaxis(image, 0, -1)
    return image


def _write(
    out: Path,
    cases: list[tuple[Case, Path]],
    label_names: list[str],
    route: Any,
    split: FrozenSplit,
    left_out: Counter[str],
    model: str,
    verdicts: Sequence[Any],
) -> dict[str, Any]:
    from medsight.io.images import read_image
    from medsight.training.bundle import load_bundle

    positive = load_bundle(route.bundle).meta.get("positive_class")
    rows = []
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        for case, source in cases:
            image = read_image(source)
            np.save(tmp / "images" / f"{case.key}.npy", _as_saved(image.astype(np.float32)))
            rows.append({"path": f"images/{case.key}.npy", "label": case.label, "patient_id": case.patient,
                         "split": case.split})  # fmt: skip
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["path", "label", "patient_id", "split"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: r["path"]))
        write_text(tmp / "manifest.csv", buf.getvalue())
        if positive is not None:
            write_json(tmp / "manifest.json", {"positive": positive})
        counts = Counter((c.split, c.label) for c, _ in cases)
        summary = {
            "model": model,
            "task": route.task,
            "label_names": label_names,
            "cases": len(cases),
            "by_split": {s: {lab: counts[(s, lab)] for lab in label_names} for s in ("train", "val")},
            "left_out": dict(left_out),
            "verdicts": len(verdicts),
            "bundles_judged": sorted({v.bundle_checksum for v in verdicts}),
            "frozen_split": {
                "file": str(split.path),
                "units": len(split.assignments),
                "new_units": split.added,
                "method": split.to_json()["method"],
                "val_share": split.val_share,
            },
            "labels_from": "each reader's newest verdict per finding (reader_label); findings with conflicting "
            "readers left out",
        }
        write_json(tmp / "export.json", summary)
    return summary
