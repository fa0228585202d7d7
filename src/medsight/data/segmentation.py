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

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsight.errors import MedsightError
from medsight.io.images import RASTER_SUFFIXES as IMAGE_SUFFIXES

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

    def case(self, case_id: str) -> Case:
        for c in (*self.train, *self.test):
            if c.id == case_id:
                return c
        raise MedsightError(f"no case {case_id!r}", self.root)

    @property
    def n_classes(self) -> int:
        return max(self.labels) + 1


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
            if m and (m.group(1) in labels or n_channels_declared >= 1 or not lab_dir.is_dir()):
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
    labels = _label_names(meta.get("labels"))
    modality = _modality(channels_meta)
    channel_names = [str(v) for _, v in sorted(channels_meta.items())] if isinstance(channels_meta, dict) else []
    if not labels:
        values = _label_values([c.label for c in train[: min(len(train), 20)] if c.label is not None])
        labels = {0: "background", **{int(v): f"label_{int(v)}" for v in values if v != 0}}
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
    )


def _label_names(raw: Any) -> dict[int, str]:
    if not isinstance(raw, dict) or not raw:
        return {}
    out: dict[int, str] = {}
    for k, v in raw.items():
        if str(k).lstrip("-").isdigit():  # MSD: {"0": "background", "1": "Anterior"}
            out[int(k)] = str(v)
        elif isinstance(v, int):  # nnU-Net v2: {"background": 0, "Anterior": 1}
            out[int(v)] = str(k)
        else:
            raise MedsightError(f"dataset.json label {k!r}: region-based labels are not supported")
    out.setdefault(0, "background")
    return dict(sorted(out.items()))


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
    first = _read_raster(train[0].images[0])
    channels = first.shape[0]
    labels = _label_names(meta.get("labels"))
    if not labels:
        values = _label_values([c.label for c in train[: min(len(train), 10)] if c.label is not None])
        fg = [v for v in values if v]
        labels = {0: "background", **({1: "foreground"} if fg == [1] else {v: f"label_{v}" for v in fg})}
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
        channel_names=["R", "G", "B"] if channels == 3 else [f"channel_{k}" for k in range(channels)],
        official_test=bool(test),
        notes=notes,
    )


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


def _read_label(path: Path) -> np.ndarray:
    """Integer label map; 0/255 masks become 0/1. Non-integer values are an error."""
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
    arr = np.asarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.allclose(arr, np.round(arr)):
            raise MedsightError("label values must be integer classes (found fractional values)", path)
        arr = np.round(arr)
    arr = arr.astype(np.int64)
    values = np.unique(arr)
    if values.min() < 0:
        raise MedsightError("label values must be non-negative integer classes", path)
    if set(values.tolist()) <= {0, 255} and 255 in values:
        arr = (arr == 255).astype(np.int64)
    elif 255 in values and len(values) > 3:
        # a 0/255 mask with values in between: anti-aliased, or resized with interpolation. Read as classes it
        # would make up to 256 of them (and a network to match) from one binary mask
        raise MedsightError(
            f"a 0/255 mask with {len(values) - 2} other values in between (anti-aliased, or resized with "
            "interpolation): labels must be class numbers (0/1/2..., or 0/255 for a binary mask); save masks "
            "without smoothing or resample them with nearest neighbour",
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
            return np.asarray(img.dataobj), np.asarray(img.affine, dtype=float)  # type: ignore[attr-defined]
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
    label = roi = second = None
    if case.label is not None:
        label = _read_label(case.label)
        for more in case.more_labels:
            extra_label = _read_label(more)
            if extra_label.shape != label.shape:
                raise MedsightError(f"label shape {extra_label.shape} differs from {case.label.name}", more)
            label = np.maximum(label, extra_label)  # binary masks: the logical OR
        if label.shape != image.shape[1:]:
            raise MedsightError(f"label shape {label.shape} does not match its image {image.shape[1:]}", case.label)
        if ds.spatial_dims == 3 and case.label.name.lower().endswith(VOLUME_SUFFIXES):
            _, lab_affine = _read_volume(case.label)
            if not np.allclose(lab_affine, affine, atol=1e-3, rtol=1e-4):
                raise MedsightError("label geometry (affine) does not match its image", case.label)
        extra = set(np.unique(label).tolist()) - set(ds.labels)
        if extra:
            raise MedsightError(
                f"label values {sorted(extra)} are not declared classes {sorted(ds.labels)}", case.label
            )
    if case.roi is not None:
        roi = _read_label(case.roi) > 0
        if roi.shape != image.shape[1:]:
            raise MedsightError(f"ROI shape {roi.shape} does not match its image {image.shape[1:]}", case.roi)
    if case.second is not None:
        second = _read_label(case.second)
        if second.shape != image.shape[1:]:
            raise MedsightError("second-observer label shape does not match its image", case.second)
    if not np.all(np.isfinite(image)):
        raise MedsightError("image holds NaN or infinite values", case.images[0])
    return Loaded(case.id, image, label, spacing, affine, roi, second)


# ----------------------------------------------------------------------------------------------- fingerprint


def fingerprint(ds: SegmentationDataset, loaded: Sequence[Loaded], seed: int = 0) -> dict[str, Any]:
    """What the planner needs: spacings, sizes, foreground intensity statistics per channel, class frequencies."""
    rng = np.random.default_rng(seed)
    spacings = np.asarray([c.spacing for c in loaded], dtype=float)
    shapes = np.asarray([c.image.shape[1:] for c in loaded], dtype=float)
    n_channels = int(loaded[0].image.shape[0])
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
