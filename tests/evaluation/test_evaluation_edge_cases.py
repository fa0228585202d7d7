"""The evaluation library on degenerate and messy input: each figure is either right or says why it is missing,
never silently wrong (one class, one case, ties, NaN or out-of-range probabilities, too few resamples, too few
calibration cases, every case deferred, FROC without a usable lesion, empty plots)."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.errors import MedsightError
from medsight.evaluation.calibration import expected_calibration_error, reliability
from medsight.evaluation.conformal import SplitConformal
from medsight.evaluation.froc import match_image
from medsight.evaluation.metrics import binary_metrics, bootstrap, multiclass_metrics, multilabel_metrics
from medsight.evaluation.operating_point import choose_threshold
from medsight.evaluation.plots import confusion_plot
from medsight.evaluation.selective import fit_deferral


def test_macro_auc_is_undefined_when_a_class_or_label_is_absent() -> None:
    """scikit-learn's and MedMNIST's macro AUC average every class; a mean over the classes present is another
    figure, reported before under the same name."""
    probs = np.random.default_rng(0).dirichlet([1, 1, 1], 6)
    assert np.isnan(multiclass_metrics(np.array([0, 0, 1, 1, 0, 1]), probs)["auc"])  # class 2 absent
    assert not np.isnan(multiclass_metrics(np.array([0, 2, 1, 1, 0, 1]), probs)["auc"])
    labels = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])  # label 1 never present
    assert np.isnan(multilabel_metrics(labels, np.random.default_rng(1).random((4, 2)))["auc"])


def test_bootstrap_counts_the_resamples_that_leave_a_metric_undefined() -> None:
    y = np.array([1, 1] + [0] * 20)
    s = np.r_[0.9, 0.8, np.linspace(0, 0.7, 20)]
    out = bootstrap(lambda ix: binary_metrics(y[ix], s[ix], 0.5), len(y), None, n_boot=200)
    # a resample without a positive has no AUC or sensitivity: P = (20/22)^22, about 12%
    assert 0 < out["auc"]["undefined_resamples"] < 60
    assert out["auc"]["ci95"][0] is not None
    assert "undefined_resamples" not in out["accuracy"]


def test_bootstrap_withholds_a_ci_that_few_resamples_define() -> None:
    def fn(ix: np.ndarray) -> dict[str, float]:  # defined only when cases 0 and 1 are both drawn (about 40%)
        return {"m": float(np.mean(ix)) if {0, 1} <= set(ix.tolist()) else float("nan")}

    out = bootstrap(fn, 10, None, n_boot=200)["m"]
    assert out["value"] == pytest.approx(4.5)
    assert out["ci95"] == [None, None] and "of 200 resamples" in str(out["ci_undefined"])
    assert out["undefined_resamples"] > 100


def test_a_stratum_of_one_case_gives_no_ci(caplog: pytest.LogCaptureFixture) -> None:
    """Every stratified resample repeats the one positive: its sensitivity read as a CI of zero width."""
    y = np.array([1] + [0] * 30)
    s = np.linspace(0, 1, 31)
    with caplog.at_level("WARNING"):
        out = bootstrap(lambda ix: binary_metrics(y[ix], s[ix], 0.5), len(y), y, n_boot=100)
    assert out["sensitivity"]["value"] == 0.0 and out["sensitivity"]["ci95"] == [None, None]
    assert out["auc"]["ci95"] == [None, None] and "stratum 1 holds a single case" in caplog.text
    two = np.array([1, 1] + [0] * 30)  # two positives: resampling can vary them
    assert bootstrap(lambda ix: binary_metrics(two[ix], np.r_[s, 0.9][ix], 0.5), 32, two, 50)["auc"]["ci95"][0] >= 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1.5, -0.2])
def test_nan_infinite_or_out_of_range_probabilities_are_refused(bad: float) -> None:
    y = np.array([0, 1, 0, 1])
    p = np.array([0.1, bad, 0.2, 0.9])
    with pytest.raises(MedsightError):
        binary_metrics(y, p, 0.5)
    with pytest.raises(MedsightError):
        expected_calibration_error(y, p)
    with pytest.raises(MedsightError):
        SplitConformal(0.1).fit(np.stack([1 - p, p], 1), y)


def test_ece_and_reliability_keep_ties_in_one_bin() -> None:
    """Equal-mass bins once cut a tie by the order of the cases: the same cases gave an ECE of 0.5 or 0."""
    p = np.full(4, 0.5)
    assert expected_calibration_error(np.array([0, 0, 1, 1]), p, 2) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([0, 1, 0, 1]), p, 2) == pytest.approx(0.0)
    rng = np.random.default_rng(3)
    y, q = rng.integers(0, 2, 60), rng.random(60).round(1)  # many ties
    order = rng.permutation(60)
    assert expected_calibration_error(y, q) == pytest.approx(expected_calibration_error(y[order], q[order]))
    mean_pred, frac = reliability(np.array([0, 0, 1, 1]), p, 2)  # the diagram's bins are the ECE's: one tie, one bin
    assert mean_pred.tolist() == [0.5] and frac.tolist() == [0.5]
    empty = reliability(np.zeros(0), np.zeros(0))
    assert len(empty[0]) == 0 and len(empty[1]) == 0


def test_operating_point_is_consistent_and_refuses_an_impossible_target() -> None:
    y = np.array([1, 1, 0])
    op = choose_threshold(y, np.array([1.0, 1.0, 1.0]))  # saturated probabilities: no discrimination
    called = np.array([1.0, 1.0, 1.0]) >= op["threshold"]
    assert op["val_sensitivity"] == pytest.approx(np.mean(called[y == 1]))
    assert op["val_specificity"] == pytest.approx(np.mean(~called[y == 0]))
    with pytest.raises(MedsightError, match="target sensitivity"):
        choose_threshold(np.array([0, 1, 0, 1]), np.array([0.1, 0.6, 0.3, 0.9]), 1.5)
    with pytest.raises(MedsightError):
        choose_threshold(np.array([0, 1, 0, 1]), np.array([0.1, np.nan, 0.3, 0.9]))


def test_a_too_small_calibration_set_gives_every_label_even_in_float32() -> None:
    """APS scores of float32 probabilities summing to 1 + 6e-8 once left a label out of the 'whole label set'."""
    rng = np.random.default_rng(0)
    val = rng.dirichlet([1] * 5, 5).astype(np.float32)
    rule = SplitConformal(0.1, "aps").fit(val, np.zeros(5, int))
    assert rule.whole_set_
    assert rule.predict_sets(rng.dirichlet([1] * 5, 200).astype(np.float32)).all()
    with pytest.raises(MedsightError, match="class indices"):
        SplitConformal(0.1).fit(np.full((20, 2), 0.5), np.full(20, 2))


def test_an_unreachable_rule_defers_a_case_more_confident_than_validation() -> None:
    rule = fit_deferral(np.array([[True, False]] * 2), np.zeros(2, int), np.array([0.9, 0.8]), np.zeros(2, bool), 0.1)
    assert not rule.reachable
    # once kept: the threshold lies just above the validation cases' confidences
    assert rule.reasons(np.array([True, False]), 0, 0.99) == [
        "no confidence threshold met the target error on validation"
    ]


def _box(cx: float, cy: float, r: float) -> list[float]:
    return [cx - r, cy - r, cx + r, cy + r]


@pytest.mark.parametrize("score", [np.nan, -1.0, np.inf])
def test_froc_refuses_scores_it_cannot_rank_against_a_miss(score: float) -> None:
    """A missed lesion scores 0: a negative or NaN hit once counted as missed (or a miss as found) silently."""
    with pytest.raises(MedsightError, match="scores"):
        match_image([_box(5, 5, 2), _box(40, 40, 2)], [score, 0.5], [_box(5, 5, 3)])


def test_froc_refuses_a_lesion_without_radius() -> None:
    with pytest.raises(MedsightError, match="no radius"):
        match_image([_box(5, 5, 2)], [0.9], [[5, 5, 5, 5]])
    assert match_image([_box(5, 5, 2)], [0.9], [[5, 5, 5, 5]], criterion="centre").lesion_best.tolist() == [0.9]


def test_confusion_plot_of_an_empty_split() -> None:
    assert confusion_plot(np.zeros(0, int), np.zeros(0, int), ["a", "b"])[:4] == b"\x89PNG"
