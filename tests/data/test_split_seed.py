"""The split seed: fixed by default, changed only deliberately, and read back from a bundle (older bundles split
with their training seed, so evaluation rebuilds their split with that)."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.data.splits import SPLIT_SEED, SPLIT_SEED_ENV, patient_split, recorded_split_seed, split_seed
from medsight.errors import MedsightError


def test_split_seed_is_fixed_unless_set_deliberately(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SPLIT_SEED_ENV, raising=False)
    assert split_seed() == SPLIT_SEED
    monkeypatch.setenv(SPLIT_SEED_ENV, "7")
    assert split_seed() == 7
    monkeypatch.setenv(SPLIT_SEED_ENV, "seven")
    with pytest.raises(MedsightError, match=SPLIT_SEED_ENV):
        split_seed()


def test_patient_split_defaults_to_the_split_seed() -> None:
    patients = [f"p{i // 2}" for i in range(80)]
    labels = [i % 2 for i in range(80)]
    default, fixed = patient_split(labels, patients), patient_split(labels, patients, seed=SPLIT_SEED)
    assert all(np.array_equal(default[k], fixed[k]) for k in ("train", "val", "test"))


def test_bundles_give_back_the_split_seed_they_were_trained_with() -> None:
    assert recorded_split_seed({"data": {"split_seed": 0}, "training": {"seed": 3}}) == 0
    assert recorded_split_seed({"data": {}, "training": {"seed": 3}}) == 3  # before the split seed was recorded
