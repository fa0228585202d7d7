"""FROC as LUNA16 defines it (hit = detection centre within the lesion radius; sensitivities at 1/8 ... 8 FP per
image interpolated as MONAI's ``compute_froc_score``) and AP@0.5 as MONAI's ``COCOMetric`` computes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from monai.apps.detection.metrics.coco import COCOMetric
from monai.apps.detection.metrics.matching import matching_batch
from monai.data.box_utils import box_iou
from monai.metrics import compute_froc_curve_data, compute_froc_score

from medsight.data.detection import load_mias
from medsight.evaluation.froc import (
    FP_RATES,
    detection_metrics,
    froc_curve,
    froc_metrics,
    image_errors,
    lesion_circles,
    match_image,
)
from medsight.tasks.detection.evaluate import match
from medsight.tasks.detection.network import Detections


def _box_around(cx: float, cy: float, half: float = 3.0) -> list[float]:
    return [cx - half, cy - half, cx + half, cy + half]


def test_a_detection_inside_the_box_but_beyond_the_radius_is_a_false_positive() -> None:
    lesion = [[40.0, 40.0, 60.0, 60.0]]  # a circle of radius 10 at (50, 50), kept as its bounding square
    d = 10 * 1.3 / np.sqrt(2)  # 1.3 radii from the centre along the diagonal: still inside the square
    beyond = match_image([_box_around(50 + d, 50 + d)], [0.9], lesion, criterion="radius")
    assert beyond.lesion_best.tolist() == [0.0]  # missed
    assert beyond.fp_scores.tolist() == [0.9]  # and the detection is a false positive
    within = match_image([_box_around(59.0, 50.0)], [0.9], lesion, criterion="radius")  # 0.9 radii away
    assert within.lesion_best.tolist() == [0.9] and within.fp_scores.size == 0
    # the box criterion (kept for box lesions) still calls the first one a hit: that is the difference
    assert match_image([_box_around(50 + d, 50 + d)], [0.9], lesion, criterion="centre").lesion_best.tolist() == [0.9]


def test_lesion_circles_recover_mias_centre_and_radius(shared_data: Path) -> None:
    data = load_mias(shared_data / "mini_mias")
    item = next(it for it in data.items if it.key == "mdb028")  # Info.txt: 338 314 56 (1024-px units)
    centres, radii = lesion_circles(item.boxes)
    assert centres[0] == pytest.approx([169.0, 355.0]) and radii[0] == pytest.approx(28.0)  # 512-px image


def test_the_lesion_task_matches_by_radius_on_real_mias_lesions(shared_data: Path) -> None:
    data = load_mias(shared_data / "mini_mias")
    item = min((it for it in data.items if len(it.boxes)), key=lambda it: float(it.boxes[0, 2] - it.boxes[0, 0]))
    (cx, cy), r = lesion_circles(item.boxes)[0][0], float(lesion_circles(item.boxes)[1][0])
    d = r * 1.3 / np.sqrt(2)
    det = Detections(np.array([_box_around(cx + d, cy + d, 1.0)]), np.array([0.8]), np.array([0]))
    (m,) = match([det], [item], "lesions")
    assert m.lesion_best.tolist() == [0.0] and m.fp_scores.tolist() == [0.8]


def _tied_example() -> list:
    """Two images, four lesions (radius 5). By score: 0.9 hits L1; at 0.6 a hit on L2 ties with a FP; at 0.3 a hit
    on L3 ties with two FPs; L4 is never found."""
    a = match_image(
        [_box_around(10, 10), _box_around(30, 30), _box_around(80, 80)],
        [0.9, 0.6, 0.6],
        [[5, 5, 15, 15], [25, 25, 35, 35]],
        criterion="radius",
    )
    b = match_image(
        [_box_around(10, 10), _box_around(60, 60), _box_around(80, 80)],
        [0.3, 0.3, 0.3],
        [[5, 5, 15, 15], [25, 25, 35, 35]],
        criterion="radius",
    )
    return [a, b]


def test_sensitivity_between_operating_points_is_interpolated_as_monai_does() -> None:
    # Operating points (FP per image, sensitivity): (0, 0) above every score, (0, 1/4) at 0.9, (1/2, 1/2) at 0.6,
    # (3/2, 3/4) at 0.3. Linear interpolation: at 1/8 -> 1/4 + 1/4 * (1/8)/(1/2) = 0.3125, at 1/4 -> 0.375,
    # at 1/2 -> 0.5, at 1 -> 1/2 + 1/4 * (1/2)/(1) = 0.625, at 2, 4, 8 -> 0.75 (flat beyond the last point).
    # A step function ("best sensitivity with FP <= r") would give 0.25, 0.25, 0.5, 0.5, 0.75, ...
    m = froc_metrics(_tied_example())
    expected = [0.3125, 0.375, 0.5, 0.625, 0.75, 0.75, 0.75]
    assert [m[f"sens@{r:g}fp"] for r in FP_RATES] == pytest.approx(expected)
    assert m["cpm"] == pytest.approx(sum(expected) / 7)
    hand_fps, hand_sens = np.array([1.5, 0.5, 0.0, 0.0]), np.array([0.75, 0.5, 0.25, 0.0])
    assert m["cpm"] == pytest.approx(float(compute_froc_score(hand_fps, hand_sens, FP_RATES)))
    thr, fppi, sens = froc_curve(_tied_example())
    assert fppi.tolist() == hand_fps.tolist() and sens.tolist() == hand_sens.tolist()
    assert thr.tolist() == [0.3, 0.6, 0.9, np.inf]


def test_the_curve_is_monai_curve_data_and_keeps_the_lowest_scoring_point() -> None:
    # Every lesion is found, the last one by the lowest-scoring detection: MONAI's curve starts from the
    # second-lowest distinct score (its lowest is CAMELYON's "missed" score 0), so without a zero in the scores
    # the point where the last lesion is found would be lost and sensitivity would never reach 1.
    m = match_image([_box_around(80, 80), _box_around(10, 10)], [0.9, 0.5], [[5, 5, 15, 15]], criterion="radius")
    out = froc_metrics([m])
    assert out["sens@1fp"] == 1.0 and out["sens@8fp"] == 1.0 and out["sens@0.5fp"] == 0.0
    _, fppi, sens = froc_curve([m])
    ref_fps, ref_sens = compute_froc_curve_data(np.array([0.9, 0.0]), np.array([0.5]), 1, 1)
    assert fppi.tolist() == ref_fps.tolist() and sens.tolist() == ref_sens.tolist()


def test_ap50_is_monai_coco_metric_101_point() -> None:
    # GT: A has g1 [0,0,10,10] and g2 [20,20,30,30]; B has g3 [0,0,10,10]. By score: A 0.9 on g1 (TP), A 0.8 on g1
    # again (duplicate: FP), B 0.7 on g3 (TP), B 0.6 (FP), A 0.5 IoU 0.4 with g2 (FP). Precision envelope: 1 up to
    # recall 1/3, 2/3 up to recall 2/3, then 0. COCO's 101 recall points: 34 at 1 (0 ... 0.33), 33 at 2/3
    # (0.34 ... 0.66): AP = (34 + 22) / 101.
    a = match_image(
        [[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 24]], [0.9, 0.8, 0.5], [[0, 0, 10, 10], [20, 20, 30, 30]]
    )
    b = match_image([[0, 0, 10, 9], [50, 50, 60, 60]], [0.7, 0.6], [[0, 0, 10, 10]])
    m = detection_metrics([a, b], ["lesion"], froc=False)
    assert m["ap50_lesion"] == pytest.approx(56 / 101) and m["map50"] == pytest.approx(56 / 101)
    # the same figure straight from MONAI's matching and COCOMetric
    preds = [
        np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 24]], float),
        np.array([[0, 0, 10, 9], [50, 50, 60, 60]], float),
    ]
    gts = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.array([[0, 0, 10, 10]], float)]
    coco = COCOMetric(["lesion"], iou_list=(0.5,), iou_range=(0.5, 0.5, 0.05), max_detection=(100,), verbose=False)
    res = matching_batch(
        box_iou, coco.iou_thresholds, preds, [np.zeros(3, int), np.zeros(2, int)],
        [np.array([0.9, 0.8, 0.5]), np.array([0.7, 0.6])], gts, [np.zeros(2, int), np.zeros(1, int)],
    )  # fmt: skip
    assert m["ap50_lesion"] == pytest.approx(coco(res)[0]["lesion_AP_IoU_0.50_MaxDet_100"])


def test_a_class_absent_from_the_truth_has_no_ap_and_does_not_drag_the_mean() -> None:
    m = match_image([[0, 0, 10, 10], [40, 40, 50, 50]], [0.9, 0.8], [[0, 0, 10, 10]], det_labels=[0, 1], gt_labels=[0])
    out = detection_metrics([m], ["right", "left"], froc=False)
    assert out["ap50_right"] == pytest.approx(1.0) and np.isnan(out["ap50_left"])
    assert out["map50"] == pytest.approx(1.0)


def test_image_errors_at_the_operating_point() -> None:
    # lesions: one lesion found at 0.8, one missed (best 0.2 < 0.5), one FP at 0.7, one FP below the threshold
    m = match_image(
        [_box_around(10, 10), _box_around(30, 30), _box_around(80, 80), _box_around(90, 90)],
        [0.8, 0.2, 0.7, 0.1],
        [[5, 5, 15, 15], [25, 25, 35, 35]],
        criterion="radius",
    )
    assert image_errors(m, 0.5, froc=True) == 2
    # objects (AP matching at IoU 0.5): one box found, one duplicate (FP) above the threshold, one box missed
    o = match_image([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.6], [[0, 0, 10, 10], [20, 20, 30, 30]], det_labels=[0, 0])
    assert image_errors(o, 0.5, froc=False) == 2 and image_errors(o, 0.95, froc=False) == 2
    assert image_errors(o, 0.7, froc=False) == 1
