"""Resolve what the user typed (``medmnist:breastmnist``, ``x.npz``, ``manifest.csv``, a folder) to a data set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medsight.data.dataset import ClassificationData
from medsight.errors import MedsightError


def load_classification(spec: str, like: dict[str, Any] | None = None, seed: int = 0) -> ClassificationData:
    """Load a classification source. ``like`` (a bundle's input spec) makes evaluation data match training."""
    from medsight.data import manifest, medmnist

    if spec.lower().startswith("medmnist:"):
        data = medmnist.load(spec)
    else:
        path = Path(spec)
        if not path.exists():
            raise MedsightError("no such file or folder", spec)
        from medsight.data import busi

        if path.suffix.lower() == ".npz":
            data = medmnist.load_npz(path)
        elif busi.is_busi_folder(path):  # before the manifest: BUSI's own manifest.csv lists files, not labels
            data = busi.classification_data(
                path,
                spatial_size=like["spatial_size"] if like else (128, 128),
                label_names=like["label_names"] if like else None,
            )
        elif path.suffix.lower() == ".csv" or (path / "manifest.csv").is_file():
            data = manifest.load_manifest(
                path,
                spatial_size=like["spatial_size"] if like else None,
                seed=seed,
                label_names=like["label_names"] if like else None,
                n_channels=like["n_channels"] if like else None,
                task_type=like["task_type"] if like else None,
            )
        else:
            raise MedsightError(
                "not a classification source (expected medmnist:<name>, a MedMNIST .npz, or a manifest CSV)", spec
            )
    if like:
        _check_compatible(data, like, spec)
    return data


def _check_compatible(data: ClassificationData, like: dict[str, Any], spec: str) -> None:
    if data.label_names != like["label_names"]:
        raise MedsightError(f"labels {data.label_names} do not match the model's {like['label_names']}", spec)
    if data.spatial_size != list(like["spatial_size"]) or data.n_channels != like["n_channels"]:
        raise MedsightError(
            f"images are {data.n_channels}x{data.spatial_size}, the model expects "
            f"{like['n_channels']}x{like['spatial_size']}",
            spec,
        )
