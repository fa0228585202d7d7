"""Calibration: which ECE is reported (positive-class, top-label), its bins (equal-mass on small sets) and its CI."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.evaluation.calibration import (
    calibration_report,
    calibration_target,
    default_bins,
    expected_calibration_error,
)


def test_equal_mass_ece_by_hand() -> None:
    # Sorted by p, two equal-mass bins: {.1,.2,.3} (mean .2, observed 1/3) and {.4,.6,.9} (mean .6333, observed 2/3).
    p = np.array([0.9, 0.1, 0.4, 0.2, 0.6, 0.3])
    y = np.array([1, 0, 0, 0, 1, 1])
    ece = expected_calibration_error(y, p, n_bins=2, strategy="equal-mass")
    assert ece == pytest.approx(0.5 * abs(0.2 - 1 / 3) + 0.5 * abs(1.9 / 3 - 2 / 3))
    # Equal-width bins put .4 in the low bin: {.1,.2,.3,.4} (mean .25, observed 1/4) and {.6,.9} (.75, 1).
    width = expected_calibration_error(y, p, n_bins=2, strategy="equal-width")
    assert width == pytest.approx(4 / 6 * 0.0 + 2 / 6 * 0.25)


def test_small_sets_default_to_equal_mass_bins_that_hold_enough_cases() -> None:
    # BreastMNIST's test split (156 images) must not be cut into 15 bins of ~10 cases.
    assert default_bins(156) * 20 <= 156 and default_bins(156) >= 2
    assert default_bins(10_000) == 15
    rng = np.random.default_rng(0)
    p = rng.random(156)
    y = (rng.random(156) < p).astype(int)
    assert expected_calibration_error(y, p) == pytest.approx(
        expected_calibration_error(y, p, n_bins=default_bins(156), strategy="equal-mass")
    )


def test_unknown_strategy_is_an_error() -> None:
    from medsight.errors import MedsightError

    with pytest.raises(MedsightError, match="equal-mass"):
        expected_calibration_error(np.array([0, 1]), np.array([0.2, 0.8]), strategy="uniform")


def test_which_ece_binary_is_the_positive_class_and_multiclass_the_top_label() -> None:
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([0, 1, 1])
    # binary with positive class 0 (BreastMNIST's "malignant"): p(class 0) against "is class 0"
    y, p, kind = calibration_target("binary", labels, probs, positive_index=0)
    assert kind == "positive-class" and p.tolist() == [0.8, 0.3, 0.6] and y.tolist() == [1, 0, 0]
    probs3 = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    y, p, kind = calibration_target("multiclass", np.array([0, 2, 2]), probs3, positive_index=None)
    assert kind == "top-label" and p.tolist() == [0.5, 0.6, 0.6] and y.tolist() == [1, 0, 1]


def test_report_states_kind_bins_and_a_bootstrap_ci() -> None:
    rng = np.random.default_rng(1)
    n = 156
    true_p = rng.random(n)
    y = (rng.random(n) < true_p).astype(int)
    over = np.clip(0.5 + 3.0 * (true_p - 0.5), 0.01, 0.99)  # over-confident before calibration
    report = calibration_report(y, over, true_p, "positive-class", n_boot=200, strata=y, temperature=1.7)
    assert report["ece_kind"] == "positive-class"
    assert report["bins"] == {"strategy": "equal-mass", "n_bins": default_bins(n)}
    for when in ("before", "after"):
        for key in ("ece", "brier"):
            m = report[when][key]
            lo, hi = m["ci95"]
            assert lo <= m["value"] <= hi and hi > lo, (when, key)
    # The over-confident scores are worse calibrated than the true probabilities, beyond the CI of the latter.
    assert report["before"]["ece"]["value"] > report["after"]["ece"]["ci95"][1]
