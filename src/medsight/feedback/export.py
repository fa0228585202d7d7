"""``medsight feedback export``: the readers' verdicts on a model's findings as a data set ``medsight train`` reads.

What is exported, per task of the route (each reader's newest verdict on a finding counts; a finding whose readers
settled on different labels, or on different masks or boxes, is left out and counted):

* **classification**: one row per reviewed finding whose readers settled on a label the model knows. The image is
  the finding's source instance read from the service's store (``medsight.io.images``, the reader ``train`` uses)
  and saved as ``images/<case>.npy``; the label is the reader's (``reader_label``) in ``manifest.csv``
  (``path,label,patient_id,split``). A verdict that says only what a finding is not is left out.
* **segmentation** (2D single-frame sources: CR, DX, US, SC, a single CT/MR slice...): an image/mask *pairs* folder
  the segmentation task reads: ``images/<case>.tif`` (the source pixels as the service's segmentation reader sees
  them, rescaled values, float32 TIFF) and ``labels/<case>.png`` (uint8 label map), plus ``medsight_splits.json``
  (fold 0 = the frozen validation cases, test empty) so training uses the frozen split. The label map is the AI's
  mask (``files["mask"]`` of the finding's result folder) with each judged structure ``k`` set by its verdict: an
  edit with a mask replaces label ``k`` by the reader's drawing; agree keeps it; disagree on a positive finding
  removes it (a false positive). Left out: a disagreement with an empty finding (the reader says something was
  missed but drew nothing), and 3D series (a reader's mask covers only the slices drawn on, so the other slices
  have no reader label).
* **detection**: COCO (``annotations.json`` + ``images/<case>.tif``) the detection task reads; the boxes are the
  reader's edited boxes, the AI's boxes on agree, none on a disagreement with a positive finding (a negative
  image); a disagreement with an image the AI found nothing on is left out. ``images[].metadata`` holds the
  pseudonymous ``patientid`` and the frozen ``split``, which the detection task uses when every image declares one.

In every layout ``patient_id`` is a keyed pseudonym of the stored PatientID (the case's own pseudonym when the study
names no patient) and the split comes from the model's frozen split (:mod:`medsight.feedback.splits`), saved only
once the data set is written. Pixels only leave the store (no DICOM header, so no identifier travels with the
data). ``export.json`` beside the data lists what was exported and what was left out and why, with no identifiers;
the export is recorded in the service's audit log. Multi-label findings are not exported.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from collections.abc import Callable, Sequence
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
    from medsight.review.agreement import counted_verdicts
    from medsight.review.verdicts import list_verdicts
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
        # each reader's newest verdict per image: a reader who judged a result and then its re-run (a new finding id
        # on the same images) gives one case, not two, as the agreement counts them
        verdicts = counted_verdicts(list_verdicts(engine, model=model))
        if not verdicts:
            raise MedsightError(f"no verdicts on model {model!r} yet: nothing to export")
        folder = feedback_folder(data_dir, model)
        key = feedback_key(folder)
        split = FrozenSplit.open(folder / "split.json", key)
        label_names = list(route.label_names)
        left_out: Counter[str] = Counter()
        by_finding: dict[tuple[str, str], list[Any]] = {}
        for v in verdicts:
            by_finding.setdefault((v.study_uid, v.finding_id), []).append(v)
        if route.task in ("segmentation", "detection"):
            results_dir = data_dir / "results"
            write = _write_segmentation if route.task == "segmentation" else _write_detection

            def complete(partial: dict[str, Any]) -> dict[str, Any]:
                """The whole export.json, or an error that leaves no data set behind (raised inside its
                temporary folder)."""
                if not partial["cases"]:
                    reasons = "; ".join(f"{n} {why}" for why, n in left_out.items())
                    raise MedsightError(f"none of the {len(by_finding)} reviewed finding(s) of {model!r} could be "
                                        f"exported: {reasons}")
                return _export_summary(partial, model, route, split, left_out, verdicts)

            summary = write(out, store, results_dir, key, split, by_finding, label_names, left_out, complete)
            split.save()  # only once the data set is written: a failed export assigns nothing
            _audit(data_dir, actor, model, summary["cases"], left_out)
            return summary
        cases: list[tuple[Case, Path]] = []
        for (_study, finding_id), group in by_finding.items():
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
        _audit(data_dir, actor, model, len(cases), left_out)
        return summary
    finally:
        engine.dispose()


def _audit(data_dir: Path, actor: str, model: str, cases: int, left_out: Counter[str]) -> None:
    from medsight.serving.audit import AuditLog

    AuditLog(data_dir / "audit.log").append(
        actor=actor,
        action="feedback.export",
        target={"model": model, "cases": cases, "left_out": sum(left_out.values())},
        outcome="ok",
    )


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
    with atomic_dir(out, written=("export.json",)) as tmp:
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
            "frozen_split": _split_summary(split),
            "labels_from": "each reader's newest verdict per finding (reader_label); findings with conflicting "
            "readers left out",
        }
        write_json(tmp / "export.json", summary)
    return summary


# ------------------------------------------------------------------------------------ segmentation and detection

#: Why a verdict gives no reader label for a segmentation or detection finding.
NOT_DRAWN = "the reader disagreed with an empty finding but drew nothing (what was missed is unknown)"
SERIES_3D = "3D series (the reader's mask covers only the slices drawn on; not exported yet)"
READERS_DIFFER = "readers settled on different masks or boxes"


@dataclass(frozen=True)
class _Entry:
    """A result entry a finding is about: its folder, the entry itself and the source instance."""

    folder: Path
    entry: dict[str, Any]
    label_index: int | None
    source: Any  # the StudyStore instance


def _locate(store: Any, results_dir: Path, study_uid: str, finding_id: str, v: Any) -> _Entry | str:
    """The finding's result entry (``<results>/<study>/<folder>/predictions.json``, entry index, label index)."""
    import json

    parts = finding_id.split("/")
    try:
        folder = results_dir / study_uid / parts[0]
        index = int(parts[1])
        label_index = int(parts[2]) if len(parts) > 2 else None
    except (IndexError, ValueError):
        return "a finding id this export does not understand"
    if "/" in parts[0] or parts[0].startswith(".") or not (folder / "predictions.json").is_file():
        return "its result folder is no longer there"
    entries = json.loads((folder / "predictions.json").read_text(encoding="utf-8")).get("predictions", [])
    if not 0 <= index < len(entries):
        return "its result entry is no longer there"
    if not v.source_sop_uids:
        return "the verdict names no source image"
    if len(v.source_sop_uids) > 1:
        return SERIES_3D
    source = store.instance(v.source_sop_uids[0])
    if source is None or not source.path.is_file():
        return "its source image is no longer in the store"
    return _Entry(folder, entries[index], label_index, source)


def _settled(group: Sequence[Any]) -> Any | str:
    """The verdict the readers settled on (the newest), or why they did not settle."""
    import json

    seen = {(v.decision, json.dumps(v.edit, sort_keys=True), v.reader_label) for v in group}
    if len(seen) > 1:
        # readers who drew differently (or one agreeing, one disagreeing) give no single reader label
        return READERS_DIFFER
    return group[-1]


def _case(key: bytes, split: FrozenSplit, store: Any, study_uid: str, name: str) -> tuple[str, str, str]:
    """(case pseudonym, patient pseudonym, frozen side) of a case named ``name`` within a study."""
    study = store.study(study_uid)
    case_key = pseudonym(key, "case", f"{study_uid}/{name}")
    patient = pseudonym(key, "patient", study.patient_id) if study and study.patient_id else case_key
    return case_key, patient, split.side(key, patient)


def _save_tiff(path: Path, image: np.ndarray) -> None:
    """One channel as float32 TIFF (the values as read, negative ones included), colour as 8-bit RGB PNG's TIFF."""
    from PIL import Image

    if image.ndim == 2:
        Image.fromarray(np.ascontiguousarray(image, np.float32), mode="F").save(path, format="TIFF")
    else:  # (H, W, 3)
        Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8), mode="RGB").save(path, format="TIFF")


def _read_mask_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img)
    return (arr[..., 0] if arr.ndim == 3 else arr) > 0


def _segmentation_labels(e: _Entry, v: Any, results_dir: Path) -> tuple[np.ndarray, np.ndarray] | str:
    """(image (H, W) or (H, W, 3) as the service's segmentation reader sees it, label map (H, W)) with the reader's
    verdict applied to label ``k``, or why none can be made."""
    import nibabel as nib

    from medsight.tasks.segmentation.predict import read_input

    mask_name = (e.entry.get("files") or {}).get("mask")
    if not mask_name or not (e.folder / mask_name).is_file():
        return "the AI's mask is no longer in its result folder"
    read = read_input(Path(e.source.path))
    ai = np.asarray(nib.load(str(e.folder / mask_name)).dataobj)  # type: ignore[attr-defined]
    if read.image.ndim != 4 or read.image.shape[-1] != 1 or ai.ndim != 3 or ai.shape[-1] != 1:
        return SERIES_3D
    # the service's reader gives (C, x=column, y=row, z); rows first, as every 2D image file holds them
    image = np.moveaxis(read.image[:, :, :, 0], 0, -1).transpose(1, 0, 2)
    image = image[..., 0] if image.shape[-1] == 1 else image
    labels = np.ascontiguousarray(ai[:, :, 0].T).astype(np.uint8)
    if labels.shape != image.shape[:2]:
        return "the AI's mask does not match its image"
    k = e.label_index
    if k is None or k <= 0:
        return "a segmentation finding without a structure index"
    if v.decision == "edit":
        drawn = (v.edit or {}).get("mask") or {}
        png = drawn.get(v.source_sop_uids[0])
        if not png:
            return "an edit without a mask on the finding's image"
        reader = _read_mask_png(results_dir / png)
        if reader.shape != labels.shape:
            return "the reader's mask does not match its image"
        labels[labels == k] = 0
        labels[reader] = k
    elif v.decision == "disagree":
        if not v.ai_positive and not np.any(labels == k):
            return NOT_DRAWN
        labels[labels == k] = 0  # a false positive: the structure is not there
    return image, labels


def _write_segmentation(
    out: Path,
    store: Any,
    results_dir: Path,
    key: bytes,
    split: FrozenSplit,
    by_finding: dict[tuple[str, str], list[Any]],
    label_names: list[str],
    left_out: Counter[str],
    complete: Callable[[dict[str, Any]], dict[str, Any]] = dict,
) -> dict[str, Any]:
    """The pairs folder: ``images/<case>.tif``, ``labels/<case>.png``, ``medsight_splits.json``."""
    from PIL import Image

    # one case per result entry: the verdicts on its structures are applied one after the other
    entries: dict[tuple[str, str], list[tuple[Any, _Entry]]] = {}
    for (study_uid, finding_id), group in by_finding.items():
        settled = _settled(group)
        if isinstance(settled, str):
            left_out[settled] += 1
            continue
        found = _locate(store, results_dir, study_uid, finding_id, settled)
        if isinstance(found, str):
            left_out[found] += 1
            continue
        entries.setdefault((study_uid, finding_id.rsplit("/", 1)[0]), []).append((settled, found))
    cases: list[dict[str, Any]] = []
    with atomic_dir(out, written=("export.json",)) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        for (study_uid, name), judged in sorted(entries.items()):
            image: np.ndarray | None = None
            labels: np.ndarray | None = None
            why = None
            for v, e in judged:
                made = _segmentation_labels(e, v, results_dir)
                if isinstance(made, str):
                    why = made
                    break
                k = e.label_index
                if labels is None:
                    image, labels = made
                else:  # another structure of the same entry: take its reader-judged label k only
                    labels[labels == k] = 0
                    labels[made[1] == k] = k
            if why is not None or image is None or labels is None:
                left_out[why or "nothing to export"] += 1
                continue
            case_key, patient, side = _case(key, split, store, study_uid, name)
            _save_tiff(tmp / "images" / f"{case_key}.tif", image)
            Image.fromarray(labels).save(tmp / "labels" / f"{case_key}.png", format="PNG")
            present = sorted({int(x) for x in np.unique(labels)} - {0})
            cases.append({"case": case_key, "patient_id": patient, "split": side, "labels": present})
        if cases:
            val = sorted(c["case"] for c in cases if c["split"] == "val")
            train = sorted(c["case"] for c in cases if c["split"] == "train")
            write_json(tmp / "medsight_splits.json", {
                "method": "feedback export: fold 0 = the frozen validation split (medsight.feedback.splits); "
                          "fold 1 = the training cases, so fold 0 trains on them; no test cases",
                "test": [],
                "folds": [val, train],
                "patients": {c["case"]: c["patient_id"] for c in cases},
            })  # fmt: skip
            write_json(tmp / "dataset.json", {
                "name": "feedback",
                "labels": {str(i): n for i, n in enumerate(label_names)},
            })  # fmt: skip
        write_json(tmp / "cases.json", sorted(cases, key=lambda c: c["case"]))
        counts = Counter(c["split"] for c in cases)
        summary = complete({
            "layout": "pairs (images/*.tif + labels/*.png, medsight_splits.json)",
            "cases": len(cases),
            "by_split": {s: {"cases": counts[s]} for s in ("train", "val")},
        })
        write_json(tmp / "export.json", summary)
    return summary


def _detection_boxes(e: _Entry, v: Any) -> list[tuple[list[float], str]] | str:
    """The boxes ``[x0, y0, x1, y1]`` (continuous pixel coordinates, x = column) and labels the reader settled on."""
    sop = v.source_sop_uids[0]
    if v.decision == "edit":
        edit = v.edit or {}
        if "boxes" not in edit:
            return "an edit of a detection finding without boxes"
        return [([float(b[c]) for c in ("x0", "y0", "x1", "y1")], str(b["label"]))
                for b in edit["boxes"] if str(b.get("sop_uid")) == sop]  # fmt: skip
    ai = [(list(map(float, b["box"])), str(b.get("label", ""))) for b in e.entry.get("findings", [])
          if isinstance(b, dict) and len(b.get("box", [])) == 4]  # fmt: skip
    if v.decision == "agree":
        return ai
    if not ai and not v.ai_positive:
        return NOT_DRAWN
    return []  # disagree with a positive finding: nothing is there


def _write_detection(
    out: Path,
    store: Any,
    results_dir: Path,
    key: bytes,
    split: FrozenSplit,
    by_finding: dict[tuple[str, str], list[Any]],
    label_names: list[str],
    left_out: Counter[str],
    complete: Callable[[dict[str, Any]], dict[str, Any]] = dict,
) -> dict[str, Any]:
    """COCO: ``annotations.json`` + ``images/<case>.tif``; boxes ``[x, y, w, h]`` in the image's pixels."""
    from medsight.io.images import read_image

    categories = [{"id": i + 1, "name": n} for i, n in enumerate(label_names)]
    cat_id = {n: i + 1 for i, n in enumerate(label_names)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    with atomic_dir(out, written=("export.json",)) as tmp:
        (tmp / "images").mkdir()
        for (study_uid, finding_id), group in sorted(by_finding.items()):
            settled = _settled(group)
            found = settled if isinstance(settled, str) else _locate(store, results_dir, study_uid, finding_id, settled)
            boxes = found if isinstance(found, str) else _detection_boxes(found, settled)
            if isinstance(boxes, str):
                left_out[boxes] += 1
                continue
            if any(label not in cat_id for _, label in boxes):
                left_out["a box label the model does not know"] += 1
                continue
            assert isinstance(found, _Entry)
            pixels = read_image(Path(found.source.path))  # (C, H, W)
            if pixels.ndim != 3:
                left_out[SERIES_3D] += 1
                continue
            case_key, patient, side = _case(key, split, store, study_uid, finding_id)
            image_id = len(images) + 1
            name = f"{case_key}.tif"
            _save_tiff(tmp / "images" / name, pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1))
            height, width = int(pixels.shape[1]), int(pixels.shape[2])
            images.append({"id": image_id, "file_name": name, "width": width, "height": height,
                           "metadata": {"patientid": patient, "split": side}})  # fmt: skip
            for (x0, y0, x1, y1), label in boxes:
                x0, x1 = sorted((max(0.0, x0), min(float(width), x1)))
                y0, y1 = sorted((max(0.0, y0), min(float(height), y1)))
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat_id[label],
                                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                    "iscrowd": 0})  # fmt: skip
        write_json(tmp / "annotations.json", {"images": images, "annotations": annotations, "categories": categories})
        boxed = {a["image_id"] for a in annotations}
        counts = Counter((i["metadata"]["split"], i["id"] in boxed) for i in images)
        summary = complete({
            "layout": "COCO (annotations.json + images/*.tif; images[].metadata.split = the frozen split)",
            "cases": len(images),
            "boxes": len(annotations),
            "by_split": {
                s: {"images with boxes": counts[(s, True)], "images without": counts[(s, False)]}
                for s in ("train", "val")
            },
        })
        write_json(tmp / "export.json", summary)
    return summary


def _split_summary(split: FrozenSplit) -> dict[str, Any]:
    """What every export records of the frozen split it used."""
    return {
        "file": str(split.path),
        "units": len(split.assignments),
        "new_units": split.added,
        "method": split.to_json()["method"],
        "val_share": split.val_share,
    }


def _export_summary(
    summary: dict[str, Any],
    model: str,
    route: Any,
    split: FrozenSplit,
    left_out: Counter[str],
    verdicts: Sequence[Any],
) -> dict[str, Any]:
    """``summary`` completed with what every export.json says."""
    full = {
        "model": model,
        "task": route.task,
        "label_names": list(route.label_names),
        **summary,
        "left_out": dict(left_out),
        "verdicts": len(verdicts),
        "bundles_judged": sorted({v.bundle_checksum for v in verdicts}),
        "frozen_split": _split_summary(split),
        "labels_from": "each reader's newest verdict per finding (edited masks/boxes, the AI's on agree, removed on "
        "disagree); findings with conflicting readers left out",
    }
    return full
