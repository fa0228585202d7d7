"""Split conformal prediction: the quantile rule by hand, and coverage >= 1 - alpha on exchangeable data."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.errors import MedsightError
from medsight.evaluation.conformal import SplitConformal, conformal_quantile, coverage, scores_of, set_sizes


def test_quantile_uses_the_finite_sample_rank() -> None:
    scores = np.arange(1, 11) / 10  # 0.1 ... 1.0, n = 10
    # rank ceil(11 * 0.8) = 9 -> the 9th smallest score
    assert conformal_quantile(scores, 0.2) == pytest.approx(0.9)
    # rank ceil(11 * 0.7) = 8
    assert conformal_quantile(scores[::-1], 0.3) == pytest.approx(0.8)
    # rank ceil(11 * 0.95) = 11 > n: the whole label set
    assert conformal_quantile(scores, 0.05) == 1.0


def test_lac_and_aps_scores_by_hand() -> None:
    p = np.array([[0.6, 0.3, 0.1]])
    assert scores_of(p, "lac") == pytest.approx(np.array([[0.4, 0.7, 0.9]]))
    # APS: mass of the labels at least as probable as each label
    assert scores_of(p, "aps") == pytest.approx(np.array([[0.6, 0.9, 1.0]]))


def test_sets_follow_the_stored_quantile_and_round_trip() -> None:
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    cp = SplitConformal(alpha=0.1).fit(probs, np.array([0, 1, 1]))
    # LAC scores of the true labels: 0.1, 0.6, 0.2; rank ceil(4 * 0.9) = 4 > 3 -> whole set
    assert cp.quantile_ == 1.0 and cp.to_json()["whole_label_set"] is True
    cp.quantile_ = 0.5  # sets are {k : p_k >= 0.5}
    sets = cp.predict_sets(np.array([[0.9, 0.1], [0.5, 0.5], [0.45, 0.45]]))
    assert sets.tolist() == [[True, False], [True, True], [False, False]]
    assert set_sizes(sets).tolist() == [1, 2, 0]
    again = SplitConformal.from_json(cp.to_json())
    assert again.quantile_ == 0.5 and again.alpha == 0.1 and again.score == "lac"


def test_bad_alpha_and_score_are_clear_errors() -> None:
    with pytest.raises(MedsightError, match="alpha"):
        SplitConformal(alpha=1.5)
    with pytest.raises(MedsightError, match="score"):
        SplitConformal(score="raps")  # type: ignore[arg-type]
    with pytest.raises(MedsightError, match="incomplete"):
        SplitConformal.from_json({"alpha": 0.1})


def _miscalibrated_cases(rng: np.random.Generator, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """An over-confident model: labels drawn from the true probabilities, the model reports them sharpened."""
    logits = rng.normal(0, 1.5, (n, k))
    true_p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in true_p])
    sharp = np.exp(3 * logits)
    return sharp / sharp.sum(1, keepdims=True), y


@pytest.mark.parametrize("score", ["lac", "aps"])
def test_coverage_holds_on_exchangeable_data_whatever_the_calibration(score: str) -> None:
    """Over 200 calibration/test draws the mean coverage lies in [1 - alpha, 1 - alpha + 1/(n+1)] (the split
    conformal bounds for continuous scores), within a margin of 4 standard errors."""
    rng = np.random.default_rng(1234)
    alpha, n_cal, n_test, trials = 0.1, 150, 400, 200
    covered = []
    for _ in range(trials):
        p, y = _miscalibrated_cases(rng, n_cal + n_test, 4)
        cp = SplitConformal(alpha, score).fit(p[:n_cal], y[:n_cal])  # type: ignore[arg-type]
        covered.append(coverage(cp.predict_sets(p[n_cal:]), y[n_cal:]))
    mean = float(np.mean(covered))
    se = float(np.std(covered, ddof=1) / np.sqrt(trials))
    # the model is over-confident: its own top-label probability would cover far less than 90%
    p, y = _miscalibrated_cases(rng, 5000, 4)
    assert np.mean(p.argmax(1) == y) < 0.8
    assert mean >= 1 - alpha - 4 * se
    assert mean <= 1 - alpha + 1 / (n_cal + 1) + 4 * se


def test_grouped_calibration_covers_every_image_of_a_patient() -> None:
    """With patient groups the guarantee is on patients: all of a new patient's images covered >= 1 - alpha."""
    rng = np.random.default_rng(7)
    alpha, trials = 0.2, 150
    all_covered, image_covered = [], []
    for _ in range(trials):
        n_patients = 160
        per = rng.integers(1, 5, n_patients)
        groups = np.repeat(np.arange(n_patients), per)
        p, y = _miscalibrated_cases(rng, len(groups), 3)
        cal = groups < 60
        cp = SplitConformal(alpha).fit(p[cal], y[cal], groups[cal])
        assert cp.n_calibration_ == 60
        sets = cp.predict_sets(p[~cal])
        hit = sets[np.arange((~cal).sum()), y[~cal]]
        test_groups = groups[~cal]
        all_covered.append(np.mean([hit[test_groups == g].all() for g in np.unique(test_groups)]))
        image_covered.append(hit.mean())
    se = np.std(all_covered, ddof=1) / np.sqrt(trials)
    assert np.mean(all_covered) >= 1 - alpha - 4 * se
    assert np.mean(image_covered) >= np.mean(all_covered)
