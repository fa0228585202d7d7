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

import contextlib
import csv
import io
import json
import logging
import re
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
#: Other spellings of a reserved column, compared after :func:`_column_key` (``PatientID``, ``Subject ID``...).
COLUMN_ALIASES = {"patientid": "patient_id", "subject_id": "patient_id", "subjectid": "patient_id"}
#: Other spellings of a split name, compared stripped and in lower case.
SPLIT_ALIASES = {"training": "train", "validation": "val", "valid": "val", "testing": "test"}
#: What pandas reads as "no value" in a cell (its default ``na_values``): a label, path, split or patient id written
#: so is missing, and so is an attribute value.
NA_TOKENS = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA"}
    | {"NULL", "NaN", "None", "n/a", "nan", "null"}
)
#: Columns that name, date or number a patient (compared after :func:`_column_key`): never an attribute, so that no
#: subgroup named after a patient reaches metrics.json or the card.
_IDENTIFIER = re.compile(
    r"^(name|full_?name|first_?name|last_?name|given_?name|family_?name|surname|forename|initials)$"
    r"|patients?_?(name|id|identifier|number|no|num)|birth|^dob$|_dob$|^dob_|mrn|medical_?record|accession"
    r"|ssn|social_?security|nhs_?(number|no)|insurance|address|phone|e_?mail|post_?code|zip_?code|^zip$"
    r"|subject_?id|(^|_)uid$"
)


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
    table = read_table(csv_path)
    for col in ("path", "label"):
        if col not in table.columns:
            raise MedsightError(f"manifest has no '{col}' column (columns: {', '.join(table.columns)})", csv_path)
    if table.empty:
        raise MedsightError("manifest lists no images", csv_path)
    lines = table.index.to_numpy()
    table = table.reset_index(drop=True)
    table["label"] = _labels(table["label"], lines, csv_path)
    root = csv_path.parent
    paths = [_image_path(root, str(p), int(line), csv_path) for p, line in zip(table["path"], lines, strict=True)]
    _refuse_repeated_images(paths, table, lines, csv_path)

    multilabel = task_type == "multilabel" if task_type else bool(table["label"].str.contains("|", regex=False).any())
    found = (
        {x for v in table["label"] for x in str(v).split("|") if x} if multilabel else set(table["label"].astype(str))
    )
    _refuse_spellings_of_one_label(found, csv_path)
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
    spatial_dims = _spatial_dims(raw, table["path"], lines, csv_path)
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
        given = table["patient_id"].str.strip()
        no_id = given.isin(NA_TOKENS)
        if no_id.any():  # as one patient named "nan", the blank rows would move between splits as one block
            log.warning(
                "%s: %d row(s) without a patient_id (line %s); each is taken as a patient of its own",
                csv_path.name,
                int(no_id.sum()),
                ", ".join(str(int(lines[i])) for i in np.flatnonzero(no_id.to_numpy())[:10]),
            )
        patients = [path if gap else str(pid) for path, pid, gap in zip(patients, given, no_id, strict=True)]
    attributes = _attributes(table, csv_path)
    if "split" in table.columns:
        split = _split_names(table["split"], lines, csv_path)
        index = {s: np.flatnonzero(split == s) for s in SPLITS}
        method = "manifest"
        # with patient ids given (without them each row is its own patient, and identical pixels are the
        # evaluation's leakage check to find)
        shared = _patients_in_several_splits(patients, index, lines) if "patient_id" in table.columns else []
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
        if not label_names_given:  # training: evaluating other data needs no class in every split
            _warn_unscored_labels(splits, label_names, csv_path)
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


def _patients_in_several_splits(patients: list[str], index: dict[str, np.ndarray], lines: np.ndarray) -> list[str]:
    """Patients with rows in two or more splits, each as its rows' line numbers (never the patient id itself)."""
    where: dict[str, dict[str, list[int]]] = {}
    for split, rows in index.items():
        for i in rows:
            where.setdefault(patients[int(i)], {}).setdefault(split, []).append(int(lines[int(i)]))
    return [
        " and ".join(f"{rows[0]} ({split})" for split, rows in by_split.items())
        for by_split in where.values()
        if len(by_split) > 1
    ]


def _warn_unscored_labels(splits: dict[str, SplitData], label_names: list[str], csv_path: Path) -> None:
    """Say which classes validation or test hold no image of (a class of one image is in train only): their AUC is
    left out of the macro average and nothing checks the model finds them."""
    for name in ("val", "test"):
        if name not in splits:
            continue
        absent = sorted(set(range(len(label_names))) - set(splits[name].labels.tolist()))
        if absent:
            counts = np.bincount(np.concatenate([p.labels for p in splits.values()]), minlength=len(label_names))
            log.warning(
                "%s: the %s split holds no image of %s (%s in all): its metrics leave that class out; give more images "
                "of it",
                csv_path.name,
                name,
                ", ".join(repr(label_names[k]) for k in absent),
                ", ".join(str(int(counts[k])) for k in absent),
            )


def _labels(cells: pd.Series, lines: np.ndarray, csv_path: Path) -> pd.Series:
    """The label column without the spaces around its labels; a row without a label is an error naming its line."""
    # spaces around a label mean nothing: " " is no label at all (it once became a third class named " "); a lone
    # "|" stays what the README says it is, a multi-label row with none of the labels present
    cleaned = cells.map(_clean_label)
    missing = cleaned.isin(NA_TOKENS)
    if missing.any():
        i = int(np.flatnonzero(missing.to_numpy())[0])
        said = str(cells.iloc[i]).strip()
        why = f" ('{said}' reads as missing; name the class another way)" if said else ""
        raise MedsightError(f"row {lines[i]} has no label{why}", csv_path)
    return cleaned


def _image_path(root: Path, given: str, line: int, csv_path: Path) -> Path:
    """The file a row names, relative to the manifest's folder; a Windows path (``img\\a.png``) or one with spaces
    around it is read as meant. No path, or no such file, is an error naming the row."""
    if given.strip() in NA_TOKENS:
        raise MedsightError(f"row {line} has no path", csv_path)
    for candidate in dict.fromkeys((given, given.strip(), given.strip().replace("\\", "/"))):
        if (root / candidate).exists():
            return root / candidate
    raise MedsightError(f"row {line} names a file that does not exist: {given}", csv_path)


def _refuse_repeated_images(paths: list[Path], table: pd.DataFrame, lines: np.ndarray, csv_path: Path) -> None:
    """One image file listed on two rows would be counted twice in every metric, or sit in train and test at once
    (a leak no patient id shows), or carry two labels: refused, naming both rows."""
    first: dict[Path, int] = {}
    for i, p in enumerate(paths):
        j = first.setdefault(p.resolve(), i)
        if j == i:
            continue
        how = ""
        if "split" in table.columns and table["split"].iloc[i].strip() != table["split"].iloc[j].strip():
            how = f", in the {table['split'].iloc[j].strip()} and {table['split'].iloc[i].strip()} splits"
        elif table["label"].iloc[i] != table["label"].iloc[j]:
            how = f", labelled {table['label'].iloc[j]} and {table['label'].iloc[i]}"
        raise MedsightError(
            f"rows {lines[j]} and {lines[i]} name the same image ({table['path'].iloc[i].strip()}){how}: list each "
            "image once (several labels of one image go in one cell, separated by '|')",
            csv_path,
        )


def _refuse_spellings_of_one_label(found: set[str], csv_path: Path) -> None:
    """Two spellings of one class (``Benign``/``benign``, ``1``/``1.0``) would be trained as two classes that the
    model must tell apart: refused, naming both."""
    seen: dict[object, str] = {}
    for label in sorted(found, key=_natural):
        key: object = label.casefold()
        with contextlib.suppress(ValueError):
            key = float(label)
        if key in seen:
            raise MedsightError(
                f"labels '{seen[key]}' and '{label}' are two spellings of one class: write each class one way",
                csv_path,
            )
        seen[key] = label


def _spatial_dims(raw: list[np.ndarray], given: pd.Series, lines: np.ndarray, csv_path: Path) -> int:
    """2 or 3, as all the images agree; a manifest that mixes them is an error naming the first odd row."""
    dims = np.asarray([r.ndim - 1 for r in raw])
    values, counts = np.unique(dims, return_counts=True)
    if len(values) == 1:
        return int(values[0])
    usual = int(values[np.argmax(counts)])
    odd = int(np.flatnonzero(dims != usual)[0])
    raise MedsightError(
        f"manifest mixes 2D and 3D images: row {lines[odd]} ({str(given.iloc[odd]).strip()}) is {dims[odd]}D, "
        f"{int(counts.max())} of {len(raw)} images are {usual}D",
        csv_path,
    )


def _split_names(cells: pd.Series, lines: np.ndarray, csv_path: Path) -> np.ndarray:
    """The split of each row as train/val/test (``Train``, ``validation``, ``test `` are read as meant); an unknown
    name or a row in no split is an error (a row in no split would silently be in none: train, val and test alike
    leave it out)."""
    names = cells.str.strip().str.lower()
    names = names.map(lambda v: SPLIT_ALIASES.get(v, v))
    blank = np.flatnonzero(cells.str.strip().isin(NA_TOKENS).to_numpy())
    if len(blank):
        rows = ", ".join(str(int(lines[i])) for i in blank[:10]) + (" ..." if len(blank) > 10 else "")
        raise MedsightError(
            f"{len(blank)} row(s) with an empty split (line {rows}); give each row train, val or test, or drop "
            "the split column to have medsight split by patient",
            csv_path,
        )
    unknown = sorted(set(cells[~names.isin(SPLITS)].str.strip()))
    if unknown:
        raise MedsightError(f"unknown split name(s) {unknown}; use train/val/test", csv_path)
    return names.to_numpy()


def _attributes(table: pd.DataFrame, csv_path: Path) -> pd.DataFrame:
    """The attribute columns (sex, age, site...) for the subgroup audit: cells pandas reads as missing become NaN,
    columns of numbers become numbers. A column that identifies patients (name, birth date, MRN...) is left out
    with a warning naming the column only, so that no subgroup named after a patient reaches any report."""
    columns = {}
    for c in table.columns:
        if c in RESERVED:
            continue
        if _IDENTIFIER.search(_column_key(c)):
            log.warning(
                "%s: column %r identifies patients: left out of the subgroup audit and every report", csv_path.name, c
            )
            continue
        values = table[c].str.strip()
        values = values.where(~values.isin(NA_TOKENS))
        numbers = pd.to_numeric(values, errors="coerce")
        columns[c] = numbers if numbers.notna().sum() == values.notna().sum() else values
    return pd.DataFrame(columns, index=table.index).reset_index(drop=True)


def _clean_label(cell: object) -> object:
    """A label cell without the spaces around its labels; "|" alone (a multi-label row with no label) is kept."""
    if not isinstance(cell, str):
        return cell
    parts = [x.strip() for x in cell.split("|") if x.strip()]
    return "|".join(parts) if parts or "|" not in cell else "|"


def read_table(csv_path: Path) -> pd.DataFrame:
    """The manifest as text cells, indexed by file line (so messages name the line a user sees), reserved columns
    under their own names whatever their spelling, fully blank lines left out.

    Reads what spreadsheets write: a byte-order mark, CRLF lines, ``;`` or tab as the delimiter (a European Excel's
    CSV), ``Label`` or `` label`` as the header."""
    try:
        text = csv_path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MedsightError(
            f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}): save the manifest as UTF-8",
            csv_path,
        ) from exc
    header, delimiter = _header(text)
    if not header:
        raise MedsightError("manifest lists no images (the file is empty)", csv_path)
    names = _column_names(header, csv_path)
    try:
        table = pd.read_csv(
            io.StringIO(text),
            sep=delimiter,
            header=0,
            names=names,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
            index_col=False,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise MedsightError(f"not a readable CSV ({exc})", csv_path) from exc
    table = table.fillna("")  # a short row's missing cells
    table.index = pd.RangeIndex(2, len(table) + 2)  # the file line of each row: the header is line 1
    blank = table.apply(lambda col: col.str.strip() == "").all(axis=1)
    if blank.any():
        log.info("%s: %d blank row(s) left out", csv_path.name, int(blank.sum()))
    return table[~blank]


def _header(text: str) -> tuple[list[str], str]:
    """The header's cells and the delimiter: the first of ``,``, ``;`` and tab that makes ``path`` and ``label``
    columns of the first line, else the comma (whose error then lists the columns read)."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    for delimiter in (",", ";", "\t"):
        cells = next(csv.reader([first], delimiter=delimiter), [])
        keys = {_column_key(c) for c in cells}
        if {"path", "label"} <= keys:
            return cells, delimiter
    return next(csv.reader([first]), []), ","


def _column_key(name: str) -> str:
    """A header cell compared without case, spaces or punctuation (``" Patient ID"`` → ``patient_id``)."""
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def _column_names(header: list[str], csv_path: Path) -> list[str]:
    """The columns' names: reserved ones as medsight spells them, others stripped; a name given twice is an error
    (pandas would rename the second ``label`` to ``label.1`` and keep it as an attribute)."""
    keys = [_column_key(cell) for cell in header]
    names: list[str] = []
    for cell, key in zip(header, keys, strict=True):
        if COLUMN_ALIASES.get(key) not in (None, *keys):  # "Subject ID" is the patient id, unless one is given too
            key = COLUMN_ALIASES[key]
        name = key if key in RESERVED else cell.strip()
        if name in names:
            other = header[names.index(name)].strip()
            same = f"'{cell.strip()}'" if other == cell.strip() else f"'{other}' and '{cell.strip()}'"
            raise MedsightError(f"column {same} appears twice in the header: keep one", csv_path)
        names.append(name)
    return names
