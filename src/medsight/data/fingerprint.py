"""Content fingerprints of cases, and the leakage check they make possible.

A model must never be scored on a case it was trained or validated on. Names and folders cannot tell: a training
image copied under a new name, re-saved from PNG to NPY, or found again in another site's folder is still the
same case. So training records a short hash of every training and validation case's *pixels* in ``bundle.json``
(``data.case_hashes``), and evaluation hashes every case it is about to score and compares.

The hash is taken over the decoded pixel array as float32 (C order) together with its shape: every reader in
medsight decodes to float32, and integer pixel values up to 2**24 are exact in float32, so the same pixels give
the same hash whatever the file format or dtype they were stored in. Each task hashes the array it already holds
at the same point of its pipeline in training and in evaluation (the model input for classification, detection
and outcome; the image as read for segmentation). A resampled, re-scaled or lossy re-encoded copy is a different
array and is not recognised. 16 hex digits (64 bits) keep the list compact; a chance collision between a test
set and a training set of n and m cases has probability about n*m/2**64.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medsight.errors import MedsightError

log = logging.getLogger("medsight")

HASH_HEX = 16
METHOD = f"sha256 of the shape and the float32 C-order pixel bytes, first {HASH_HEX} hex digits"
#: How many seen cases a report lists by index and hash (the count is always complete).
SHOWN = 10


def case_hash(pixels: np.ndarray) -> str:
    """The content hash of one case's pixels (any dtype; compared as float32 with its shape)."""
    arr = np.ascontiguousarray(pixels, dtype=np.float32)
    h = hashlib.sha256(f"{tuple(arr.shape)}|float32|".encode())
    h.update(arr.tobytes())
    return h.hexdigest()[:HASH_HEX]


def case_hashes(images: Iterable[np.ndarray]) -> list[str]:
    """:func:`case_hash` of every array in ``images`` (e.g. the rows of an ``(N, C, *spatial)`` batch)."""
    return [case_hash(x) for x in images]


def training_record(train: Sequence[str], val: Sequence[str]) -> dict[str, Any]:
    """What ``bundle.json`` keeps as ``data.case_hashes``: the hashes of every case training read."""
    return {"method": METHOD, "train": list(train), "val": list(val)}


def check_leakage(
    bundle_data: Mapping[str, Any],
    hashes: Sequence[str],
    split: str,
    where: str | Path | None = None,
    *,
    published: bool = False,
) -> dict[str, Any]:
    """Compare the hashes of the cases about to be scored with the bundle's training and validation cases.

    - ``split == "test"``: any overlap is refused (:class:`MedsightError` naming the count, case indices within
      the split and hashes; never a name or identifier), unless ``published`` says the split is a checksummed
      public release whose own test split repeats a training image: then it is scored as published and flagged.
    - ``"val"`` is compared with the training cases only; any other split (external data) with both. Overlap
      there is flagged in the report and the log, not refused.
    - A bundle without recorded hashes (trained before they were recorded) cannot be checked: a warning says so.

    Returns the report that goes into ``metrics.json`` as ``leakage``.
    """
    recorded = bundle_data.get("case_hashes")
    base: dict[str, Any] = {"split": split, "n_checked": len(hashes), "method": METHOD}
    if not isinstance(recorded, Mapping):
        log.warning(
            "leakage cannot be verified: this bundle records no content hashes of its training cases (trained "
            "before medsight recorded them); retrain it to check that the %s split holds none of them",
            split,
        )
        return base | {"status": "unverified", "n_seen": None}
    if split == "train":
        return base | {"status": "not checked (the training split itself)", "n_seen": None}
    against = ("train",) if split == "val" else ("train", "val")
    known = {h for part in against for h in recorded.get(part, [])}
    seen = [i for i, h in enumerate(hashes) if h in known]
    report = base | {
        "compared_with": "+".join(against),
        "n_training_cases": len(known),
        "n_seen": len(seen),
        "seen_indices": seen[:SHOWN],
        "seen_hashes": [hashes[i] for i in seen[:SHOWN]],
    }
    if not seen:
        return report | {"status": "verified: no evaluated case was seen in training"}
    what = (
        f"{len(seen)} of {len(hashes)} {split} case(s) have the same pixels as a case this bundle was "
        f"{'trained' if split == 'val' else 'trained or validated'} on (case index{'es' if len(seen) > 1 else ''} "
        f"{_listed([str(i) for i in seen])} in the {split} split, hash{'es' if len(seen) > 1 else ''} "
        f"{_listed([hashes[i] for i in seen])})"
    )
    if split == "test" and not published:
        raise MedsightError(
            f"refusing to score the test split: {what}; evaluate on cases the model has not seen", where
        )
    if split == "test":
        note = "the published, checksum-verified split repeats these training images; scored as published"
    else:
        note = "scored, but these cases measure memory, not generalisation"
    log.warning("leakage: %s; %s", what, note)
    return report | {"status": f"flagged: {note}"}


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")
