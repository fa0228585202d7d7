"""Every case counts: empty references and empty predictions get defined scores (Dice 1 for a true negative, 0 for a
false positive or a miss; HD95 the image diagonal as the penalty for a miss), each case situation is counted, and
the pixel metrics report an absent class as undefined with a reason instead of NaN."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medsight.tasks.segmentation.metrics import (
    PixelCounts,
    case_metrics,
    count_situations,
    dice_per_case,
    image_diagonal,
    summarise,
)


def _square(shape: tuple[int, ...], box: tuple[slice, ...]) -> np.ndarray:
    m = np.zeros(shape, np.int64)
    m[box] = 1
    return m


def test_empty_reference_and_empty_prediction_is_a_true_negative_scored_one() -> None:
    empty = np.zeros((10, 12), np.int64)
    m = case_metrics(empty, empty, 2, (1.0, 1.0), 1.0)
    assert m["dice"][0] == 1.0 and m["hd95"][0] == 0.0 and m["nsd"][0] == 1.0
    assert m["situation"][0] == "true_negative"


def test_prediction_on_an_empty_reference_is_a_false_positive_scored_zero() -> None:
    empty = np.zeros((10, 12), np.int64)
    pred = _square((10, 12), (slice(2, 5), slice(2, 5)))
    m = case_metrics(pred, empty, 2, (2.0, 0.5), 1.0)
    assert m["dice"][0] == 0.0 and m["nsd"][0] == 0.0
    assert m["hd95"][0] == pytest.approx(math.hypot(10 * 2.0, 12 * 0.5))  # the penalty: the image diagonal in mm
    assert m["situation"][0] == "false_positive"


def test_missed_class_scores_dice_zero_and_the_hd95_penalty() -> None:
    ref = _square((10, 12), (slice(2, 5), slice(2, 5)))
    empty = np.zeros_like(ref)
    m = case_metrics(empty, ref, 2, (2.0, 0.5), 1.0)
    diagonal = math.hypot(10 * 2.0, 12 * 0.5)
    assert image_diagonal((10, 12), (2.0, 0.5)) == pytest.approx(diagonal)
    assert m["dice"][0] == 0.0 and m["nsd"][0] == 0.0 and m["hd95"][0] == pytest.approx(diagonal)
    assert m["situation"][0] == "missed"
    three = image_diagonal((4, 5, 6), (1.0, 2.0, 3.0))
    assert three == pytest.approx(math.sqrt(4**2 + 10**2 + 18**2))


def test_averages_include_every_case_and_situations_are_counted() -> None:
    shape = (16, 16)
    ref = _square(shape, (slice(4, 10), slice(5, 12)))
    empty = np.zeros(shape, np.int64)
    cases = [
        case_metrics(ref, ref, 2, (1.0, 1.0), 1.0),  # perfect
        case_metrics(empty, ref, 2, (1.0, 1.0), 1.0),  # missed
        case_metrics(ref, empty, 2, (1.0, 1.0), 1.0),  # false positive
        case_metrics(empty, empty, 2, (1.0, 1.0), 1.0),  # true negative
    ]
    overall, per_class = summarise(cases, ["lesion"], n_boot=20)
    assert overall["dice"]["value"] == pytest.approx((1 + 0 + 0 + 1) / 4)
    diagonal = image_diagonal(shape, (1.0, 1.0))
    assert per_class["lesion"]["hd95"]["value"] == pytest.approx((0 + diagonal + diagonal + 0) / 4)
    assert per_class["lesion"]["nsd"]["value"] == pytest.approx(0.5)
    for entry in (*overall.values(), *(v for c in per_class.values() for v in c.values())):
        assert entry["value"] is not None and all(x is not None for x in entry["ci95"])
    counts = count_situations(cases, ["lesion"])
    assert counts == {"lesion": {"both_present": 1, "true_negative": 1, "false_positive": 1, "missed": 1}}


def test_multiclass_case_with_one_class_absent_from_both_counts_it_as_a_true_negative() -> None:
    ref = np.zeros((6, 6, 6), np.int64)
    pred = np.zeros_like(ref)
    ref[1, 1, 1] = 2
    pred[1, 1, 4] = 2
    m = case_metrics(pred, ref, 3, (1.0, 1.0, 2.0), 1.0)
    assert m["dice"][0] == 1.0 and m["hd95"][0] == 0.0 and list(m["situation"]) == ["true_negative", "both_present"]
    assert m["hd95"][1] == pytest.approx(6.0)
    assert not np.isnan(np.stack([m["dice"], m["hd95"], m["nsd"]])).any()


def test_dice_per_case_counts_a_false_positive_on_an_empty_reference() -> None:
    """The post-processing decision and the validation Dice use this; a speck on an empty case must cost."""
    empty = np.zeros((8, 8), np.int64)
    speck = empty.copy()
    speck[3, 3] = 1
    d = dice_per_case([speck, empty], [empty, empty], 2)
    assert d.tolist() == [[0.0], [1.0]]


def test_pixel_metrics_of_an_absent_class_are_undefined_with_a_reason_not_nan() -> None:
    counts = PixelCounts()
    rng = np.random.default_rng(0)
    for _ in range(3):
        counts.add(rng.random((20, 20)) * 0.4, np.zeros((20, 20), int), None)  # no vessel pixel anywhere
    out = counts.summary(n_boot=20)
    for key in ("auc", "sensitivity", "f1"):
        assert out[key]["value"] is None and out[key]["ci95"] == [None, None]
        assert "no reference foreground" in out[key]["undefined"]
    assert out["specificity"]["value"] == 1.0 and "undefined" not in out["specificity"]
    assert out["ppv"]["value"] is None and "no predicted foreground" in out["ppv"]["undefined"]


def test_pixel_metrics_report_resamples_where_a_metric_was_undefined() -> None:
    counts = PixelCounts()
    truth = np.zeros((10, 10), int)
    truth[2:5, 2:5] = 1
    counts.add(truth * 0.9, truth, None)  # the only image with foreground
    for _ in range(4):
        counts.add(np.zeros((10, 10)), np.zeros((10, 10), int), None)
    out = counts.summary(n_boot=50)
    assert out["sensitivity"]["value"] == 1.0
    assert 0 < out["sensitivity"]["undefined_resamples"] < 50  # resamples without the image hold no positive
