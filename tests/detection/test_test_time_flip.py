"""Test-time flip for lesion detectors: how the two views' findings merge, and the validation rule that decides
whether a bundle merges them (tasks/detection/test_time.py)."""

from __future__ import annotations

import pytest

from detection.test_detection_uncertainty import _d
from medsight.tasks.detection.test_time import FLIPPED, SINGLE, TIE, decide, kept, merge, merged


def test_paired_boxes_merge_score_weighted_and_a_box_one_view_missed_keeps_half_its_score() -> None:
    image = _d([[10, 10, 30, 30], [60, 60, 70, 70]], [0.8, 0.2])
    mirror = _d([[12, 10, 32, 30]], [0.4])  # the first box, seen a little to the right; the second box not seen
    out = merge(image, mirror)
    assert out.scores == pytest.approx([0.6, 0.1])  # mean of 0.8 and 0.4; 0.2 against 0
    assert out.boxes[0] == pytest.approx([(0.8 * 10 + 0.4 * 12) / 1.2, 10, (0.8 * 30 + 0.4 * 32) / 1.2, 30])
    assert out.boxes[1] == pytest.approx([60, 60, 70, 70]) and list(out.labels) == [0, 0]
    # both views agreeing exactly change nothing
    same = merge(image, image)
    assert same.boxes == pytest.approx(image.boxes) and same.scores == pytest.approx(image.scores)


def test_boxes_of_different_classes_or_far_apart_are_never_merged() -> None:
    out = merge(_d([[10, 10, 30, 30]], [0.8], [0]), _d([[10, 10, 30, 30]], [0.6], [1]))
    assert out.scores == pytest.approx([0.4, 0.3]) and list(out.labels) == [0, 1]
    apart = merge(_d([[0, 0, 10, 10]], [0.9]), _d([[50, 50, 60, 60]], [0.5]))  # IoU 0: two findings
    assert apart.scores == pytest.approx([0.45, 0.25]) and apart.boxes[1] == pytest.approx([50, 50, 60, 60])
    empty = merge(_d([], []), _d([], []))
    assert empty.boxes.shape == (0, 4) and len(empty.scores) == 0


def test_the_flip_is_kept_only_when_it_beats_the_single_pass_on_validation_by_more_than_the_tie() -> None:
    first, second = [_d([[10, 10, 30, 30]], [0.8])], [_d([[10, 10, 30, 30]], [0.4])]

    def score(gain: float):
        # the single pass scores 0.5; the merged detections (their score changed to 0.6) score 0.5 + gain
        return lambda dets: 0.5 + (gain if dets[0].scores[0] == pytest.approx(0.6) else 0.0)

    both = merged(first, second)
    tie = decide(True, first, both, score(TIE / 2), "cpm")
    assert tie["kept"] is False and tie["views"] == SINGLE and tie["forward_passes_per_image"] == 1
    assert tie["decided_on"] == "val" and [c["views"] for c in tie["candidates"]] == [SINGLE, FLIPPED]
    win = decide(True, first, both, score(0.01), "cpm")
    assert win["kept"] is True and win["views"] == FLIPPED and win["forward_passes_per_image"] == 2
    assert win["candidates"][1]["cpm"] == pytest.approx(0.51)
    assert kept({"test_time_flip": win}, True) is True and kept({}, True) is False  # bundles from before: one pass
    assert kept({"test_time_flip": win}, False) is False  # hand-edited onto a plan that never mirrors: one pass
    # objects that training never mirrors get no candidate at all
    lateral = decide(False, first, None, score(1.0), "map50")
    assert lateral["kept"] is False and lateral["candidates"] == [] and lateral["decided_on"] == "plan"
