"""Findings of several views or models fused into one set (tasks/detection/fusion.py): what a seed ensemble of
lesion detectors reports. The two-view case (the test-time flip) is checked against hand values in
test_test_time_flip.py."""

from __future__ import annotations

import pytest

from detection.test_detection_uncertainty import _d
from medsight.errors import MedsightError
from medsight.tasks.detection.fusion import fuse, fused


def test_a_box_every_member_found_keeps_the_mean_score_and_one_found_by_one_member_keeps_a_third() -> None:
    a = _d([[10, 10, 30, 30], [100, 100, 120, 120]], [0.9, 0.6])
    b = _d([[12, 10, 32, 30]], [0.6])
    c = _d([[11, 10, 31, 30]], [0.3])
    out = fuse([a, b, c])
    assert out.scores == pytest.approx([0.6, 0.2])  # (0.9 + 0.6 + 0.3) / 3; 0.6 / 3
    x1 = (0.9 * 10 + 0.6 * 12 + 0.3 * 11) / 1.8
    assert out.boxes[0] == pytest.approx([x1, 10, x1 + 20, 30])
    assert out.boxes[1] == pytest.approx([100, 100, 120, 120]) and list(out.labels) == [0, 0]


def test_one_member_never_puts_two_of_its_boxes_into_one_cluster() -> None:
    # b's two boxes both overlap a's box; one-to-one pairing sends the better overlap to the cluster, the other
    # starts a cluster of its own (greedy fusion would fold both into a's box)
    a = _d([[10, 10, 30, 30]], [0.9])
    b = _d([[10, 10, 30, 30], [14, 10, 34, 30]], [0.8, 0.7])
    out = fuse([a, b])
    assert len(out.scores) == 2
    assert sorted(out.scores) == pytest.approx([0.35, 0.85])


def test_classes_are_fused_apart_and_empty_views_are_fine() -> None:
    out = fuse([_d([[10, 10, 30, 30]], [0.9], [0]), _d([[10, 10, 30, 30]], [0.6], [1]), _d([], [])])
    assert out.scores == pytest.approx([0.3, 0.2]) and list(out.labels) == [0, 1]
    empty = fuse([_d([], []), _d([], []), _d([], [])])
    assert empty.boxes.shape == (0, 4) and len(empty.scores) == 0


def test_fusing_nothing_or_views_of_different_image_counts_is_a_clear_error() -> None:
    with pytest.raises(MedsightError, match="no detections"):
        fuse([])
    with pytest.raises(MedsightError, match="different numbers of images"):
        fused([[_d([], [])], [_d([], []), _d([], [])]])
    per_image = fused([[_d([[0, 0, 9, 9]], [0.6])], [_d([[0, 0, 9, 9]], [0.3])]])
    assert len(per_image) == 1 and per_image[0].scores == pytest.approx([0.45])
