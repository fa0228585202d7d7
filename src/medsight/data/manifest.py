"""Image folder + CSV manifest: ``path,label`` plus optional ``patient_id``, ``split`` and attribute columns.

Paths are relative to the CSV's folder and may name PNG/JPEG/TIFF, DICOM files, DICOM series folders,
NIfTI or npy/npz images, 2D or 3D. Multi-label rows separate labels with ``|``. Every other column
(``sex``, ``age``, ``site``...) is kept as a patient attribute for the subgroup audit.

The modality (which ``medsight predict`` checks DICOM inputs against) is the one the images' DICOM Modality codes
agree on, or ``{"modality": "xray"}`` in the sidecar below; otherwise ``unknown``.

A binary data set declares its finding beside the CSV, in a JSON file of the same name (``manifest.json`` for
``manifest.csv``): ``{"positive": "malignant"}``, so that sensitivity is the recall of that label. Ordered grades
(BI-RADS, diabetic retinopathy, Kellgren-Lawrence) are declared there too, because a CSV cannot say that its labels
are ordered: ``{"task": "ordinal", "labels": ["normal", "benign", "malignant"]}`` (lowest grade first), or
``{"task": "ordinal"}`` with integer grades 0..K-1 in the label column. A grade outside the scale, or a grade of the
scale that no row has (a gap), is an error naming the file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from medsight.data.checksums import md5sum
from medsight.data.dataset import SPLITS, ClassificationData, SplitData
from medsight.data.splits import SPLIT_SEED, patient_split
from medsight.errors import MedsightError
from medsight.io.images import read_image
from medsight.transforms import prepare

log = logging.getLogger("medsight.data")

RESERVED = {"path", "label", "patient_id", "split"}
MAX_2D, MAX_3D = 128, 64


def load_manifest(
    csv_path: str | Path,
    spatial_size: list[int] | None = None,
    seed: int = SPLIT_SEED,
    modality: str | None = None,
    label_names: list[str] | None = None,
    n_channels: int | None = None,
    task_type: str | None = None,
) -> ClassificationData:
    """Read the manifest and every image it names; split by patient when no ``split`` column is given.

    ``seed`` is the split seed (:func:`medsight.data.splits.split_seed`), never the training seed.

    ``label_names``/``spatial_size``/``n_channels`` come from a bundle when evaluating: a label the
    bundle does not know is then an error, and images are prepared exactly as in training.
    """
    csv_path = Path(csv_path)
    if csv_path.is_dir():
        csv_path = csv_path / "manifest.csv"
    if not csv_path.is_file():
        raise MedsightError("manifest not found", csv_path)
    try:
        table = pd.read_csv(csv_path, dtype={"patient_id": str, "label": str, "split": str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise MedsightError(f"not a readable CSV ({exc})", csv_path) from exc
    for col in ("path", "label"):
        if col not in table.columns:
            raise MedsightError(f"manifest has no '{col}' column (columns: {', '.join(table.columns)})", csv_path)
    if table.empty:
        raise MedsightError("manifest lists no images", csv_path)
    # spaces around a label mean nothing: " " is no label at all (it once became a third class named " "); a lone
    # "|" stays what the README says it is, a multi-label row with none of the labels present
    table["label"] = table["label"].map(_clean_label)
    missing_label = table["label"].isna() | (table["label"] == "")
    if missing_label.any():
        row = int(np.flatnonzero(missing_label.to_numpy())[0]) + 2
        raise MedsightError(f"row {row} has no label", csv_path)

    root = csv_path.parent
    paths = [root / str(p) for p in table["path"]]
    for i, p in enumerate(paths):
        if not p.exists():
            raise MedsightError(f"row {i + 2} names a file that does not exist: {table['path'].iloc[i]}", csv_path)

    multilabel = task_type == "multilabel" if task_type else bool(table["label"].str.contains("|", regex=False).any())
    found = (
        {x for v in table["label"] for x in str(v).split("|") if x} if multilabel else set(table["label"].astype(str))
    )
    label_names_given = label_names is not None
    sidecar = read_sidecar(csv_path)
    ordinal = declares_ordinal(sidecar, csv_path)
    if ordinal and multilabel:
        raise MedsightError("an ordinal task takes one grade per row, not several labels separated by '|'", csv_path)
    if ordinal and label_names is None:
        label_names = ordinal_grades(sidecar, found, csv_path.with_suffix(".json"))
    if label_names is not None:
        unknown_labels = sorted(found - set(label_names))
        if unknown_labels:
            raise MedsightError(
                f"unknown label(s) {', '.join(unknown_labels)}; the model knows {', '.join(label_names)}", csv_path
            )
    else:
        label_names = sorted(found, key=_natural)
    if len(label_names) < 2:
        raise MedsightError(f"only one label ({label_names[0]}): nothing to classify", csv_path)
    task = task_type or ("multilabel" if multilabel else ("binary" if len(label_names) == 2 else "multiclass"))
    if ordinal and task != "multiclass":
        raise MedsightError(f"declared ordinal, but read as a {task} task", csv_path.with_suffix(".json"))

    raw = [read_image(p) for p in tqdm(paths, desc=f"read {csv_path.name}", unit="img")]
    dims = {r.ndim - 1 for r in raw}
    if len(dims) != 1:
        raise MedsightError("manifest mixes 2D and 3D images", csv_path)
    spatial_dims = dims.pop()
    channels = n_channels or (3 if any(r.shape[0] == 3 for r in raw) else 1)
    size = spatial_size or _default_size(raw, spatial_dims)
    images = np.stack([prepare(r, size, channels) for r in raw])

    if task == "multilabel":
        labels: np.ndarray = np.zeros((len(table), len(label_names)), np.float32)
        for i, v in enumerate(table["label"]):
            for x in str(v).split("|"):
                if x:
                    labels[i, label_names.index(x)] = 1.0
    else:
        labels = np.asarray([label_names.index(str(v)) for v in table["label"]], np.int64)

    patients = [str(p) for p in table["path"]]  # without ids each image is its own patient
    if "patient_id" in table.columns:
        given = table["patient_id"]
        no_id = given.isna() | (given.astype(str).str.strip() == "")
        if no_id.any():  # as one patient named "nan", the blank rows would move between splits as one block
            log.warning(
                "%s: %d row(s) without a patient_id (line %s); each is taken as a patient of its own",
                csv_path.name,
                int(no_id.sum()),
                ", ".join(str(int(i) + 2) for i in np.flatnonzero(no_id.to_numpy())[:10]),
            )
        patients = [path if gap else str(pid) for path, pid, gap in zip(patients, given, no_id, strict=True)]
    attributes = table[[c for c in table.columns if c not in RESERVED]].reset_index(drop=True)
    if "split" in table.columns:
        unknown = set(table["split"].dropna()) - set(SPLITS)
        if unknown:
            raise MedsightError(f"unknown split name(s) {sorted(unknown)}; use train/val/test", csv_path)
        blank = np.flatnonzero(table["split"].isna().to_numpy())
        if len(blank):  # a row in no split would silently be in none: train, val and test alike leave it out
            rows = ", ".join(str(int(i) + 2) for i in blank[:10]) + (" ..." if len(blank) > 10 else "")
            raise MedsightError(
                f"{len(blank)} row(s) with an empty split (line {rows}); give each row train, val or test, or drop "
                "the split column to have medsight split by patient",
                csv_path,
            )
        index = {s: np.flatnonzero(table["split"].to_numpy() == s) for s in SPLITS}
        method = "manifest"
        # with patient ids given (without them each row is its own patient, and identical pixels are the
        # evaluation's leakage check to find)
        shared = _patients_in_several_splits(patients, index) if "patient_id" in table.columns else []
        if shared:  # a test patient seen in training makes every test figure a leak the pixel check cannot see
            raise MedsightError(
                f"{len(shared)} patient(s) appear in more than one split (e.g. rows {shared[0]}): the split column "
                "must keep each patient's images together in train, val or test",
                csv_path,
            )
    else:
        strata = table["label"].astype(str).tolist()
        index = patient_split(strata, patients, seed=seed)
        method = f"patient-level stratified 70/10/20, split seed {seed}"
    splits = {
        s: SplitData(
            images=images[ix],
            labels=labels[ix],
            patient_ids=[patients[i] for i in ix],
            attributes=attributes.iloc[ix].reset_index(drop=True),
            sources=[str(table["path"].iloc[i]) for i in ix],
        )
        for s, ix in index.items()
        if len(ix)
    }
    # data scored with a bundle's labels (e.g. another site's test set) need no train rows
    if "train" not in splits and not label_names_given:
        raise MedsightError("no rows in the train split", csv_path)
    if task != "multilabel" and "train" in splits:
        seen = set(splits["train"].labels.tolist())
        for s, part in splits.items():
            unseen = set(part.labels.tolist()) - seen
            if unseen:
                names = ", ".join(label_names[i] for i in sorted(unseen))
                raise MedsightError(f"label(s) {names} in the {s} split never occur in train", csv_path)
    return ClassificationData(
        name=csv_path.parent.name,
        task_type=task,  # type: ignore[arg-type]
        label_names=label_names,
        spatial_dims=spatial_dims,
        splits=splits,
        modality=modality or _modality(sidecar, paths, csv_path),
        fingerprint={
            "files": {
                csv_path.name: md5sum(csv_path),
                **{str(rel): md5sum(p) for rel, p in zip(table["path"], paths, strict=True) if p.is_file()},
            },
            "n_images": len(paths),
        },
        split_method=method,
        positive=declared_positive(csv_path, label_names) if task == "binary" else None,
        ordinal=ordinal,
    )


def _modality(sidecar: dict[str, Any], paths: list[Path], csv_path: Path) -> str:
    """The sidecar's ``modality`` when declared, else the one modality the images' DICOM headers agree on
    (:func:`medsight.io.modality.of_dicom`), else ``unknown``; ``medsight predict`` checks DICOM inputs against it."""
    from medsight.io.modality import of_dicom

    declared = sidecar.get("modality")
    if declared is not None:
        if not isinstance(declared, str) or not declared.strip():
            raise MedsightError(
                '"modality" must be a word such as "xray", "CT", "MRI" or "ultrasound"', csv_path.with_suffix(".json")
            )
        return declared.strip()
    return of_dicom(paths) or "unknown"


def read_sidecar(csv_path: Path) -> dict[str, Any]:
    """The manifest's JSON sidecar (``manifest.json`` beside ``manifest.csv``) as an object; {} without one."""
    sidecar = csv_path.with_suffix(".json")
    if not sidecar.is_file():
        return {}
    try:
        loaded = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedsightError(f"not a readable JSON object ({exc})", sidecar) from exc
    if not isinstance(loaded, dict):
        raise MedsightError('must hold a JSON object (e.g. {"positive": ...} or {"task": "ordinal"})', sidecar)
    return loaded


def declares_ordinal(sidecar: dict[str, Any], csv_path: Path) -> bool:
    """Whether the sidecar declares ordered grades; any other declared ``task`` is an error."""
    task = sidecar.get("task")
    if task is None:
        return False
    if task != "ordinal":
        raise MedsightError(
            f"unknown task {task!r}: a manifest declares only 'ordinal' (the others follow from the labels)",
            csv_path.with_suffix(".json"),
        )
    return True


def ordinal_grades(sidecar: dict[str, Any], found: set[str], where: Path) -> list[str]:
    """The grade names lowest first: the sidecar's ``labels``, else the integer labels 0..K-1. Every grade of the
    scale must occur (a gap would leave an output never trained) and no row may hold a grade outside it."""
    declared = sidecar.get("labels")
    if declared is not None:
        if not isinstance(declared, list) or not all(isinstance(v, str | int) for v in declared):
            raise MedsightError("'labels' must be a list of grade names, lowest first", where)
        grades = [str(v) for v in declared]
        if len(set(grades)) != len(grades):
            raise MedsightError("'labels' names a grade twice", where)
        outside = sorted(found - set(grades), key=_natural)
        if outside:
            raise MedsightError(
                f"label(s) {', '.join(outside)} outside the declared scale ({', '.join(grades)})", where
            )
    else:
        if not all(v.lstrip("-").isdigit() for v in found):
            raise MedsightError("ordinal labels without declared 'labels' must be integer grades 0..K-1", where)
        values = sorted(int(v) for v in found)
        if values[0] < 0:
            raise MedsightError(f"grade {values[0]} out of range: grades are 0..K-1", where)
        grades = [str(v) for v in range(values[-1] + 1)]
        odd = sorted(found - set(grades))
        if odd:
            raise MedsightError(f"grade(s) {', '.join(odd)} not written as plain integers 0..K-1", where)
    missing = [g for g in grades if g not in found]
    if missing:
        raise MedsightError(
            f"grade(s) {', '.join(missing)} of the scale occur in no row: an ordinal scale needs every grade", where
        )
    if len(grades) < 3:
        raise MedsightError(f"an ordinal scale needs at least 3 grades (got {len(grades)}): 2 are a binary task", where)
    return grades


def declared_positive(csv_path: Path, label_names: list[str]) -> str | None:
    """The ``positive`` label the manifest's JSON sidecar declares, checked against the labels; None without one."""
    sidecar = csv_path.with_suffix(".json")
    declared = read_sidecar(csv_path).get("positive")
    if declared is None:
        return None
    if str(declared) not in label_names:
        raise MedsightError(f"positive class {declared!r} is not one of the labels ({', '.join(label_names)})", sidecar)
    return str(declared)


def _natural(s: str) -> tuple[int, object]:
    return (0, int(s)) if s.lstrip("-").isdigit() else (1, s)


def _default_size(raw: list[np.ndarray], spatial_dims: int) -> list[int]:
    """The median image size, capped so that CPU training stays quick."""
    cap = MAX_2D if spatial_dims == 2 else MAX_3D
    med = np.median(np.asarray([r.shape[1:] for r in raw]), axis=0)
    return [int(min(cap, max(8, round(m)))) for m in med]


def _patients_in_several_splits(patients: list[str], index: dict[str, np.ndarray]) -> list[str]:
    """Patients with rows in two or more splits, each as its rows' line numbers (never the patient id itself)."""
    where: dict[str, dict[str, list[int]]] = {}
    for split, rows in index.items():
        for i in rows:
            where.setdefault(patients[int(i)], {}).setdefault(split, []).append(int(i) + 2)
    return [
        " and ".join(f"{lines[0]} ({split})" for split, lines in by_split.items())
        for by_split in where.values()
        if len(by_split) > 1
    ]


def _clean_label(cell: object) -> object:
    """A label cell without the spaces around its labels; "|" alone (a multi-label row with no label) is kept."""
    if not isinstance(cell, str):
        return cell
    parts = [x.strip() for x in cell.split("|") if x.strip()]
    return "|".join(parts) if parts or "|" not in cell else "|"
