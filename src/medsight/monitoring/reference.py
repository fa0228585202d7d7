"""The training fingerprint of a bundle, and the samples it is computed from.

Bundles trained since the distribution fingerprint exists carry it in ``bundle.json`` (``data.distribution``).
For an older segmentation bundle it is recomputed, with the same code, from the training cases the bundle lists,
when that data set can still be found (its recorded root, or ``$MEDSIGHT_DATA/<source>``). For an older
classification bundle, from the train split of its data set (``medmnist:<name>``, or ``$MEDSIGHT_DATA/<source>``
holding the manifest or .npz), rebuilt with the bundle's split seed and accepted only when its content hashes are the
ones the bundle recorded; an older outcome bundle has to be retrained."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from medsight import config
from medsight.data.fingerprint_stats import Sample, array_samples, check, distribution_fingerprint
from medsight.errors import MedsightError
from medsight.training.bundle import Bundle

log = logging.getLogger("medsight.monitoring")


def segmentation_samples(ds: Any, ids: Sequence[str]) -> Iterator[Sample]:
    """The cases ``ids`` of a segmentation data set, read one at a time."""
    from medsight.tasks.segmentation.data import load_case

    for cid in ids:
        case = load_case(ds, ds.case(cid))
        yield Sample(case.image, case.spacing, case.label)


def _training_root(bundle: Bundle) -> Path:
    data = bundle.meta["data"]
    candidates = [Path(str(data.get("root", ""))), config.data_root() / str(data["source"])]
    for c in candidates:
        if str(c) and c.is_dir():
            return c
    raise MedsightError(
        "the bundle records no training fingerprint and its training data are not found (looked at "
        + ", ".join(str(c) for c in candidates)
        + ")",
        bundle.path,
    )


def _classification_fingerprint(bundle: Bundle) -> dict[str, Any]:
    """An older classification bundle's fingerprint, from its train split found again (see the module docstring)."""
    from medsight.data.fingerprint import case_hashes
    from medsight.data.splits import recorded_split_seed
    from medsight.tasks.classification.data import load_like

    source = str(bundle.meta["data"]["source"])
    root = config.data_root()
    candidates = [source] if source.lower().startswith("medmnist:") else []
    candidates += [str(root / source), str(root / f"{source}.npz")]
    found = [c for c in candidates if c.lower().startswith("medmnist:") or Path(c).exists()]
    if not found:
        raise MedsightError(
            "the bundle records no training fingerprint and its training data are not found (looked at "
            + ", ".join(candidates)
            + ")",
            bundle.path,
        )
    data = load_like(bundle, found[0], seed=recorded_split_seed(bundle.meta))
    train = data.split("train")
    recorded = bundle.meta["data"].get("case_hashes", {}).get("train")
    if recorded is not None and sorted(case_hashes(train.images)) != sorted(recorded):
        raise MedsightError(
            f"the bundle records no training fingerprint, and the train split of {found[0]} is not the one it was "
            "trained on (content hashes differ): cannot recompute it",
            bundle.path,
        )
    log.info("bundle has no training fingerprint: computing it from its %d training images", len(train))
    return distribution_fingerprint(array_samples(train.images, train.labels), bundle.label_names, data.modality)


def training_fingerprint(bundle: Bundle) -> dict[str, Any]:
    """The bundle's distribution fingerprint; recomputed from its training cases when the bundle predates it."""
    data = bundle.meta["data"]
    if "distribution" in data:
        return check(data["distribution"], f"{bundle.path}/bundle.json: data.distribution")
    if bundle.task == "classification":
        return _classification_fingerprint(bundle)
    if bundle.task != "segmentation" or not data.get("train_ids"):
        raise MedsightError(
            f"the {bundle.task} bundle records no training fingerprint (data.distribution) and it cannot be "
            "recomputed for this task: retrain the bundle to record it",
            bundle.path,
        )
    from medsight.tasks.segmentation.data import open_dataset

    ds = open_dataset(_training_root(bundle))
    ids = list(data["train_ids"])
    log.info("bundle has no training fingerprint: computing it from its %d training cases", len(ids))
    return distribution_fingerprint(segmentation_samples(ds, ids), bundle.label_names, ds.modality)
