"""Patient-level stratified splits: no patient's images ever land in two splits.

Which cases are tested is decided by a fixed split seed, never by the training seed: ``--seed`` changes the
initialisation and the order of batches only, so runs with different seeds are scored on the same test cases and
their spread measures the training, not the split. Segmentation's stored folds follow the same rule
(:data:`medsight.data.folds.FOLDS_SEED`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medsight.errors import MedsightError

#: The seed of every derived train/val/test split, whatever the training seed.
SPLIT_SEED = 0
#: Set deliberately (e.g. to study how much a figure depends on the split) to split with another seed.
SPLIT_SEED_ENV = "MEDSIGHT_SPLIT_SEED"


#: Largest split seed: scikit-learn's ``random_state`` takes 0 .. 2**32 - 1 (and the val fold uses seed + 1).
MAX_SPLIT_SEED = 2**32 - 2


def split_seed(given: int | None = None) -> int:
    """The split seed for a new training run: ``given`` (``medsight train --split-seed``) when set, else
    ``$MEDSIGHT_SPLIT_SEED`` when set, else :data:`SPLIT_SEED`."""
    if given is not None:
        return check_split_seed(given, "--split-seed")
    value = os.environ.get(SPLIT_SEED_ENV, "").strip()
    if not value:
        return SPLIT_SEED
    try:
        seed = int(value)
    except ValueError:
        raise MedsightError(f"${SPLIT_SEED_ENV} must be an integer (got {value!r})") from None
    return check_split_seed(seed, f"${SPLIT_SEED_ENV}")


def check_split_seed(seed: int, where: str = "the split seed") -> int:
    """``seed`` as an int the splitters accept, or a :class:`MedsightError` naming ``where`` (flag or variable)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SPLIT_SEED:
        raise MedsightError(f"{where} must be an integer from 0 to {MAX_SPLIT_SEED} (got {seed!r})")
    return seed


def recorded_split_seed(meta: Mapping[str, Any]) -> int:
    """The split seed a bundle was trained with, so evaluation rebuilds the same split.

    Bundles record it as ``data.split_seed``; older ones split with their training seed, so that is their split seed.
    """
    recorded = meta.get("data", {}).get("split_seed")
    return int(recorded) if recorded is not None else int(meta["training"]["seed"])


def patient_split(
    strata: Sequence[object],
    patient_ids: Sequence[str],
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = SPLIT_SEED,
) -> dict[str, np.ndarray]:
    """Assign each sample to train/val/test by patient, keeping the class balance (StratifiedGroupKFold).

    ``seed`` is the split seed (:func:`split_seed`), never the training seed. Returns indices per split. Test takes
    ``round(1 / fractions[2])``-fold's share, val likewise from the rest.
    """
    strata_arr = np.asarray([str(s) for s in strata])
    groups = np.asarray(patient_ids)
    n_patients = len(np.unique(groups))
    if n_patients < 3:  # one patient at least in each of train, val and test
        raise MedsightError(
            f"a patient-level train/val/test split needs at least 3 patients; these data hold {n_patients} "
            f"({len(groups)} images). Add patients, or give each row its split in a 'split' column"
        )
    idx = np.arange(len(strata_arr))
    test_idx = _one_fold(idx, strata_arr, groups, fractions[2], seed)
    rest = np.setdiff1d(idx, test_idx)
    val_share = fractions[1] / (fractions[0] + fractions[1])
    val_rel = _one_fold(np.arange(len(rest)), strata_arr[rest], groups[rest], val_share, seed + 1)
    val_idx = rest[val_rel]
    train_idx = np.setdiff1d(rest, val_idx)
    return {"train": train_idx, "val": np.sort(val_idx), "test": np.sort(test_idx)}


def _one_fold(idx: np.ndarray, strata: np.ndarray, groups: np.ndarray, share: float, seed: int) -> np.ndarray:
    n_groups = len(np.unique(groups))
    n_splits = max(2, min(round(1 / share), n_groups))
    min_class = min(np.unique(strata, return_counts=True)[1])
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold  # here: the CLI imports this module

    if min_class < n_splits:  # StratifiedGroupKFold needs each class in each fold; fall back to group-only
        folds = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(idx, strata, groups)
    else:
        folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(idx, strata, groups)
    _, held = next(iter(folds))
    return idx[held]


def assert_disjoint_patients(splits: dict[str, Sequence[str]]) -> None:
    """Raise ValueError if any patient id appears in two splits."""
    seen: dict[str, str] = {}
    for name, ids in splits.items():
        for pid in set(ids):
            if pid in seen and seen[pid] != name:
                raise ValueError(f"a patient appears in both '{seen[pid]}' and '{name}'")
            seen[pid] = name
