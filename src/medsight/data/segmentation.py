"""Segmentation data sets: folder adapters, label validation and the data fingerprint.

Two layouts are recognised (nnU-Net's convention over configuration: the folder is the whole contract):

* **MSD / nnU-Net**: ``imagesTr/`` + ``labelsTr/`` (+ optional ``imagesTs/``/``labelsTs/``) and an optional
  ``dataset.json``. Images are NIfTI (``.nii``, ``.nii.gz``) or other lossless formats SimpleITK reads
  (``.nrrd``, ``.mha``, ``.mhd``); nnU-Net's channel suffix (``case_0000.nii.gz``) is understood. Without
  ``dataset.json`` the labels are inferred from the label values (``label_1``, ...) and the modality is
  "unknown", which normalises like MRI (per-image z-score).
* **Image + mask pairs** (any 2D format Pillow reads: PNG/TIFF/GIF/JPEG/BMP/PPM/PGM/WebP...): ``images/`` + a
  label folder (``labels/``, ``masks/``,
  ``1st_manual/``, ``manual/``, ``groundtruth/``, ``annotations/``) and an optional region-of-interest folder
  (``mask/``, ``roi/``, ``fov/``), either at the top or inside ``training/``/``train/`` and ``test/``
  (DRIVE's own layout). Files are paired by their leading id (``21_training.tif`` ↔ ``21_manual1.gif``). A
  ``2nd_manual/`` folder beside the test labels is read as a second observer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsight.errors import MedsightError
from medsight.io.geometry import nifti_affine_mm
from medsight.io.images import RASTER_SUFFIXES as IMAGE_SUFFIXES
from medsight.io.images import check_pixels

log = logging.getLogger("medsight.data")

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
RASTER_SUFFIXES = tuple(sorted(IMAGE_SUFFIXES))  # every 2D format Pillow reads (medsight.io.images)
LABEL_DIRS = ("labels", "masks", "1st_manual", "manual", "groundtruth", "annotations", "segmentations")
ROI_DIRS = ("mask", "roi", "fov")
SECOND_OBSERVER_DIRS = ("2nd_manual",)
TRAIN_DIRS = ("training", "train")
TEST_DIRS = ("test", "testing")


@dataclass(frozen=True)
class Case:
    """One image with its label (None for unlabelled test images), optional ROI and second-observer label."""

    id: str
    images: tuple[Path, ...]  # one per channel file (nnU-Net style) or one file holding all channels
    label: Path | None
    roi: Path | None = None
    second: Path | None = None
    #: Further label files merged into ``label`` by logical OR (BUSI: one mask file per lesion).
    more_labels: tuple[Path, ...] = ()


@dataclass
class Loaded:
    """A case in memory: ``image`` (C, *spatial) float32, ``label`` (*spatial) int, geometry."""

    id: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, ...]
    affine: np.ndarray
    roi: np.ndarray | None = None
    second: np.ndarray | None = None


@dataclass
class SegmentationDataset:
    """A recognised folder: its cases per split and what ``dataset.json`` says (or what was inferred)."""

    root: Path
    name: str
    layout: str  # "msd" or "pairs"
    spatial_dims: int
    train: list[Case]
    test: list[Case]
    labels: dict[int, str]
    modality: str
    channel_names: list[str]
    official_test: bool
    notes: list[str] = field(default_factory=list)
    #: Read every image as one grey channel (BUSI: 16 colour images among 764 grey ones).
    grey: bool = False
    #: The value each class has in the label files, by class index, when they are not 0, 1, 2... (dataset.json
    #: ``{"0": "background", "1": "liver", "3": "tumour"}`` gives ``(0, 1, 3)``: classes 0/1/2 inside medsight);
    #: empty when the values are the class indices.
    label_values: tuple[int, ...] = ()

    def case(self, case_id: str) -> Case:
        for c in (*self.train, *self.test):
            if c.id == case_id:
                return c
        raise MedsightError(f"no case {case_id!r}", self.root)

    @property
    def n_classes(self) -> int:
        return max(self.labels) + 1

    @property
    def declared_values(self) -> tuple[int, ...]:
        """The values a label file may hold: those of :attr:`label_values`, else the class indices."""
        return self.label_values or tuple(sorted(self.labels))


# ----------------------------------------------------------------------------------------------- discovery


def is_msd_folder(path: Path) -> bool:
    return path.is_dir() and (path / "imagesTr").is_dir() and (path / "labelsTr").is_dir()


def _pair_dirs(folder: Path) -> tuple[Path, Path, Path | None] | None:
    images = folder / "images"
    if not images.is_dir():
        return None
    label = next((folder / d for d in LABEL_DIRS if (folder / d).is_dir()), None)
    if label is None:
        return None
    roi = next((folder / d for d in ROI_DIRS if (folder / d).is_dir() and folder / d != label), None)
    return images, label, roi


def is_pairs_folder(path: Path) -> bool:
    if not path.is_dir():
        return False
    if _pair_dirs(path) is not None:
        return True
    return any((path / d).is_dir() and _pair_dirs(path / d) is not None for d in TRAIN_DIRS)


def recognises(spec: str) -> bool:
    from medsight.data import busi

    path = Path(spec).expanduser()
    return is_msd_folder(path) or is_pairs_folder(path) or busi.is_busi_folder(path)


def open_dataset(spec: str | Path) -> SegmentationDataset:
    """Recognise the folder and list its cases (nothing heavy is read yet)."""
    root = Path(spec).expanduser()
    if not root.is_dir():
        raise MedsightError("not a folder", root)
    if is_msd_folder(root):
        return _open_msd(root)
    if is_pairs_folder(root):
        return _open_pairs(root)
    from medsight.data import busi

    if busi.is_busi_folder(root):
        return busi.segmentation_dataset(root)
    raise MedsightError(
        "not a segmentation folder: expected imagesTr/ + labelsTr/ (MSD / nnU-Net) or images/ + labels/ "
        "(image and mask pairs, optionally inside training/ and test/)",
        root,
    )


def _strip(name: str, suffixes: Sequence[str]) -> str | None:
    low = name.lower()
    for s in suffixes:
        if low.endswith(s):
            return name[: -len(s)]
    return None


def _files(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        stem = _strip(p.name, suffixes)
        if stem is not None:
            out[stem] = p
    return out


def _open_msd(root: Path) -> SegmentationDataset:
    meta: dict[str, Any] = {}
    notes: list[str] = []
    if (root / "dataset.json").is_file():
        try:
            meta = json.loads((root / "dataset.json").read_text())
        except json.JSONDecodeError as exc:
            raise MedsightError(f"dataset.json is not valid JSON ({exc})", root / "dataset.json") from exc
    else:
        notes.append("no dataset.json: labels inferred from the label values, modality unknown (per-image z-score)")
    channels_meta = meta.get("channel_names") or meta.get("modality") or {}
    n_channels_declared = len(channels_meta) if isinstance(channels_meta, dict) else 0

    def cases(img_dir: Path, lab_dir: Path) -> list[Case]:
        images = _files(img_dir, VOLUME_SUFFIXES)
        labels = _files(lab_dir, VOLUME_SUFFIXES)
        grouped: dict[str, list[Path]] = {}
        for stem, p in images.items():
            m = re.fullmatch(r"(.+)_(\d{4})", stem)
            # a stem with a label of its own is a case (patient_1000 with labelsTr/patient_1000), whatever its
            # digits; a 4-digit suffix is an nnU-Net channel file when its case has the label (case_001_0000 with
            # labelsTr/case_001), or in a folder without labels when dataset.json declares channels
            if m and stem not in labels and (m.group(1) in labels or (n_channels_declared >= 1 and not labels)):
                grouped.setdefault(m.group(1), []).append(p)
            else:
                grouped.setdefault(stem, []).append(p)
        out = []
        for cid in sorted(grouped):
            label = labels.get(cid)
            if label is None and lab_dir.is_dir() and img_dir.name == "imagesTr":
                raise MedsightError(f"image {cid} has no label in {lab_dir.name}/", img_dir)
            out.append(Case(cid, tuple(sorted(grouped[cid])), label))
        orphans = sorted(set(labels) - set(grouped))
        if orphans:
            raise MedsightError(f"{len(orphans)} label(s) without an image, e.g. {orphans[0]}", lab_dir)
        return out

    train = cases(root / "imagesTr", root / "labelsTr")
    if not train:
        raise MedsightError("imagesTr/ holds no images (NIfTI, NRRD or MHA)", root / "imagesTr")
    test = [c for c in cases(root / "imagesTs", root / "labelsTs") if c.label is not None]
    declared = _label_names(meta.get("labels"), root / "dataset.json")
    modality = _modality(channels_meta)
    channel_names = [str(v) for _, v in sorted(channels_meta.items())] if isinstance(channels_meta, dict) else []
    if not declared:
        values = _infer_label_values(train, root / "labelsTr")
        declared = {0: "background", **{v: f"label_{v}" for v in values if v != 0}}
    labels, label_values = _classes(declared, notes)
    _check_volume_channels([*train, *test], len(channel_names))
    return SegmentationDataset(
        root=root,
        name=str(meta.get("name") or root.name),
        layout="msd",
        spatial_dims=3,
        train=train,
        test=test,
        labels=labels,
        modality=modality,
        channel_names=channel_names,
        official_test=bool(test),
        notes=notes,
        label_values=label_values,
    )


def _header_channels(case: Case) -> int | None:
    """The channels of a case from its NIfTI headers (a 4D file holds its last axis as channels), without reading
    pixels; None when a file is not NIfTI or its header is unreadable (reading the case then says why)."""
    import nibabel as nib

    total = 0
    for p in case.images:
        if not p.name.lower().endswith((".nii", ".nii.gz")):
            return None
        try:
            shape = nib.load(str(p)).header.get_data_shape()  # type: ignore[attr-defined]
        except Exception:
            return None
        total += int(shape[3]) if len(shape) == 4 else 1
    return total


def _check_volume_channels(cases: Sequence[Case], declared: int) -> None:
    """Every case has the channels dataset.json declares, or (none declared) the channels most cases have; else a
    one-line error naming the odd case's first file, before anything is read or trained."""
    found = [(c, _header_channels(c)) for c in cases]
    known = [(c, n) for c, n in found if n is not None]
    if not known:
        return
    counts = Counter(n for _, n in known)
    usual = declared or counts.most_common(1)[0][0]
    odd = next(((c, n) for c, n in known if n != usual), None)
    if odd is None:
        return
    case, n = odd
    if declared:
        problem = f"an image of {n} channel(s); dataset.json declares {declared}"
    else:
        problem = f"an image of {n} channel(s) where {counts[usual]} of the {len(known)} cases have {usual}"
    raise MedsightError(
        f"{problem}: every case needs the same channels (nnU-Net channel files case_0000, case_0001... or one "
        "multi-channel file each)",
        case.images[0],
    )


def _label_names(raw: Any, where: Path | None = None) -> dict[int, str]:
    """``{label value: name}`` from dataset.json's ``labels`` (the values as they are in the label files)."""
    if not isinstance(raw, dict) or not raw:
        return {}
    out: dict[int, str] = {}
    for k, v in raw.items():
        if str(k).lstrip("-").isdigit():  # MSD: {"0": "background", "1": "Anterior"}
            out[int(k)] = str(v)
        elif isinstance(v, int) and not isinstance(v, bool):  # nnU-Net v2: {"background": 0, "Anterior": 1}
            out[int(v)] = str(k)
        else:
            raise MedsightError(f"dataset.json label {k!r}: region-based labels are not supported", where)
    negative = sorted(k for k in out if k < 0)
    if negative:
        raise MedsightError(f"dataset.json label id {negative[0]}: label ids must be 0 or more", where)
    out.setdefault(0, "background")
    return dict(sorted(out.items()))


def _classes(declared: dict[int, str], notes: list[str]) -> tuple[dict[int, str], tuple[int, ...]]:
    """Number the declared label values 0, 1, 2... in order (names kept), so that a gap in the ids (``0, 1, 3``)
    makes no class that never occurs: such a class would score Dice 1 (a true negative) on every case and inflate
    every mean. Returns ``(labels by class index, label values by class index or () when they are the indices)``."""
    values = sorted(declared)
    labels = {k: declared[v] for k, v in enumerate(values)}
    if values == list(range(len(values))):
        return labels, ()
    notes.append(
        f"label values {'/'.join(map(str, values))} are not consecutive: numbered as classes "
        f"{'/'.join(map(str, range(len(values))))} inside medsight ("
        + ", ".join(f"{v} {declared[v]} -> class {k}" for k, v in enumerate(values) if v != k)
        + "); predicted label maps hold the class numbers"
    )
    return labels, tuple(values)


def _modality(channels: Any) -> str:
    values = [str(v).upper() for v in channels.values()] if isinstance(channels, dict) else []
    if any(v == "CT" for v in values):
        return "CT"
    if any(v in ("MRI", "MR") or v.startswith(("T1", "T2", "FLAIR", "ADC", "DWI")) for v in values):
        return "MRI"
    if any(v in ("RGB", "COLOUR", "COLOR", "R", "G", "B") for v in values):
        return "RGB"
    return "unknown"


def _label_values(paths: Sequence[Path]) -> list[int]:
    values: set[int] = set()
    for p in paths:
        values |= {int(v) for v in np.unique(_read_label(p))}
    return sorted(values)


def _infer_label_values(train: Sequence[Case], where: Path) -> list[int]:
    """The label values of every training mask (no dataset.json): a class that only some masks hold (a lesion
    absent from the normal images sorted first) is still seen. Remembered under ``$MEDSIGHT_CACHE`` by the files'
    names, sizes and modification times, so a second run on the same folder reads no mask for it."""
    paths = [p for c in train for p in (c.label, *c.more_labels) if p is not None]
    if not paths:
        return [0]
    from medsight import config

    stats = []
    for p in paths:
        st = p.stat()
        stats.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    key = hashlib.sha256(json.dumps(["label-values/1", stats]).encode()).hexdigest()[:24]
    cached = config.cache_root() / "segmentation_labels" / f"{key}.json"
    try:
        found = json.loads(cached.read_text())
        if isinstance(found, list) and all(isinstance(v, int) for v in found):
            return sorted(found)
    except (OSError, ValueError):
        pass
    if len(paths) > 50:
        log.info("no dataset.json: reading the %d masks to find the label values", len(paths))
    values = _label_values(paths)
    if values == [0]:
        raise MedsightError(
            f"all {len(paths)} masks are empty (background only): there is no class to learn; add a dataset.json "
            "naming the labels if the masks use another value than 1, 2...",
            where,
        )
    try:
        from medsight.io.atomic import write_json

        write_json(cached, values)
    except OSError:  # a read-only cache only costs the speed-up
        pass
    return values


def _open_pairs(root: Path) -> SegmentationDataset:
    meta: dict[str, Any] = {}
    if (root / "dataset.json").is_file():
        meta = json.loads((root / "dataset.json").read_text())
    notes: list[str] = []
    train_root = root if _pair_dirs(root) else next(root / d for d in TRAIN_DIRS if _pair_dirs(root / d))
    test_root = next((root / d for d in TEST_DIRS if (root / d).is_dir() and _pair_dirs(root / d)), None)

    def cases(folder: Path, second: bool) -> list[Case]:
        dirs = _pair_dirs(folder)
        assert dirs is not None
        img_dir, lab_dir, roi_dir = dirs
        images = _by_id(_files(img_dir, RASTER_SUFFIXES))
        labels = _by_id(_files(lab_dir, RASTER_SUFFIXES))
        rois = _by_id(_files(roi_dir, RASTER_SUFFIXES)) if roi_dir else {}
        seconds: dict[str, Path] = {}
        if second:
            sdir = next((folder / d for d in SECOND_OBSERVER_DIRS if (folder / d).is_dir()), None)
            seconds = _by_id(_files(sdir, RASTER_SUFFIXES)) if sdir else {}
        missing = sorted(set(images) - set(labels))
        if missing:
            raise MedsightError(f"{len(missing)} image(s) without a mask in {lab_dir.name}/, e.g. {missing[0]}", folder)
        if roi_dir and set(images) - set(rois):
            raise MedsightError(f"some images have no region-of-interest mask in {roi_dir.name}/", folder)
        return [Case(i, (images[i],), labels[i], rois.get(i), seconds.get(i)) for i in sorted(images)]

    train = cases(train_root, second=False)
    if not train:
        raise MedsightError("no images found", train_root / "images")
    test = cases(test_root, second=True) if test_root is not None else []
    channels, grey = _raster_channels([c.images[0] for c in (*train, *test)], notes)
    declared = _label_names(meta.get("labels"), root / "dataset.json")
    if not declared:
        values = _infer_label_values(train, train_root)
        fg = [v for v in values if v]
        declared = {0: "background", **({1: "foreground"} if fg == [1] else {v: f"label_{v}" for v in fg})}
    labels, label_values = _classes(declared, notes)
    modality = _modality(meta.get("channel_names") or {}) if meta.get("channel_names") else ""
    if not modality or modality == "unknown":
        modality = "RGB" if channels == 3 else "unknown"
    if train_root == root:
        notes.append("no separate test folder: a patient-level test split is held out")
    return SegmentationDataset(
        root=root,
        name=str(meta.get("name") or root.name),
        layout="pairs",
        spatial_dims=2,
        train=train,
        test=test,
        labels=labels,
        modality=modality,
        channel_names=(
            ["grey"] if grey else ["R", "G", "B"] if channels == 3 else [f"channel_{k}" for k in range(channels)]
        ),
        official_test=bool(test),
        notes=notes,
        grey=grey,
        label_values=label_values,
    )


def _raster_channels(paths: Sequence[Path], notes: list[str]) -> tuple[int, bool]:
    """``(channels, grey)`` of the images as :func:`medsight.io.images.read_image` reads them (grey 1, colour 3),
    from their headers. Colour images among grey ones (or the other way round) are all read as grey, as BUSI's
    are: one network takes one number of channels."""
    from PIL import Image, UnidentifiedImageError

    from medsight.io.images import _palette_is_grey

    counts: dict[int, list[Path]] = {}
    for p in paths:
        try:
            with Image.open(p) as img:
                if img.mode in ("I;16", "I;16B", "I", "F", "L", "1"):  # as read_image reads them
                    n = 1
                elif img.mode == "P":
                    n = 1 if _palette_is_grey(img) else 3
                else:
                    n = 3
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise MedsightError(f"not a readable image ({exc})", p) from exc
        counts.setdefault(n, []).append(p)
    if len(counts) <= 1:
        return (next(iter(counts)) if counts else 1), False
    colour = counts.get(3, [])
    notes.append(
        f"{len(colour)} of {len(paths)} images are colour (e.g. {colour[0].name}) and the rest grey: every image is "
        "read as grey (BT.601 luma), as BUSI's are"
    )
    return 1, True


def _by_id(files: dict[str, Path]) -> dict[str, Path]:
    """Key files by their leading id (``21_training`` → ``21``) when that is unambiguous, else by stem."""
    leading = {re.split(r"[_\-. ]", stem)[0]: p for stem, p in files.items()}
    return leading if len(leading) == len(files) else dict(files)


# ----------------------------------------------------------------------------------------------- reading


def _read_raster(path: Path) -> np.ndarray:
    from medsight.io.images import read_image

    return read_image(path)


#: Raster formats whose compression changes pixel values: no label image may use them.
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".jfif")


def _read_label(path: Path, declared: Collection[int] | None = None, classes: bool = True) -> np.ndarray:
    """Integer label map as stored; 0/255 (8-bit) and 0/65535 (16-bit) binary masks become 0/1 unless ``declared``
    (the values dataset.json names, or those inferred from the masks) holds 255/65535. Non-integer values are an
    error, and so, when nothing declares them, are values that are not small class numbers (a 255 "ignore" border,
    classes scaled to fill 8 or 16 bits, an intensity image saved as a mask). ``classes=False`` (a region-of-interest
    mask, read as ``> 0``) skips those two checks."""
    name = path.name.lower()
    if name.endswith(LOSSY_SUFFIXES):
        raise MedsightError(
            "a label image saved as JPEG: lossy compression changes the class of pixels along every edge; save "
            "masks as PNG (or TIFF) without resampling",
            path,
        )
    if name.endswith(RASTER_SUFFIXES):
        from PIL import Image

        with Image.open(path) as img:
            arr = np.asarray(img)
        if arr.ndim == 3:
            if not (np.all(arr[..., 0] == arr[..., 1]) and np.all(arr[..., 1] == arr[..., 2])):
                raise MedsightError("colour label image: labels must be one integer class per pixel", path)
            arr = arr[..., 0]
    else:
        arr = _read_volume(path)[0]
        if arr.ndim == 4 and arr.shape[3] == 1:  # (x, y, z, 1): one label channel, as images may have
            arr = arr[..., 0]
    arr = np.asarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.allclose(arr, np.round(arr)):
            raise MedsightError("label values must be integer classes (found fractional values)", path)
        arr = np.round(arr)
    arr = arr.astype(np.int64)
    values = np.unique(arr)
    if values.min() < 0:
        raise MedsightError("label values must be non-negative integer classes", path)
    present = set(values.tolist())
    known = set(declared) if declared is not None else set()
    for full, bits in ((255, "8-bit"), (65535, "16-bit")):
        if full not in present or full in known:
            continue
        if present <= {0, full}:  # a binary mask saved at full scale
            return (arr == full).astype(np.int64)
        if full == 255 and len(values) > 3:
            # a 0/255 mask with values in between: anti-aliased, or resized with interpolation. Read as classes it
            # would make up to 256 of them (and a network to match) from one binary mask
            raise MedsightError(
                f"a 0/255 mask with {len(values) - 2} other values in between (anti-aliased, or resized with "
                "interpolation): labels must be class numbers (0/1/2..., or 0/255 for a binary mask); save masks "
                "without smoothing or resample them with nearest neighbour",
                path,
            )
        if not classes:  # a region of interest: only "> 0" is used
            continue
        shown = "/".join(str(v) for v in sorted(present))
        small = [v for v in present if 0 < v < full]
        if small and max(small) <= 20:
            hint = (
                f"{full} looks like an ignore label (a 'void' border, as in Pascal VOC), which medsight does not "
                f"have: set those pixels to 0 or to their class, or name {full} as a class in dataset.json"
            )
        else:
            hint = (
                f"class numbers scaled to fill {bits}? save the class numbers themselves (0, 1, 2...), or name "
                "these values as classes in dataset.json"
            )
        raise MedsightError(f"label values {shown} are not class numbers: {hint}", path)
    if classes and declared is None and values.max() > 255:
        big = [int(v) for v in values if v > 255]
        raise MedsightError(
            f"label values up to {big[-1]} ({len(values)} distinct) are not small class numbers: an intensity image "
            "saved as a mask, or a 16-bit export? save class numbers 0, 1, 2..., or name the classes in dataset.json",
            path,
        )
    return arr


def _read_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(array x,y,z, affine RAS)`` of a NIfTI (nibabel) or any SimpleITK-readable volume."""
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            img = nib.load(str(path))
            return np.asarray(img.dataobj), nifti_affine_mm(img)  # type: ignore[attr-defined]
        import SimpleITK as sitk

        itk = sitk.ReadImage(str(path))
        arr = np.transpose(sitk.GetArrayFromImage(itk), (2, 1, 0))
        direction = np.asarray(itk.GetDirection()).reshape(3, 3)
        lps = np.eye(4)
        lps[:3, :3] = direction * np.asarray(itk.GetSpacing())
        lps[:3, 3] = itk.GetOrigin()
        return arr, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    except MedsightError:
        raise
    except Exception as exc:
        raise MedsightError(f"cannot read volume ({type(exc).__name__}: {exc})", path) from exc


def spacing_of(affine: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))


def load_case(ds: SegmentationDataset, case: Case) -> Loaded:
    """Read and validate one case: label integer classes within the declared labels, shape and geometry
    matching the image."""
    if ds.spatial_dims == 2:
        image = _read_raster(case.images[0]).astype(np.float32)
        if ds.grey and image.shape[0] == 3:
            from medsight.data.busi import LUMA

            image = np.tensordot(LUMA, image, axes=1)[None]
        spacing: tuple[float, ...] = (1.0, 1.0)
        affine = np.eye(4)
    else:
        parts: list[np.ndarray] = []
        affine = np.eye(4)
        for k, p in enumerate(case.images):
            arr, aff = _read_volume(p)
            arr = np.asarray(arr, dtype=np.float32)
            if arr.ndim == 4:
                parts.extend(np.moveaxis(arr, -1, 0))
            elif arr.ndim == 3:
                parts.append(arr)
            else:
                raise MedsightError(f"volume of shape {arr.shape}: expected 3D", p)
            if k == 0:
                affine = aff
            elif parts[-1].shape != parts[0].shape or not np.allclose(aff, affine, atol=1e-3):
                raise MedsightError("channel files differ in shape or geometry", p)
        image = np.stack(parts)
        spacing = spacing_of(affine)
    if ds.channel_names and image.shape[0] != len(ds.channel_names):
        declared_by = "dataset.json declares" if ds.layout == "msd" else "the other images have"
        raise MedsightError(
            f"an image of {image.shape[0]} channel(s); {declared_by} {len(ds.channel_names)} "
            f"({', '.join(ds.channel_names)}): every case needs the same channels",
            case.images[0],
        )
    label = roi = second = None
    values = ds.declared_values
    if case.label is not None:
        label = _read_label(case.label, values)
        for more in case.more_labels:
            extra_label = _read_label(more, values)
            if extra_label.shape != label.shape:
                raise MedsightError(f"label shape {extra_label.shape} differs from {case.label.name}", more)
            label = np.maximum(label, extra_label)  # binary masks: the logical OR
        if label.shape != image.shape[1:]:
            raise MedsightError(f"label shape {label.shape} does not match its image {image.shape[1:]}", case.label)
        if ds.spatial_dims == 3 and case.label.name.lower().endswith(VOLUME_SUFFIXES):
            _, lab_affine = _read_volume(case.label)
            if not np.allclose(lab_affine, affine, atol=1e-3, rtol=1e-4):
                raise MedsightError("label geometry (affine) does not match its image", case.label)
        label = _as_classes(ds, label, case.label)
    if case.roi is not None:
        roi = _read_label(case.roi, classes=False) > 0
        if roi.shape != image.shape[1:]:
            raise MedsightError(f"ROI shape {roi.shape} does not match its image {image.shape[1:]}", case.roi)
    if case.second is not None:
        second = _read_label(case.second, values)
        if second.shape != image.shape[1:]:
            raise MedsightError("second-observer label shape does not match its image", case.second)
        second = _as_classes(ds, second, case.second)
    check_pixels(image, case.images[0])  # the check predict and classification make: training reads the same way
    return Loaded(case.id, image, label, spacing, affine, roi, second)


def _as_classes(ds: SegmentationDataset, label: np.ndarray, path: Path) -> np.ndarray:
    """``label`` (values as stored) checked against the declared values and numbered as classes 0, 1, 2..."""
    values = ds.declared_values
    extra = set(np.unique(label).tolist()) - set(values)
    if extra:
        raise MedsightError(f"label values {sorted(extra)} are not declared classes {list(values)}", path)
    if ds.label_values:
        return np.searchsorted(np.asarray(ds.label_values), label).astype(np.int64)
    return label


# ----------------------------------------------------------------------------------------------- fingerprint


def fingerprint(ds: SegmentationDataset, loaded: Sequence[Loaded], seed: int = 0) -> dict[str, Any]:
    """What the planner needs: spacings, sizes, foreground intensity statistics per channel, class frequencies."""
    rng = np.random.default_rng(seed)
    n_channels = _common_channels(ds, loaded)
    spacings = np.asarray([c.spacing for c in loaded], dtype=float)
    shapes = np.asarray([c.image.shape[1:] for c in loaded], dtype=float)
    samples: list[list[np.ndarray]] = [[] for _ in range(n_channels)]
    counts = np.zeros(ds.n_classes, dtype=np.int64)
    for c in loaded:
        if c.label is None:
            continue
        counts += np.bincount(c.label.ravel(), minlength=ds.n_classes)[: ds.n_classes]
        fg = c.label > 0
        for ch in range(n_channels):
            values = c.image[ch][fg]
            if values.size > 10000:
                values = rng.choice(values, 10000, replace=False)
            samples[ch].append(values)
    intensity = []
    for ch in range(n_channels):
        v = np.concatenate(samples[ch]) if samples[ch] else np.zeros(1, np.float32)
        intensity.append(
            {
                "mean": float(v.mean()),
                "std": float(v.std()),
                "p00_5": float(np.percentile(v, 0.5)),
                "p99_5": float(np.percentile(v, 99.5)),
                "min": float(v.min()),
                "max": float(v.max()),
            }
        )
    total = max(int(counts.sum()), 1)
    return {
        "n_cases": len(loaded),
        "spatial_dims": ds.spatial_dims,
        "n_channels": n_channels,
        "modality": ds.modality,
        "spacing_median": np.median(spacings, axis=0).round(4).tolist(),
        "spacing_min": spacings.min(axis=0).round(4).tolist(),
        "spacing_max": spacings.max(axis=0).round(4).tolist(),
        "shape_median": np.median(shapes, axis=0).tolist(),
        "shape_min": shapes.min(axis=0).astype(int).tolist(),
        "shape_max": shapes.max(axis=0).astype(int).tolist(),
        "foreground_intensity": intensity,
        "class_frequency": {ds.labels.get(k, str(k)): round(float(n) / total, 6) for k, n in enumerate(counts)},
        "has_roi": any(c.roi is not None for c in loaded),
    }


def _common_channels(ds: SegmentationDataset, loaded: Sequence[Loaded]) -> int:
    """The one channel count of the cases; a case with another (a 4D two-channel NIfTI among 3D ones) is an error
    naming its file."""
    counts = Counter(int(c.image.shape[0]) for c in loaded)
    if not counts:
        raise MedsightError("no cases to fingerprint", ds.root)
    usual, n_usual = counts.most_common(1)[0]
    odd = next((c for c in loaded if c.image.shape[0] != usual), None)
    if odd is None:
        return usual
    try:
        where: Path | str = ds.case(odd.id).images[0]
    except MedsightError:
        where = odd.id
    raise MedsightError(
        f"an image of {odd.image.shape[0]} channel(s) where {n_usual} of the {len(loaded)} cases have {usual}: every "
        "case needs the same channels (nnU-Net channel files case_0000, case_0001... or one multi-channel file each)",
        where,
    )
