"""Metrics against hand-computed values; bootstrap CIs; calibration and temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.evaluation.calibration import TemperatureScaler, expected_calibration_error
from medsight.evaluation.metrics import binary_metrics, bootstrap, multiclass_metrics, multilabel_metrics
from medsight.evaluation.operating_point import choose_threshold


def test_binary_metrics_by_hand() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    s = np.array([0.9, 0.8, 0.3, 0.2, 0.6, 0.1, 0.4, 0.7])
    m = binary_metrics(y, s, 0.5)
    # at 0.5: TP=3 (0.9, 0.8, 0.7), FN=1 (0.3), FP=1 (0.6), TN=3
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["ppv"] == pytest.approx(3 / 4) and m["npv"] == pytest.approx(3 / 4)
    assert m["accuracy"] == pytest.approx(6 / 8) and m["f1"] == pytest.approx(0.75)
    # AUC: positives {.9,.8,.3,.7} vs negatives {.2,.6,.1,.4}:
    # 0.9, 0.8, 0.7 beat all four, 0.3 beats two: 14 of 16 pairs
    assert m["auc"] == pytest.approx(14 / 16)
    assert m["brier"] == pytest.approx(np.mean((s - y) ** 2))


def test_multiclass_and_multilabel_follow_medmnist() -> None:
    y = np.array([0, 1, 2, 2])
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    m = multiclass_metrics(y, p)
    assert m["accuracy"] == pytest.approx(3 / 4)
    yl = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], float)
    pl = np.array([[0.8, 0.3], [0.2, 0.9], [0.6, 0.4], [0.1, 0.2]])
    ml = multilabel_metrics(yl, pl)
    assert ml["accuracy"] == pytest.approx(7 / 8) and ml["auc"] == pytest.approx(1.0)


def test_bootstrap_ci_brackets_the_estimate() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s = np.clip(y * 0.3 + rng.random(400) * 0.7, 0, 1)
    out = bootstrap(lambda ix: binary_metrics(y[ix], s[ix], 0.5), len(y), y, n_boot=200)
    for name, v in out.items():
        lo, hi = v["ci95"]
        assert lo <= v["value"] <= hi, name
    assert 0 < out["auc"]["ci95"][1] - out["auc"]["ci95"][0] < 0.15


def test_ece_by_hand() -> None:
    # two bins in use: p=0.25 (observed 0.5) and p=0.95 (observed 1.0); equal weight
    y = np.array([0, 1, 1, 1])
    p = np.array([0.25, 0.25, 0.95, 0.95])
    assert expected_calibration_error(y, p) == pytest.approx(0.5 * 0.25 + 0.5 * 0.05)


def test_temperature_scaling_recovers_overconfidence() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, size=(3000, 2))
    y = np.array([rng.random() < np.exp(a[1]) / np.exp(a).sum() for a in true_logits]).astype(int)
    scaler = TemperatureScaler().fit(true_logits * 3.0, y)  # a model three times too confident
    assert scaler.temperature_ == pytest.approx(3.0, rel=0.15)


def test_operating_point_youden_and_sensitivity() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    op = choose_threshold(y, s)
    assert op["method"] == "youden" and op["threshold"] == pytest.approx(0.7)
    op = choose_threshold(y, s, target_sensitivity=1.0)
    assert op["threshold"] == pytest.approx(0.4) and op["val_sensitivity"] == 1.0
