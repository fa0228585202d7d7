"""FROC, CPM and AP@0.5 (COCO, 101 recall points) on small hand-made examples equal hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.evaluation.froc import (
    centres_inside,
    detection_metrics,
    froc_metrics,
    match_image,
)
from medsight.evaluation.metrics import bootstrap


def _froc_example() -> list:
    # Image A: lesions L1 [0,0,10,10], L2 [20,20,30,30]; detections: on L1 (0.9), FP (0.8), on L2 (0.3), second on
    # L1 (0.7, a duplicate: neither TP nor FP). Image B: no lesion, two FPs (0.6, 0.2).
    a = match_image(
        [[2, 2, 8, 8], [50, 50, 60, 60], [22, 22, 28, 28], [0, 0, 12, 12]],
        [0.9, 0.8, 0.3, 0.7],
        [[0, 0, 10, 10], [20, 20, 30, 30]],
    )
    b = match_image([[5, 5, 9, 9], [40, 40, 45, 45]], [0.6, 0.2], np.zeros((0, 4)))
    return [a, b]


def test_froc_hand_computed() -> None:
    # threshold: found lesions / FPs per image -> 0.9: 1/2, 0 | 0.8: 1/2, 0.5 | 0.7: 1/2, 0.5 | 0.6: 1/2, 1.0
    # | 0.3: 2/2, 1.0 | 0.2: 2/2, 1.5
    m = froc_metrics(_froc_example())
    assert m["sens@0.125fp"] == 0.5 and m["sens@0.25fp"] == 0.5 and m["sens@0.5fp"] == 0.5
    assert m["sens@1fp"] == 1.0 and m["sens@2fp"] == 1.0 and m["sens@8fp"] == 1.0
    assert m["cpm"] == pytest.approx((3 * 0.5 + 4 * 1.0) / 7)


def test_froc_no_detection_is_zero() -> None:
    m = froc_metrics([match_image(np.zeros((0, 4)), [], [[0, 0, 5, 5]])])
    assert m["cpm"] == 0.0


def test_ap50_hand_computed() -> None:
    # GT: A has g1 [0,0,10,10] and g2 [20,20,30,30]; B has g3 [0,0,10,10].
    # By score: A 0.9 on g1 (TP), A 0.8 on g1 again (duplicate, FP), B 0.7 IoU 0.9 with g3 (TP), B 0.6 (FP),
    # A 0.5 IoU 0.4 with g2 (below 0.5: FP). Precision 1, 1/2, 2/3, 1/2, 2/5 at recall 1/3, 1/3, 2/3, 2/3, 2/3.
    # COCO 101-point AP: the envelope is 1 at recall 0 ... 0.33 (34 points), 2/3 at 0.34 ... 0.66 (33 points).
    a = match_image(
        [[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 24]], [0.9, 0.8, 0.5], [[0, 0, 10, 10], [20, 20, 30, 30]]
    )
    b = match_image([[0, 0, 10, 9], [50, 50, 60, 60]], [0.7, 0.6], [[0, 0, 10, 10]])
    assert a.coco[0]["dtMatches"][0].tolist() == [1, 0, 0] and b.coco[0]["dtMatches"][0].tolist() == [1, 0]
    m = detection_metrics([a, b], ["lesion"], froc=False)
    assert m["ap50_lesion"] == pytest.approx(56 / 101)
    assert m["map50"] == pytest.approx(56 / 101)


def test_ap_per_class_and_map() -> None:
    # Two classes, one image: class 0 found perfectly (AP 1); class 1 box found only at IoU < 0.5 (AP 0).
    m = match_image(
        [[0, 0, 10, 10], [20, 20, 30, 22]],
        [0.9, 0.8],
        [[0, 0, 10, 10], [20, 20, 30, 30]],
        det_labels=[0, 1],
        gt_labels=[0, 1],
    )
    out = detection_metrics([m], ["Right Lung", "Left Lung"], froc=False)
    assert out["ap50_right_lung"] == pytest.approx(1.0) and out["ap50_left_lung"] == 0.0
    assert out["map50"] == pytest.approx(0.5)


def test_image_auc_and_3d_centres() -> None:
    ex = _froc_example()
    # image A (lesions) max score 0.9 > image B 0.6 -> AUC 1
    assert detection_metrics(ex, ["lesion"])["image_auc"] == 1.0
    inside = centres_inside(np.array([[1, 1, 1, 3, 3, 3], [8, 8, 8, 12, 12, 12]]), np.array([[0, 0, 0, 4, 4, 4]]))
    assert inside[:, 0].tolist() == [True, False]


def test_bootstrap_over_images_runs() -> None:
    ex = _froc_example() * 3
    out = bootstrap(lambda ix: froc_metrics([ex[i] for i in ix]), len(ex), None, 50)
    cpm = out["cpm"]
    ci = list(cpm["ci95"])  # type: ignore[call-overload]
    assert float(ci[0]) <= float(cpm["value"]) <= float(ci[1])  # type: ignore[arg-type]
