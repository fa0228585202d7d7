"""Patient-level stratified splits."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.data.splits import assert_disjoint_patients, patient_split


def test_no_patient_in_two_splits_and_classes_balanced() -> None:
    rng = np.random.default_rng(1)
    patients = [f"p{i // 3}" for i in range(600)]  # three images per patient
    labels = [int(rng.random() < 0.3) for _ in range(200) for _ in range(3)]
    idx = patient_split(labels, patients, seed=0)
    assert sorted(np.concatenate(list(idx.values())).tolist()) == list(range(600))
    assert_disjoint_patients({k: [patients[i] for i in v] for k, v in idx.items()})
    sizes = {k: len(v) / 600 for k, v in idx.items()}
    assert sizes["test"] == pytest.approx(0.2, abs=0.04) and sizes["val"] == pytest.approx(0.1, abs=0.04)
    overall = np.mean(labels)
    for v in idx.values():
        assert np.mean([labels[i] for i in v]) == pytest.approx(overall, abs=0.08)


def test_split_is_repeatable_by_seed() -> None:
    patients = [f"p{i // 2}" for i in range(100)]
    labels = [i % 2 for i in range(100)]
    a, b = patient_split(labels, patients, seed=3), patient_split(labels, patients, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_overlap_is_detected() -> None:
    with pytest.raises(ValueError, match="both"):
        assert_disjoint_patients({"train": ["a", "b"], "test": ["b"]})


@pytest.mark.parametrize("patients", [["P1"] * 16, ["P1", "P2"] * 8, ["P1", "P2"]])
def test_fewer_than_three_patients_cannot_split_and_say_so(patients: list[str]) -> None:
    """One or two patients once ended in scikit-learn's "Cannot have number of splits" traceback."""
    from medsight.errors import MedsightError

    with pytest.raises(MedsightError, match="needs at least 3 patients; these data hold"):
        patient_split(["a", "b"] * (len(patients) // 2), patients)
