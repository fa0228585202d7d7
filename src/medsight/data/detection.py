"""Detection data: COCO-format boxes and mini-MIAS lesion centre + radius lists, mapped onto the pixels read.

Every box is ``[x1, y1, x2, y2]`` in continuous pixel coordinates of the image file actually read (x = column,
y = row, origin at the top-left corner of the top-left pixel; pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``).

How a user names detection data (``recognises`` of ``medsight.tasks.detection`` agrees):

* a mini-MIAS folder (holding ``Info.txt`` and ``images_512/`` or the original ``*.pgm``) or its ``Info.txt``;
* a COCO folder holding ``annotations.json`` (images found beside it, under ``images/``, or through a
  ``resize_manifest.csv`` that maps original names to staged, resized copies), or the COCO ``.json`` itself.

Images may be in any 2D format Pillow reads (PNG, PGM/PPM, BMP, WebP, TIFF, JPEG, GIF, ...) or DICOM: they are read
by the one shared reader (:mod:`medsight.io.images`), so detection accepts what every other task accepts.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsight.data.splits import SPLIT_SEED, assert_disjoint_patients, patient_split
from medsight.errors import MedsightError
from medsight.io.images import RASTER_SUFFIXES, image_size_2d

MIAS_ORIGINAL_SIZE = 1024
#: Suffixes a mini-MIAS image may have: the distributed .pgm and our .png copies first, then every 2D format Pillow
#: reads (:data:`medsight.io.images.RASTER_SUFFIXES`), so a re-encoded copy (BMP, WebP, TIFF, ...) is found too.
MIAS_SUFFIXES = (".png", ".pgm", *sorted(RASTER_SUFFIXES - {".png", ".pgm"}))
_MIAS_ROW = re.compile(r"^(mdb\d{3})\s+([FGD])\s+(CALC|CIRC|SPIC|MISC|ARCH|ASYM|NORM)\b(.*)$")


@dataclass
class DetectionItem:
    """One image and its ground-truth boxes (in the pixel grid of the file read)."""

    key: str
    image: Path
    boxes: np.ndarray  # (N, 4) float [x1, y1, x2, y2]
    labels: np.ndarray  # (N,) int, index into class_names
    patient_id: str
    attributes: dict[str, Any] = field(default_factory=dict)
    #: The split the data declare for this image ("train" or "val"; COCO ``images[].metadata.split``), else "".
    declared_split: str = ""


@dataclass
class DetectionData:
    name: str
    items: list[DetectionItem]
    class_names: list[str]
    kind: str  # "lesions" (FROC is the headline) or "objects" (mAP is)
    excluded: list[dict[str, str]] = field(default_factory=list)
    conventions: list[str] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for it in self.items:
            h.update(it.key.encode())
            h.update(np.round(it.boxes, 3).tobytes())
        return h.hexdigest()[:16]

    def split(self, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
        """Patient-level 70/10/20 split stratified by 'has any box'; checked for patient overlap.

        ``seed`` is the fixed split seed (recorded in the bundle as ``data.split_seed``), never the training seed.
        When every image declares its split (``declared_split``: "train" or "val", e.g. a feedback export's frozen
        split), that split is used as is and the test split is empty."""
        if self.items and all(it.declared_split in ("train", "val") for it in self.items):
            declared = {s: np.asarray([i for i, it in enumerate(self.items) if it.declared_split == s], dtype=int)
                        for s in ("train", "val")}  # fmt: skip
            parts = {**declared, "test": np.zeros(0, dtype=int)}
            assert_disjoint_patients({k: [self.items[i].patient_id for i in v] for k, v in parts.items()})
            return parts
        strata = [int(len(it.boxes) > 0) for it in self.items]
        pids = [it.patient_id for it in self.items]
        parts = patient_split(strata, pids, seed=seed)
        assert_disjoint_patients({k: [pids[i] for i in v] for k, v in parts.items()})
        return parts


# ------------------------------------------------------------------------------------------------ mini-MIAS


@dataclass(frozen=True)
class MiasRow:
    ref: str
    tissue: str
    abnormality: str
    severity: str | None
    x: float | None
    y: float | None
    radius: float | None


def parse_mias_info(path: Path) -> list[MiasRow]:
    """Rows of the MIAS ``Info.txt`` (x, y, radius in original 1024-pixel units, origin bottom-left)."""
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        m = _MIAS_ROW.match(line.strip())
        if not m:
            continue
        ref, tissue, abnormality, rest = m.groups()
        tokens = rest.split()
        severity = tokens[0] if tokens and tokens[0] in ("B", "M") else None
        nums = [t for t in tokens[1:] if re.fullmatch(r"\d+(\.\d+)?", t)]
        x, y, r = (float(nums[0]), float(nums[1]), float(nums[2])) if len(nums) >= 3 else (None, None, None)
        rows.append(MiasRow(ref, tissue, abnormality, severity, x, y, r))
    if not rows:
        raise MedsightError("no mini-MIAS rows (mdbNNN ...) found", path)
    return rows


def mias_box(x: float, y: float, radius: float, image_size: int) -> np.ndarray:
    """Centre + radius in 1024-pixel units with a bottom-left origin → ``[x1, y1, x2, y2]`` in an image of
    ``image_size`` pixels (top-left origin): scale s = image_size/1024, col = x·s, row = (1024 − y)·s."""
    s = image_size / MIAS_ORIGINAL_SIZE
    cx, cy, r = x * s, (MIAS_ORIGINAL_SIZE - y) * s, radius * s
    return np.array([cx - r, cy - r, cx + r, cy + r], dtype=np.float64)


def mias_patient_id(ref: str) -> str:
    """Left/right images of one woman share an id: mdb001 + mdb002 → 'mias-001', mdb003 + mdb004 → 'mias-002'."""
    n = int(ref[3:])
    return f"mias-{(n + 1) // 2:03d}"


def _mias_image(root: Path, ref: str) -> tuple[Path, int]:
    for sub, size in (("images_512", 512), ("", 1024), ("pgm", 1024), ("images", 1024)):
        for suffix in MIAS_SUFFIXES:
            p = (root / sub / f"{ref}{suffix}") if sub else (root / f"{ref}{suffix}")
            if p.is_file():
                return p, _image_side(p, size)
    raise MedsightError(
        f"image for {ref} not found (looked in images_512/, pgm/, images/ and the folder for a 2D image Pillow reads, "
        "e.g. .pgm, .png, .bmp, .webp, .tif, .jpg)",
        root,
    )


def _image_side(path: Path, default: int) -> int:
    w, h = image_size_2d(path)
    if w != h:
        raise MedsightError(f"mini-MIAS images are square; this one is {w}x{h}", path)
    return int(w) or default


def load_mias(spec: str | Path) -> DetectionData:
    """mini-MIAS: one lesion class; normal images have no boxes; images whose abnormality has no coordinates
    (mdb059 and the three NOTE-3 calcification clusters) are left out and listed in ``excluded``."""
    path = Path(spec)
    info = path if path.is_file() else path / "Info.txt"
    root = info.parent
    rows = parse_mias_info(info)
    by_ref: dict[str, list[MiasRow]] = {}
    for r in rows:
        by_ref.setdefault(r.ref, []).append(r)
    items, excluded = [], []
    for ref, rs in sorted(by_ref.items()):
        abnormal = [r for r in rs if r.abnormality != "NORM"]
        if any(r.x is None for r in abnormal):
            excluded.append({"key": ref, "reason": "abnormality without coordinates"})
            continue
        image, side = _mias_image(root, ref)
        boxes = np.stack([mias_box(r.x, r.y, r.radius, side) for r in abnormal]) if abnormal else np.zeros((0, 4))  # type: ignore[arg-type]
        items.append(
            DetectionItem(
                key=ref,
                image=image,
                boxes=boxes,
                labels=np.zeros(len(boxes), int),
                patient_id=mias_patient_id(ref),
                attributes={
                    "tissue": rs[0].tissue,
                    "abnormality": abnormal[0].abnormality if abnormal else "NORM",
                    "severity": abnormal[0].severity if abnormal else "",
                    "side": "right" if int(ref[3:]) % 2 else "left",
                },
            )
        )
    return DetectionData(
        name="mini-MIAS",
        items=items,
        class_names=["lesion"],
        kind="lesions",
        excluded=excluded,
        conventions=[
            "Info.txt x, y, radius are in 1024-pixel units with the origin at the bottom-left; in an N-pixel image "
            "col = x*N/1024, row = (1024 - y)*N/1024, radius*N/1024; box = centre -/+ radius",
            "patients: mdb(2k-1) (right) and mdb(2k) (left) are one woman",
        ],
    )


# ------------------------------------------------------------------------------------------------------ COCO


def _staged_names(folder: Path) -> dict[str, str]:
    manifest = folder / "resize_manifest.csv"
    if not manifest.is_file():
        return {}
    with manifest.open(newline="") as f:
        return {row["file_name"]: row["staged_name"] for row in csv.DictReader(f) if row.get("staged_name")}


def _find_image(folder: Path, name: str, staged: dict[str, str]) -> Path | None:
    candidates = [staged[name]] if name in staged else []
    candidates += [name, f"images/{name}"]
    for c in candidates:
        p = folder / c
        if p.is_file():
            return p
    return None


def load_coco(spec: str | Path) -> DetectionData:
    """COCO boxes ``[x, y, w, h]`` in the annotated image's pixels, rescaled onto the file actually read.

    When the file read was resized (``resize_manifest.csv``), each axis is scaled by (size read / annotated
    size) of that axis, which is exact for a whole-image resize. Patients come from ``images[].metadata.patientid``
    when present (else each image is its own patient); ``images[].metadata.split`` ("train"/"val"), when every image
    has one, is the split :meth:`DetectionData.split` uses. Images that cannot be found are listed in ``excluded``.
    """
    path = Path(spec)
    ann_path = path if path.is_file() else path / "annotations.json"
    if not ann_path.is_file():
        raise MedsightError("no annotations.json (COCO) here", path)
    folder = ann_path.parent
    try:
        coco = json.loads(ann_path.read_text())
    except json.JSONDecodeError as exc:
        raise MedsightError(f"annotations.json is not valid JSON ({exc})", ann_path) from exc
    cats = sorted(coco.get("categories", []), key=lambda c: c["id"])
    if not cats:
        raise MedsightError("COCO file has no categories", ann_path)
    cat_index = {c["id"]: i for i, c in enumerate(cats)}
    anns: dict[Any, list[dict[str, Any]]] = {}
    for a in coco.get("annotations", []):
        anns.setdefault(a["image_id"], []).append(a)
    staged = _staged_names(folder)
    items, excluded = [], []
    for img in coco.get("images", []):
        file = _find_image(folder, img["file_name"], staged)
        key = str(img.get("id"))
        if file is None:
            excluded.append({"key": key, "reason": "image file not found"})
            continue
        if any(a.get("category_id") not in cat_index for a in anns.get(img["id"], [])):
            excluded.append({"key": key, "reason": "a box without a known category_id"})
            continue
        w_read, h_read = image_size_2d(file)
        sx, sy = w_read / float(img["width"]), h_read / float(img["height"])
        boxes, labels = [], []
        for a in anns.get(img["id"], []):
            x, y, w, h = (float(v) for v in a["bbox"])
            boxes.append([x * sx, y * sy, (x + w) * sx, (y + h) * sy])
            labels.append(cat_index[a["category_id"]])
        meta = img.get("metadata") or {}
        pid = str(meta.get("patientid") or f"image-{key}")
        items.append(
            DetectionItem(
                key=key,
                image=file,
                boxes=np.asarray(boxes, np.float64).reshape(-1, 4),
                labels=np.asarray(labels, int),
                patient_id=pid,
                attributes={k: meta.get(k, "") for k in ("sex", "age", "view", "finding") if k in meta},
                declared_split=str(meta.get("split") or ""),
            )
        )
    if not items:
        raise MedsightError("no COCO image could be found on disk", folder)
    return DetectionData(
        name=folder.name,
        items=items,
        class_names=[str(c["name"]) for c in cats],
        kind="objects",
        excluded=excluded,
        conventions=[
            "COCO bbox [x, y, w, h] in the annotated image's pixels; scaled per axis by (size read / annotated size)",
        ],
    )


def is_mias(spec: str | Path) -> bool:
    p = Path(str(spec))
    info = p if p.name == "Info.txt" else p / "Info.txt"
    if not info.is_file():
        return False
    head = info.read_text(errors="replace")[:4000]
    return "MIAS" in head or bool(re.search(r"^mdb\d{3}", head, re.M))


def is_coco(spec: str | Path) -> bool:
    p = Path(str(spec))
    if p.is_dir():
        p = p / "annotations.json"
    if not (p.is_file() and p.suffix == ".json"):
        return False
    if p.stat().st_size > 200_000_000:
        return False
    try:
        doc = json.loads(p.read_text(errors="replace"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(doc, dict) and "images" in doc and "annotations" in doc and "categories" in doc


def load_detection(spec: str | Path) -> DetectionData:
    """Dispatch on the data layout: mini-MIAS (``Info.txt``) or COCO (``annotations.json``)."""
    if is_mias(spec):
        return load_mias(spec)
    if is_coco(spec):
        return load_coco(spec)
    raise MedsightError("not detection data (expected a mini-MIAS folder/Info.txt or a COCO annotations.json)", spec)
