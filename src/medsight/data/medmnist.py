"""MedMNIST v2 (+) adapter: every 2D and 3D member at every size, checked against the official MD5s.

Names: ``medmnist:pneumoniamnist`` (28 px), ``medmnist:pneumoniamnist_64``, ``medmnist:organmnist3d_64``...
A path to any ``.npz`` in the MedMNIST layout (``train_images``, ``train_labels``, ...) works too.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from medsight.config import cache_root, data_root
from medsight.data.checksums import md5sum
from medsight.data.dataset import SPLITS, ClassificationData, SplitData, infer_task_type
from medsight.data.download import download
from medsight.errors import MedsightError

CATALOG_FILE = Path(__file__).with_name("medmnist_catalog.json")

#: Imaging modality of each member, used to choose augmentation.
MODALITY = {
    "pneumoniamnist": "xray",
    "chestmnist": "xray",
    "breastmnist": "ultrasound",
    "octmnist": "oct",
    "retinamnist": "fundus",
    "dermamnist": "dermoscopy",
    "pathmnist": "pathology",
    "bloodmnist": "microscopy",
    "tissuemnist": "microscopy",
    "organamnist": "ct",
    "organcmnist": "ct",
    "organsmnist": "ct",
    "organmnist3d": "ct",
    "nodulemnist3d": "ct",
    "adrenalmnist3d": "ct",
    "fracturemnist3d": "ct",
    "vesselmnist3d": "mra",
    "synapsemnist3d": "em",
}

#: The finding (disease) of each binary member, from the MedMNIST label maps (``medmnist_catalog.json``). BreastMNIST's
#: label 0 is "malignant" and 1 "normal, benign": the positive class is label 0, not 1. SynapseMNIST3D's two synapse
#: types have no disease, so it declares none.
POSITIVE = {
    "pneumoniamnist": "pneumonia",
    "breastmnist": "malignant",
    "nodulemnist3d": "malignant",
    "adrenalmnist3d": "hyperplasia",
    "vesselmnist3d": "aneurysm",
}


@lru_cache(maxsize=1)
def catalog() -> dict[str, Any]:
    """The official MedMNIST catalogue (names, tasks, labels, URLs and MD5 per size)."""
    return dict(json.loads(CATALOG_FILE.read_text())["datasets"])


@dataclass(frozen=True)
class MedMNISTName:
    """A parsed ``medmnist:<flag>[_<size>]`` name."""

    flag: str
    size: int

    @property
    def filename(self) -> str:
        return f"{self.flag}.npz" if self.size == 28 else f"{self.flag}_{self.size}.npz"

    @property
    def info(self) -> dict[str, Any]:
        return dict(catalog()[self.flag])

    @property
    def md5(self) -> str:
        return str(self.info["sizes"][str(self.size)]["md5"])

    @property
    def url(self) -> str:
        return str(self.info["sizes"][str(self.size)]["url"])


def parse_name(spec: str) -> MedMNISTName:
    """Parse ``medmnist:pneumoniamnist_64`` into flag and size; unknown names list what exists."""
    body = spec.split(":", 1)[1].strip().lower()
    m = re.fullmatch(r"([a-z0-9]+?)(?:_(\d+))?", body)
    if not m or m.group(1) not in catalog():
        raise MedsightError(f"unknown MedMNIST data set; known: {', '.join(sorted(catalog()))}", spec)
    flag, size = m.group(1), int(m.group(2) or 28)
    if str(size) not in catalog()[flag]["sizes"]:
        sizes = ", ".join(sorted(catalog()[flag]["sizes"], key=int))
        raise MedsightError(f"no size {size} for {flag} (sizes: {sizes})", spec)
    return MedMNISTName(flag, size)


def locate(name: MedMNISTName, allow_download: bool = True) -> Path:
    """Find the official file under the data root or cache, verifying its MD5; download it if absent."""
    candidates = [data_root() / "medmnist" / name.filename, cache_root() / "medmnist" / name.filename]
    for path in candidates:
        if path.is_file():
            got = md5sum(path)
            if got != name.md5:
                raise MedsightError(
                    f"MD5 {got} does not match the official {name.md5}: not the official MedMNIST file", path
                )
            return path
    if not allow_download:
        raise MedsightError(f"not found in {candidates[0].parent} or {candidates[1].parent}", name.filename)
    return download(name.url, candidates[1], name.md5)


def load_npz(path: str | Path, name: MedMNISTName | None = None) -> ClassificationData:
    """Load a MedMNIST-layout ``.npz`` into per-split arrays, with clear errors for damaged files."""
    path = Path(path)
    if not path.is_file():
        raise MedsightError("file not found", path)
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for split in SPLITS:
                for kind in ("images", "labels"):
                    key = f"{split}_{kind}"
                    if key in npz.files:
                        arrays[key] = npz[key]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise MedsightError(f"not a readable .npz file (truncated or corrupt: {exc})", path) from exc
    present = [s for s in SPLITS if f"{s}_images" in arrays]
    if "train" not in present:
        raise MedsightError("no train_images array: not a MedMNIST-layout file", path)
    for split in present:
        if f"{split}_labels" not in arrays:
            raise MedsightError(f"{split}_images has no {split}_labels", path)

    flag = name.flag if name else _guess_flag(path)
    info = catalog().get(flag) if flag else None
    train_labels = arrays["train_labels"]
    task = infer_task_type(train_labels, info["task"] if info else None)
    if info:
        label_names = [str(info["labels"][k]) for k in sorted(info["labels"], key=int)]
    elif task == "multilabel":
        label_names = [f"label_{i}" for i in range(train_labels.shape[1])]
    else:
        n = int(max(arrays[f"{s}_labels"].max() for s in present)) + 1
        label_names = [str(i) for i in range(max(n, 2))]

    dims = (
        info["dims"]
        if info
        else (3 if arrays["train_images"].ndim == 4 and arrays["train_images"].shape[-1] > 4 else 2)
    )
    splits = {}
    for split in present:
        images = _to_channels_first(arrays[f"{split}_images"], dims, path)
        labels = _labels(arrays[f"{split}_labels"], task, len(label_names), path, split)
        if len(labels) != len(images):
            raise MedsightError(f"{split}: {len(images)} images but {len(labels)} labels", path)
        splits[split] = SplitData(images=images, labels=labels)
    return ClassificationData(
        name=f"medmnist:{flag}" + (f"_{name.size}" if name and name.size != 28 else "") if flag else path.stem,
        task_type=task,
        label_names=label_names,
        spatial_dims=int(dims),
        splits=splits,
        modality=MODALITY.get(flag or "", "unknown"),
        fingerprint={"files": {path.name: md5sum(path)}, "n": {s: len(v) for s, v in splits.items()}},
        split_method="official",
        positive=POSITIVE.get(flag or "") if task == "binary" else None,
        ordinal=bool(info and info["task"] == "ordinal-regression" and task == "multiclass"),
    )


def load(spec: str) -> ClassificationData:
    """Load ``medmnist:<name>``: locate (or download) the official file, verify, read."""
    name = parse_name(spec)
    return load_npz(locate(name), name)


def _guess_flag(path: Path) -> str | None:
    stem = re.sub(r"_\d+$", "", path.stem.lower())
    return stem if stem in catalog() else None


def _to_channels_first(images: np.ndarray, dims: int, path: Path) -> np.ndarray:
    """uint8 images → float32 in [0, 1], shaped ``(N, C, *spatial)``."""
    if images.ndim == dims + 1:
        images = images[:, None]
    elif images.ndim == dims + 2 and dims == 2 and images.shape[-1] in (1, 3):
        images = np.moveaxis(images, -1, 1)
    else:
        raise MedsightError(f"images have shape {images.shape}, expected {dims}D images", path)
    out = images.astype(np.float32)
    if images.dtype == np.uint8:
        out /= 255.0
    return out


def _labels(labels: np.ndarray, task: str, n_labels: int, path: Path, split: str) -> np.ndarray:
    if task == "multilabel":
        if labels.ndim != 2 or labels.shape[1] != n_labels:
            raise MedsightError(f"{split}_labels has shape {labels.shape}, expected (N, {n_labels})", path)
        return labels.astype(np.float32)
    flat = labels.reshape(len(labels), -1)
    if flat.shape[1] != 1:
        raise MedsightError(f"{split}_labels has shape {labels.shape}, expected (N, 1)", path)
    values = flat[:, 0].astype(np.int64)
    bad = values[(values < 0) | (values >= n_labels)]
    if bad.size:
        raise MedsightError(f"{split}_labels holds unknown label {int(bad[0])} (known: 0..{n_labels - 1})", path)
    return values
