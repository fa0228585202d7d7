"""BUSI (breast ultrasound, Al-Dhabyani et al. 2020) read in place: its layout, its masks, and its published folds.

The folder is the original ``Dataset_BUSI_with_GT`` layout: ``benign/``, ``malignant/``, ``normal/``, each holding
``<class> (N).png`` and one mask per lesion (``<class> (N)_mask.png``, ``..._mask_1.png``, ...). Why a module of its
own: an image's lesion mask is the logical OR of its mask files, 16 of the 780 images are RGB among grey ones, two
files are byte-identical under different labels, and there are no patient ids, so the split must be made here and
published rather than derived per run.

The published split (``busi_folds.json`` beside this module) is 5 folds, stratified by class and grouped by image
content (identical pixels = one group), made by scikit-learn's ``StratifiedGroupKFold`` with a fixed seed. CV fold
``k`` tests on fold ``k``; its inner folds (validation for ``--fold 0..3``) are the four others, starting at
``k + 1``. The data folder decides fold 0; :func:`fold_view` makes a folder for another test fold (links to the
class folders plus a ``medsight_splits.json``), which every task then reads as it reads any splits file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medsight.errors import MedsightError

if TYPE_CHECKING:
    from medsight.data.dataset import ClassificationData
    from medsight.data.folds import Folds
    from medsight.data.segmentation import SegmentationDataset

CLASSES = ("benign", "malignant", "normal")
#: The published 5-fold split (image ids per fold); docs/ultrasound.md and benchmarks/busi.py point to it.
FOLDS_FILE = Path(__file__).with_name("busi_folds.json")
FOLDS_SEED = 20200101  # BUSI's publication year; fixed once, never the training seed
N_FOLDS = 5
SPLITS_FILE = "medsight_splits.json"  # the name medsight.data.folds reads in a data folder
_IMAGE = re.compile(r"(?P<cls>benign|malignant|normal) \((?P<n>\d+)\)\.png")
_MASK = re.compile(r"(?P<stem>(?:benign|malignant|normal) \(\d+\))_mask(?:_\d+)?\.png")
#: ITU-R BT.601 luma, as Pillow's ``convert("L")``: the 16 RGB images become grey like the other 764.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class BusiImage:
    """One image: ``id`` (``"benign (12)"``), its class, its file and every mask file of it (one per lesion)."""

    id: str
    cls: str
    image: Path
    masks: tuple[Path, ...]


def is_busi_folder(path: Path) -> bool:
    """The three class folders, each holding at least one ``<class> (N).png``."""
    path = Path(path)
    try:
        return all(
            (path / c).is_dir() and any(_IMAGE.fullmatch(p.name) for p in (path / c).glob(f"{c} (*).png"))
            for c in CLASSES
        )
    except OSError:
        return False


def list_images(root: Path) -> list[BusiImage]:
    """Every image with its masks, sorted by id; an image without a mask or a mask without an image is an error."""
    root = Path(root)
    if not is_busi_folder(root):
        raise MedsightError("not a BUSI folder: expected benign/, malignant/ and normal/ with '<class> (N).png'", root)
    out: list[BusiImage] = []
    for cls in CLASSES:
        names = sorted(p.name for p in (root / cls).iterdir() if p.is_file())
        masks: dict[str, list[Path]] = {}
        images: dict[str, Path] = {}
        for name in names:
            m = _MASK.fullmatch(name)
            if m:
                masks.setdefault(m.group("stem"), []).append(root / cls / name)
            elif (i := _IMAGE.fullmatch(name)) and i.group("cls") == cls:
                images[name[: -len(".png")]] = root / cls / name
        orphans = sorted(set(masks) - set(images))
        if orphans:
            raise MedsightError(f"mask(s) of {orphans[0]!r} without its image", root / cls)
        for stem in sorted(images, key=_number):
            if stem not in masks:
                raise MedsightError(f"image {stem!r} has no mask file", root / cls)
            out.append(BusiImage(stem, cls, images[stem], tuple(sorted(masks[stem]))))
    return out


def _number(stem: str) -> int:
    return int(stem.rsplit("(", 1)[1].rstrip(")"))


def read_image(path: Path) -> np.ndarray:
    """``(1, H, W)`` float32 grey (an RGB image converted by BT.601 luma)."""
    from medsight.io.images import read_image as read_any

    arr = read_any(path).astype(np.float32)
    if arr.shape[0] == 3:
        arr = np.tensordot(LUMA, arr, axes=1)[None]
    elif arr.shape[0] != 1:
        raise MedsightError(f"an image of {arr.shape[0]} channels: BUSI images are grey or RGB", path)
    return arr


def read_mask(paths: Sequence[Path]) -> np.ndarray:
    """The image's whole lesion mask ``(H, W)`` uint8 0/1: the logical OR of its mask files (one per lesion)."""
    from PIL import Image

    merged: np.ndarray | None = None
    for p in paths:
        with Image.open(p) as img:
            arr = np.asarray(img.convert("L")) > 0
        if merged is not None and arr.shape != merged.shape:
            raise MedsightError(f"mask of shape {arr.shape} differs from the image's other masks {merged.shape}", p)
        merged = arr if merged is None else merged | arr
    if merged is None:
        raise MedsightError("an image with no mask file")
    return merged.astype(np.uint8)


# ----------------------------------------------------------------------------------------------- split


def groups(images: Sequence[BusiImage]) -> dict[str, str]:
    """Image id → group id. BUSI has no patient ids, so the only grouping the data supports is identical content:
    images whose decoded pixels are equal form one group (``benign (433)`` and ``malignant (145)``), named by its
    first id."""
    first: dict[str, str] = {}
    out: dict[str, str] = {}
    for im in images:
        digest = hashlib.sha256(read_image(im.image).tobytes()).hexdigest()
        out[im.id] = first.setdefault(digest, im.id)
    return out


def make_folds(root: Path, n_folds: int = N_FOLDS, seed: int = FOLDS_SEED) -> dict[str, Any]:
    """The split document: ``n_folds`` folds of image ids, stratified by class, grouped by :func:`groups`."""
    from sklearn.model_selection import StratifiedGroupKFold

    images = list_images(root)
    group_of = groups(images)
    ids = [im.id for im in images]
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = [
        sorted((ids[i] for i in held), key=_sort_key)
        for _, held in splitter.split(ids, [im.cls for im in images], [group_of[i] for i in ids])
    ]
    shared = {g: sorted(i for i in ids if group_of[i] == g) for g in set(group_of.values())}
    return {
        "dataset": "BUSI (Al-Dhabyani et al., Data in Brief 2020), Dataset_BUSI_with_GT layout",
        "method": f"{n_folds}-fold StratifiedGroupKFold (scikit-learn) by class, grouped by identical pixels, "
        f"seed {seed}",
        "seed": seed,
        "n_images": len(ids),
        "groups": {g: members for g, members in sorted(shared.items()) if len(members) > 1},
        "folds": folds,
    }


def _sort_key(case_id: str) -> tuple[int, int]:
    return CLASSES.index(case_id.split(" ")[0]), _number(case_id)


def published() -> dict[str, Any]:
    """The published split document (``busi_folds.json``)."""
    try:
        loaded: dict[str, Any] = json.loads(FOLDS_FILE.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MedsightError(f"cannot read the published BUSI folds ({exc})", FOLDS_FILE) from exc
    return loaded


def folds(test_fold: int = 0, document: dict[str, Any] | None = None) -> Folds:
    """CV fold ``test_fold`` as :class:`~medsight.data.folds.Folds`: test = that fold, inner folds (validation for
    ``--fold 0..3``) = the other four, starting at the next one."""
    from medsight.data.folds import Folds

    doc = document or published()
    outer: list[list[str]] = doc["folds"]
    if not 0 <= test_fold < len(outer):
        raise MedsightError(f"BUSI test fold {test_fold} does not exist (folds 0-{len(outer) - 1})")
    inner = [outer[(test_fold + j) % len(outer)] for j in range(1, len(outer))]
    patients = {i: g for g, members in doc["groups"].items() for i in members}
    return Folds(
        folds=[list(f) for f in inner],
        test=list(outer[test_fold]),
        method=f"BUSI CV fold {test_fold}: {doc['method']}; test = fold {test_fold}, validation from the other four",
        patients={i: patients.get(i, i) for f in outer for i in f},
        source=str(FOLDS_FILE),
    )


def folds_of(root: Path) -> Folds:
    """The folds a BUSI folder stands for: its splits file (a :func:`fold_view`) or else published CV fold 0."""
    from medsight.data.folds import stored_folds

    if (Path(root) / SPLITS_FILE).is_file():
        return stored_folds(Path(root), [im.id for im in list_images(root)])
    return folds(0)


def fold_view(root: Path, test_fold: int, dest: Path, limit: int | None = None) -> Path:
    """A folder that is BUSI with CV fold ``test_fold`` as its test split: links to the class folders (nothing
    copied) and a ``medsight_splits.json``. Every task and ``evaluate`` then read that fold as the test split.
    ``limit`` keeps at most that many images of every fold, evenly spaced through it (smoke runs of the benchmarks
    only: the figures of such a run describe nothing)."""
    from medsight.io.atomic import write_json

    root, dest = Path(root).resolve(), Path(dest)
    if not is_busi_folder(root):
        raise MedsightError("not a BUSI folder", root)
    dest.mkdir(parents=True, exist_ok=True)
    for cls in CLASSES:
        link = dest / cls
        if link.is_symlink() or link.exists():
            if link.resolve() != (root / cls).resolve():
                raise MedsightError(f"{cls}/ exists and is not a link to {root / cls}", dest)
        else:
            link.symlink_to(root / cls, target_is_directory=True)
    chosen = folds(test_fold)
    if limit is not None:
        if limit < 1:
            raise MedsightError(f"a fold view keeps at least one image per fold (got limit {limit})")

        def cut(ids: list[str]) -> list[str]:
            keep = np.unique(np.linspace(0, len(ids) - 1, min(limit, len(ids))).round().astype(int))
            return [ids[k] for k in keep]

        chosen.folds = [cut(f) for f in chosen.folds]
        chosen.test = cut(chosen.test)
        chosen.method += f"; at most {limit} images per fold (smoke run)"
    write_json(dest / SPLITS_FILE, chosen.to_json())
    return dest


# ----------------------------------------------------------------------------------------------- the tasks' views


def segmentation_dataset(root: Path) -> SegmentationDataset:
    """BUSI as a 2D segmentation data set (lesion vs background; normal images have empty masks), read in place."""
    from medsight.data.segmentation import Case, SegmentationDataset

    root = Path(root)
    images = list_images(root)
    return SegmentationDataset(
        root=root,
        name="busi",
        layout="busi",
        spatial_dims=2,
        train=[Case(im.id, (im.image,), im.masks[0], more_labels=im.masks[1:]) for im in images],
        test=[],
        labels={0: "background", 1: "lesion"},
        modality="US",
        channel_names=["grey"],
        official_test=False,
        notes=[
            f"BUSI: masks of an image merged by logical OR; RGB images read as grey; split: {folds_of(root).method}"
        ],
        grey=True,
    )


def classification_data(
    root: Path, spatial_size: Sequence[int] = (128, 128), label_names: Sequence[str] | None = None
) -> ClassificationData:
    """BUSI as benign/malignant/normal classification on the same folds: test = the test fold, validation = the
    first inner fold, training = the other three (grey images, scaled to [0, 1] and resized to ``spatial_size``)."""
    from tqdm import tqdm

    from medsight.data.checksums import md5sum
    from medsight.data.dataset import ClassificationData, SplitData
    from medsight.transforms import prepare

    root = Path(root)
    if label_names is not None and list(label_names) != list(CLASSES):
        raise MedsightError(f"BUSI labels {list(CLASSES)} do not match the model's {list(label_names)}", root)
    images = {im.id: im for im in list_images(root)}
    split = folds_of(root)
    val, test = set(split.folds[0]), set(split.test)
    train = {i for f in split.folds[1:] for i in f}
    order = {
        "train": [i for i in images if i in train],
        "val": [i for i in images if i in val],
        "test": [i for i in images if i in test],
    }
    used = [i for i in images if i in train | val | test]
    pixels = {
        i: prepare(read_image(images[i].image), list(spatial_size), 1) for i in tqdm(used, desc="read busi", unit="img")
    }
    splits = {
        name: SplitData(
            images=np.stack([pixels[i] for i in ids]),
            labels=np.asarray([CLASSES.index(images[i].cls) for i in ids], np.int64),
            patient_ids=[split.patients.get(i, i) for i in ids],
            sources=[str(images[i].image.relative_to(root)) for i in ids],
        )
        for name, ids in order.items()
    }
    return ClassificationData(
        name="busi",
        task_type="multiclass",
        label_names=list(CLASSES),
        spatial_dims=2,
        splits=splits,
        modality="US",
        fingerprint={
            "files": {str(images[i].image.relative_to(root)): md5sum(images[i].image) for i in used},
            "n_images": len(used),
        },
        split_method=split.method,
    )
