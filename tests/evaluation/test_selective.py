"""Selective prediction: the deferral rule (ambiguous sets, disagreement, low confidence), the confidence
threshold chosen on validation, and the risk-coverage bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.evaluation.conformal import SplitConformal
from medsight.evaluation.selective import (
    REASON_AMBIGUOUS,
    REASON_DISAGREES,
    REASON_EMPTY,
    REASON_LOW_CONFIDENCE,
    DeferralRule,
    SelectivePrediction,
    case_metrics,
    fit_deferral,
    risk_coverage,
    risk_coverage_plot,
)


def test_ambiguous_empty_and_disagreeing_sets_are_deferred_with_their_reason() -> None:
    cp = SplitConformal(0.1)
    cp.quantile_, cp.n_calibration_, cp.grouped_, cp.whole_set_ = 0.6, 50, False, False  # sets: p_k >= 0.4
    unc = SelectivePrediction(cp, DeferralRule(confidence_threshold=0.7, target_error=0.1))
    probs = np.array(
        [
            [0.95, 0.05, 0.0],  # clear: kept
            [0.55, 0.45, 0.0],  # two labels plausible: ambiguous (and below 0.7)
            [0.75, 0.25, 0.0],  # set {0}, but the decision is 1 (e.g. a binary threshold below 0.25)
            [0.35, 0.35, 0.30],  # no label reaches 0.4: empty set
            [0.8, 0.2, 0.0],  # set {0}, decided 0, confident enough: kept
        ]
    )
    decided = np.array([0, 0, 1, 0, 0])
    a = unc.assess(probs, decided)
    assert a.reasons[0] == [] and a.reasons[4] == []
    assert a.reasons[1] == [REASON_AMBIGUOUS, REASON_LOW_CONFIDENCE]
    assert a.reasons[2] == [REASON_DISAGREES, REASON_LOW_CONFIDENCE]
    assert a.reasons[3][0] == REASON_EMPTY
    assert a.defer.tolist() == [False, True, True, True, False]
    assert a.confidence == pytest.approx([0.95, 0.55, 0.25, 0.35, 0.8])
    again = SelectivePrediction.from_json(unc.to_json())
    assert again.deferral.confidence_threshold == 0.7 and again.conformal.quantile_ == 0.6


def test_confidence_threshold_is_the_lowest_meeting_the_target_on_validation() -> None:
    sets = np.array([[True, False]] * 6)
    decided = np.zeros(6, int)
    conf = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.55])
    correct = np.array([True, True, True, False, True, False])
    # kept error at each threshold: >=.55: 2/6, >=.6: 1/5, >=.7: 1/4, >=.8: 0/3
    rule = fit_deferral(sets, decided, conf, correct, target_error=0.2)
    assert rule.confidence_threshold == 0.6 and rule.reachable
    assert rule.val_share_kept == pytest.approx(5 / 6) and rule.val_error_kept == pytest.approx(0.2)
    assert fit_deferral(sets, decided, conf, correct, 0.0).confidence_threshold == 0.8
    # a case the set rule already defers does not count among the kept
    sets[3] = [True, True]
    assert fit_deferral(sets, decided, conf, correct, 0.2).confidence_threshold == 0.55


def test_an_unreachable_target_defers_everything_and_says_so() -> None:
    rule = fit_deferral(np.array([[True, False]] * 2), np.zeros(2, int), np.array([0.9, 0.8]), np.zeros(2, bool), 0.1)
    assert not rule.reachable and rule.confidence_threshold > 0.9
    assert rule.reasons(np.array([True, False]), 0, 0.9) == [REASON_LOW_CONFIDENCE]


def test_selective_fit_takes_alpha_as_the_default_target() -> None:
    rng = np.random.default_rng(0)
    p1 = rng.random(200)
    probs = np.stack([1 - p1, p1], 1)
    y = (rng.random(200) < p1).astype(int)
    unc = SelectivePrediction.fit(probs, y, probs.argmax(1), alpha=0.2)
    assert unc.deferral.target_error == 0.2 and unc.conformal.n_calibration_ == 200
    kept = ~unc.assess(probs, probs.argmax(1)).defer
    assert np.mean(probs.argmax(1)[kept] != y[kept]) <= 0.2 + 1e-9


def test_risk_coverage_bookkeeping_by_hand() -> None:
    conf = np.array([0.9, 0.6, 0.8, 0.6, 0.7])
    correct = np.array([True, False, True, True, False])
    rc = risk_coverage(conf, correct)
    # distinct confidences, descending: 0.9, 0.8, 0.7, 0.6 (the two 0.6 cases enter together)
    assert rc.thresholds.tolist() == [0.9, 0.8, 0.7, 0.6]
    assert rc.coverage == pytest.approx([0.2, 0.4, 0.6, 1.0])
    assert rc.risk == pytest.approx([0.0, 0.0, 1 / 3, 2 / 5])
    assert np.all(np.diff(rc.coverage) > 0) and rc.coverage[-1] == 1.0
    assert rc.risk[-1] == pytest.approx(1 - correct.mean())  # nothing deferred: the overall error
    # AURC: mean over ranks of errors so far / rank; the two 0.6 cases (one wrong) have no order between them, so at
    # rank 4 the errors so far are their expectation over both orders, 1 + 1/2 (it was 2, from the input order)
    assert rc.aurc == pytest.approx(np.mean([0, 0, 1 / 3, 1.5 / 4, 2 / 5]))
    swapped = risk_coverage(conf[[0, 3, 2, 1, 4]], correct[[0, 3, 2, 1, 4]])  # the tie given in the other order
    assert swapped.aurc == pytest.approx(rc.aurc)
    assert risk_coverage_plot(rc, (0.6, 1 / 3)).startswith(b"\x89PNG")


def test_case_metrics_split_errors_between_kept_and_deferred() -> None:
    cp = SplitConformal(0.1)
    cp.quantile_, cp.n_calibration_, cp.grouped_, cp.whole_set_ = 0.5, 10, False, False
    unc = SelectivePrediction(cp, DeferralRule(0.0, 0.1))
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.5, 0.5], [0.1, 0.9]])
    y = np.array([0, 1, 1, 1])
    decided = probs.argmax(1)
    fn, counts, rc = case_metrics(unc.assess(probs, decided), y, decided)
    m = fn(np.arange(4))
    assert m["coverage"] == pytest.approx(3 / 4) and m["mean_set_size"] == pytest.approx(5 / 4)
    assert m["share_deferred"] == pytest.approx(1 / 4)
    assert m["error_kept"] == pytest.approx(1 / 3) and m["error_deferred"] == pytest.approx(1.0)
    assert counts["deferred"] == 1 and counts["reasons"] == {REASON_AMBIGUOUS: 1}
    assert counts["set_size_counts"] == {"1": 3, "2": 1} and rc.coverage[-1] == 1.0
