"""Per-label split conformal prediction for multi-label models (issue 9 §4): each label's set holds the true answer
for at least 1 - alpha of new cases, whatever the model's calibration; a case is deferred when any label is
uncertain, and the stored rule reads back identical."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.errors import MedsightError
from medsight.evaluation.conformal import MultilabelConformal, certain, label_coverage, present
from medsight.evaluation.selective import assess_multilabel

N_LABELS = 3


def _draw(rng: np.random.Generator, n: int, sharpen: float) -> tuple[np.ndarray, np.ndarray]:
    """True label probabilities q ~ Beta, labels ~ Bernoulli(q); the model reports q**sharpen per label (sharpen 1:
    calibrated; 3: far too sure the label is absent), so coverage must come from the conformal step, not the model."""
    q = rng.beta([0.6, 1.0, 2.0], [0.6, 2.0, 1.0], size=(n, N_LABELS))
    y = (rng.random((n, N_LABELS)) < q).astype(int)
    return q**sharpen, y


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
@pytest.mark.parametrize("sharpen", [1.0, 3.0])
def test_each_label_is_covered_at_the_promised_level(alpha: float, sharpen: float) -> None:
    rng = np.random.default_rng(int(alpha * 100 + sharpen))
    n_cal, n_test, repeats = 300, 2000, 200
    coverages = []
    for _ in range(repeats):  # split conformal promises coverage on average over calibration draws
        p_cal, y_cal = _draw(rng, n_cal, sharpen)
        p_test, y_test = _draw(rng, n_test, sharpen)
        rule = MultilabelConformal(alpha).fit(p_cal, y_cal)
        coverages.append(label_coverage(rule.predict_sets(p_test), y_test))
    mean = np.mean(coverages, axis=0)
    # E[coverage] lies in [1 - alpha, 1 - alpha + 1/(n + 1)]. One draw's coverage varies with sd about
    # sqrt(alpha (1 - alpha) / (n + 2)) (a Beta law) plus the test sample's; allow 4 standard errors of the mean.
    sd = np.sqrt(alpha * (1 - alpha) / (n_cal + 2) + alpha * (1 - alpha) / n_test)
    tol = 4 * sd / np.sqrt(repeats)
    assert np.all(mean >= 1 - alpha - tol), mean
    assert np.all(mean <= 1 - alpha + 1 / (n_cal + 1) + tol), mean


def test_a_smaller_alpha_gives_larger_sets_and_more_deferrals() -> None:
    rng = np.random.default_rng(0)
    p_cal, y_cal = _draw(rng, 500, 1.0)
    p_test, _ = _draw(rng, 2000, 1.0)
    loose, strict = MultilabelConformal(0.2).fit(p_cal, y_cal), MultilabelConformal(0.05).fit(p_cal, y_cal)
    names = ["effusion", "nodule", "edema"]
    a_loose, a_strict = assess_multilabel(loose, p_test, names), assess_multilabel(strict, p_test, names)
    assert np.all(a_loose.sets.sum(-1) <= a_strict.sets.sum(-1))
    assert a_loose.defer.mean() < a_strict.defer.mean()


def test_deferral_and_prediction_follow_the_label_sets() -> None:
    rng = np.random.default_rng(1)
    p_cal, y_cal = _draw(rng, 400, 1.0)
    rule = MultilabelConformal(0.1).fit(p_cal, y_cal)
    names = ["effusion", "nodule", "edema"]
    probs = np.array([[0.999, 0.001, 0.999], [0.5, 0.001, 0.999], p_cal[0]])
    a = assess_multilabel(rule, probs, names)
    # the extreme case: every label certain, present where p is near 1; kept
    assert a.present[0].tolist() == [True, False, True] and not a.defer[0]
    # p = 0.5 on a label leaves both answers plausible at alpha 0.1 here: deferred, naming that label only
    assert a.sets[1, 0].all() and a.defer[1]
    assert a.reasons[1] == ["effusion: both absent and present plausible"]
    assert a.present[1].tolist() == [False, False, True]  # the certain labels are still reported
    sets = rule.predict_sets(probs)
    assert np.array_equal(a.defer, ~certain(sets).all(axis=1)) and np.array_equal(a.present, present(sets))


def test_patients_are_one_calibration_unit_and_the_rule_round_trips() -> None:
    rng = np.random.default_rng(2)
    p_cal, y_cal = _draw(rng, 400, 1.0)
    groups = np.repeat(np.arange(200), 2)  # two images per patient
    rule = MultilabelConformal(0.1).fit(p_cal, y_cal, groups=groups)
    stored = rule.to_json()
    assert stored["n_calibration"] == 200 and stored["calibration_unit"].startswith("patient")
    assert stored["alpha"] == 0.1 and stored["coverage_is"] == "per label" and len(stored["quantiles"]) == N_LABELS
    back = MultilabelConformal.from_json(stored)
    p_test, y_test = _draw(rng, 3000, 1.0)
    assert np.array_equal(back.predict_sets(p_test), rule.predict_sets(p_test))
    ungrouped = MultilabelConformal(0.1).fit(p_cal, y_cal)
    assert np.all(np.asarray(stored["quantiles"]) >= np.asarray(ungrouped.to_json()["quantiles"]))  # conservative
    assert np.all(label_coverage(rule.predict_sets(p_test), y_test) >= 0.9 - 0.03)


def test_bad_input_is_refused_by_name() -> None:
    with pytest.raises(MedsightError, match="between 0 and 1"):
        MultilabelConformal(1.0)
    with pytest.raises(MedsightError, match=r"\(n, L\) labels"):
        MultilabelConformal(0.1).fit(np.full((4, 2), 0.5), np.zeros((4, 3), int))
    with pytest.raises(MedsightError, match="0 \\(absent\\) or 1"):
        MultilabelConformal(0.1).fit(np.full((4, 2), 0.5), np.full((4, 2), 2))
    rule = MultilabelConformal(0.1).fit(np.full((4, 2), 0.5), np.zeros((4, 2), int))
    with pytest.raises(MedsightError, match="expected \\(n, 2\\)"):
        rule.predict_sets(np.full((3, 5), 0.5))
    with pytest.raises(MedsightError, match="incomplete"):
        MultilabelConformal.from_json({"alpha": 0.1})
