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
import logging
import math
import re
from collections.abc import Iterator
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
log = logging.getLogger("medsight")
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
    #: The split the data declare for this image ("train", "val" or "test"; COCO ``images[].metadata.split``), else "".
    declared_split: str = ""


#: The names a COCO image's ``metadata.split`` may take (letter case aside), and the split each means.
DECLARED_SPLITS = {"train": "train", "training": "train", "val": "val", "validation": "val", "test": "test"}


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
        When the images declare their split (``declared_split``: "train", "val" or "test"; e.g. a feedback
        export's frozen split, which has no test), that split is used as is. Declared for some images only, or under
        another name, it is refused: falling back to a random split would put declared test images in training."""
        declared = self._declared_split()
        if declared is not None:
            return declared
        strata = [int(len(it.boxes) > 0) for it in self.items]
        pids = [it.patient_id for it in self.items]
        parts = patient_split(strata, pids, seed=seed)
        assert_disjoint_patients({k: [pids[i] for i in v] for k, v in parts.items()})
        return parts

    def _declared_split(self) -> dict[str, np.ndarray] | None:
        """The split the images declare, or None when none declares one."""
        given = [it.declared_split.strip() for it in self.items]
        if not any(given):
            return None
        names = [DECLARED_SPLITS.get(g.lower(), "") if g else "" for g in given]
        undeclared = sum(1 for g in given if not g)
        if undeclared:
            raise MedsightError(
                f"{undeclared} of {len(given)} images declare no split (images[].metadata.split) while the others "
                "do: declare train, val or test for every image, or for none (then a patient split is drawn)",
                self.name,
            )
        unknown = sorted({g for g, n in zip(given, names, strict=True) if not n})
        if unknown:
            raise MedsightError(
                f"declared split(s) {', '.join(repr(u) for u in unknown[:5])} are not train, val or test", self.name
            )
        parts = {s: np.asarray([i for i, n in enumerate(names) if n == s], dtype=int) for s in ("train", "val", "test")}
        if not len(parts["train"]):  # an empty val is the caller's to judge (a feedback export may hold none yet)
            raise MedsightError("no image declares the train split: training needs train images", self.name)
        assert_disjoint_patients({k: [self.items[i].patient_id for i in v] for k, v in parts.items()})
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


def _as_id(value: Any) -> int | str | None:
    """An id as exporters write it: ``3``, ``3.0`` and ``"3"`` are one id (equal as numbers); another string is an
    id as it stands; anything else (missing, ``true``, a list, ``3.5``) is no id."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[+-]?\d+(\.0*)?", text):
            return int(text.split(".")[0])
        return text or None
    return None


def _number(value: Any) -> float | None:
    """A finite JSON number (never a bool or a numeric string), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _show(value: Any) -> str:
    """A value for a one-line message: its JSON-ish repr, cut short."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 40 else text[:37] + "..."


def _refuse(problems: list[str], path: Path) -> None:
    """One line naming the first problem (and how many more there are)."""
    if problems:
        more = len(problems) - 1
        tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise MedsightError(problems[0] + tail, path)


@dataclass
class _CocoImage:
    index: int
    id: int | str
    entry: dict[str, Any]
    width: float | None  # annotated size; None when invalid (a problem is then recorded)
    height: float | None


def _coco_entries(coco: dict[str, Any], key: str, problems: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(index, entry)`` of each object in ``coco[key]``; a value that is not a list, or an entry that is not an
    object, is recorded in ``problems``."""
    value = coco.get(key, [])
    if not isinstance(value, list):
        problems.append(f"{key} is not a list")
        return
    for i, entry in enumerate(value):
        if isinstance(entry, dict):
            yield i, entry
        else:
            problems.append(f"{key}[{i}] is not an object")


def _coco_identified(
    coco: dict[str, Any], key: str, problems: list[str]
) -> Iterator[tuple[int, dict[str, Any], int | str, str]]:
    """``(index, entry, id, where)`` of each entry of ``coco[key]`` whose id is an integer or a name (ids equal as
    numbers are one id); ``where`` names the entry for messages. Entries without a usable id are recorded."""
    for i, entry in _coco_entries(coco, key, problems):
        eid = _as_id(entry.get("id"))
        if eid is None:
            problems.append(f"{key}[{i}]: id {_show(entry.get('id'))} is not an integer or a name")
            continue
        yield i, entry, eid, f"{key}[{i}] (id {eid})"


def _coco_categories(coco: dict[str, Any], ann_path: Path) -> tuple[dict[int | str, int], list[str]]:
    """Category id → class index (categories sorted by id) and the class names; refused when malformed."""
    problems: list[str] = []
    if not coco.get("categories"):
        raise MedsightError("COCO file has no categories", ann_path)
    cats: list[tuple[int | str, str]] = []
    seen_id: dict[int | str, int] = {}
    seen_name: dict[str, int] = {}
    for i, c, cid, where in _coco_identified(coco, "categories", problems):
        name = c.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{where}: no name (got {_show(name)})")
            continue
        if cid in seen_id:
            problems.append(f"{where}: the id is also categories[{seen_id[cid]}]'s")
            continue
        if name in seen_name:
            problems.append(f"{where}: the name {name!r} is also categories[{seen_name[name]}]'s")
            continue
        seen_id[cid], seen_name[name] = i, i
        cats.append((cid, name))
    _refuse(problems, ann_path)
    cats.sort(key=lambda c: (isinstance(c[0], str), c[0]))  # integer ids in order, then names
    return {cid: k for k, (cid, _) in enumerate(cats)}, [name for _, name in cats]


def _coco_images(coco: dict[str, Any], ann_path: Path) -> dict[int | str, _CocoImage]:
    """The listed images by id (ids equal as numbers are one id); refused when an entry is malformed."""
    problems: list[str] = []
    images: dict[int | str, _CocoImage] = {}
    for i, img, iid, where in _coco_identified(coco, "images", problems):
        if iid in images:
            problems.append(f"{where}: the id is also images[{images[iid].index}]'s (ids equal as numbers are one id)")
            continue
        name = img.get("file_name")
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{where}: no file_name")
        size: dict[str, float | None] = {}
        for axis in ("width", "height"):
            v = _number(img.get(axis))
            if axis not in img:
                problems.append(f"{where}: no {axis}")
            elif v is None or v <= 0:
                problems.append(f"{where}: {axis} {_show(img.get(axis))} is not a positive number")
                v = None
            size[axis] = v
        images[iid] = _CocoImage(i, iid, img, size["width"], size["height"])
    _refuse(problems, ann_path)
    return images


def _coco_boxes(
    coco: dict[str, Any], images: dict[int | str, _CocoImage], cat_index: dict[int | str, int], ann_path: Path
) -> tuple[dict[int | str, list[tuple[list[float], int | None]]], list[str]]:
    """Each image's boxes ``[x1, y1, x2, y2]`` in its annotated pixels with their category index (None: the
    annotation has no category_id), a box partly outside its image clipped to it; refused when an annotation is
    malformed, names an image not listed or a category not listed, or lies wholly outside its image."""
    problems: list[str] = []
    clipped: list[str] = []
    boxes: dict[int | str, list[tuple[list[float], int | None]]] = {}
    for i, a in _coco_entries(coco, "annotations", problems):
        where = f"annotations[{i}]" + (f" (id {_show(a['id'])})" if a.get("id") is not None else "")
        if "image_id" not in a:
            problems.append(f"{where}: no image_id")
            continue
        iid = _as_id(a["image_id"])
        image = images.get(iid) if iid is not None else None
        if image is None:
            problems.append(f"{where}: image_id {_show(a['image_id'])} is not the id of any image in images[]")
            continue
        label: int | None = None
        if a.get("category_id") is not None:  # no category_id at all: the image is left out (listed in excluded)
            cid = _as_id(a["category_id"])
            if cid not in cat_index:
                known = ", ".join(str(c) for c in cat_index)
                problems.append(
                    f"{where}: category_id {_show(a['category_id'])} is not among categories[].id ({known})"
                )
                continue
            label = cat_index[cid]
        if "bbox" not in a:
            problems.append(f"{where}: no bbox")
            continue
        bbox = a["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4:
            problems.append(f"{where}: bbox {_show(bbox)} is not [x, y, width, height]")
            continue
        values = [v for v in map(_number, bbox) if v is not None]
        if len(values) != 4:
            problems.append(f"{where}: bbox {_show(bbox)} holds a value that is not a finite number")
            continue
        x, y, w, h = values
        if w <= 0 or h <= 0:
            axis, v = ("width", w) if w <= 0 else ("height", h)
            problems.append(f"{where}: bbox {axis} {v:g} is not positive (bbox is [x, y, width, height])")
            continue
        box = [x, y, x + w, y + h]
        W, H = image.width, image.height
        if W is not None and H is not None:
            if x >= W or y >= H or x + w <= 0 or y + h <= 0:
                problems.append(
                    f"{where}: bbox {_show(bbox)} lies wholly outside its image (image_id {image.id}, {W:g}x{H:g})"
                )
                continue
            inside = [max(0.0, box[0]), max(0.0, box[1]), min(W, box[2]), min(H, box[3])]
            if inside != box:
                clipped.append(where)
                box = inside
        boxes.setdefault(image.id, []).append((box, label))
    _refuse(problems, ann_path)
    return boxes, clipped


def load_coco(spec: str | Path) -> DetectionData:
    """COCO boxes ``[x, y, w, h]`` in the annotated image's pixels, rescaled onto the file actually read.

    When the file read was resized (``resize_manifest.csv``), each axis is scaled by (size read / annotated
    size) of that axis, which is exact for a whole-image resize. Patients come from ``images[].metadata.patientid``
    when present (else each image is its own patient); ``images[].metadata.split`` ("train"/"val"/"test"), when
    every image has one, is the split :meth:`DetectionData.split` uses. Images that cannot be found, or that hold a
    box without ``category_id``, are listed in ``excluded``.

    Ids equal as numbers are one id (``"3"``, ``3.0`` and ``3``). A box partly outside its image is clipped to it.
    Malformed input is refused before anything is trained, in one line naming annotations.json and the entry
    (``annotations[i] (id ...)``, ``images[i] (id ...)``, ``categories[i]``): a bbox that is not four finite numbers
    with positive width and height, a box wholly outside its image, an annotation whose image_id or category_id is
    not listed, an image without a positive width/height or file_name, two images or categories with one id, and an
    image whose file is not the annotated shape (its aspect differs by more than a pixel's rounding per axis: a
    transposed or EXIF-rotated export), whose boxes would otherwise be stretched per axis.
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
    except UnicodeDecodeError as exc:
        raise MedsightError(f"annotations.json is not UTF-8 text ({exc.reason})", ann_path) from exc
    if not isinstance(coco, dict):
        raise MedsightError("annotations.json is not a COCO object (images, annotations, categories)", ann_path)
    cat_index, class_names = _coco_categories(coco, ann_path)
    images = _coco_images(coco, ann_path)
    boxes_of, clipped = _coco_boxes(coco, images, cat_index, ann_path)
    if clipped:
        log.warning(
            "%d box(es) extend past their image and were clipped to it (first: %s of %s)",
            len(clipped),
            clipped[0],
            ann_path,
        )
    staged = _staged_names(folder)
    items, excluded, problems = [], [], []
    for image in images.values():
        img = image.entry
        file = _find_image(folder, img["file_name"], staged)
        key = str(image.id)
        annotated = boxes_of.get(image.id, [])
        if file is None:
            excluded.append({"key": key, "reason": "image file not found"})
            continue
        if any(label is None for _, label in annotated):
            excluded.append({"key": key, "reason": "a box without a known category_id"})
            continue
        w_read, h_read = image_size_2d(file)
        W, H = image.width, image.height
        assert W is not None and H is not None  # a missing or non-positive size was refused in _coco_images
        if abs(w_read * H - h_read * W) > W + H:  # more than a pixel's rounding per axis off one whole-image scale
            problems.append(
                f"images[{image.index}] (id {image.id}): annotated {W:g}x{H:g} (width x height) but the file read is "
                f"{w_read}x{h_read}, another shape (transposed or EXIF-rotated?): its boxes cannot be mapped onto it"
            )
            continue
        sx, sy = w_read / W, h_read / H
        meta = img.get("metadata") or {}
        if not isinstance(meta, dict):
            meta = {}
        pid = str(meta.get("patientid") or f"image-{key}")
        items.append(
            DetectionItem(
                key=key,
                image=file,
                boxes=(np.asarray([b for b, _ in annotated], np.float64).reshape(-1, 4) * [sx, sy, sx, sy]),
                labels=np.asarray([label for _, label in annotated], int),
                patient_id=pid,
                attributes={k: meta.get(k, "") for k in ("sex", "age", "view", "finding") if k in meta},
                declared_split=str(meta.get("split") or ""),
            )
        )
    seen: dict[Path, str] = {}
    for item in items:  # one file listed twice would be trained and scored twice
        if item.image in seen:
            problems.append(f"images with ids {seen[item.image]} and {item.key} are one file")
        seen.setdefault(item.image, item.key)
    _refuse(problems, ann_path)
    if not items:
        raise MedsightError("no COCO image could be found on disk", folder)
    reasons: dict[str, int] = {}
    for entry in excluded:
        reasons[entry["reason"]] = reasons.get(entry["reason"], 0) + 1
    for reason, count in sorted(reasons.items()):  # also in the bundle (data.excluded); said here so it is seen
        log.warning("%d of %d COCO images left out: %s", count, len(images), reason)
    return DetectionData(
        name=folder.name,
        items=items,
        class_names=class_names,
        kind="objects",
        excluded=excluded,
        conventions=[
            "COCO bbox [x, y, w, h] in the annotated image's pixels; scaled per axis by (size read / annotated size)",
            'ids equal as numbers are one id ("3" and 3); a box partly outside its image is clipped to it',
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
