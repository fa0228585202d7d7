"""Per-nodule scoring of a probability map: components become scored candidates in LPS mm, a candidate hits a
nodule within its radius (LUNA16), and the FROC counts behind each operating point are exact."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.evaluation import froc, nodules


def test_candidates_hits_and_counts_on_a_known_map() -> None:
    prob = np.zeros((40, 40, 20), np.float32)
    prob[10:14, 10:14, 5:8] = 0.9  # on nodule A
    prob[30:32, 30:32, 10:12] = 0.6  # a false positive
    prob[20:22, 5:7, 15:17] = 0.3  # a weaker false positive
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])  # RAS, 1 x 1 x 2 mm; LPS x = i, y = j, z = 2k
    found = nodules.candidates(prob, affine, threshold=0.1)
    assert [round(c.score, 2) for c in found] == [0.9, 0.6, 0.3]
    assert found[0].centre_lps == pytest.approx((11.5, 11.5, 12.0))
    assert found[0].voxels == 4 * 4 * 3
    within = np.zeros_like(prob, bool)
    within[:25] = True
    assert [round(c.score, 2) for c in nodules.candidates(prob, affine, 0.1, within=within)] == [0.9, 0.3]
    rim = np.zeros_like(prob, bool)
    rim[9:11] = True  # touches nodule A's edge only (a nodule on the pleura is a hole in the lung mask)
    assert [round(c.score, 2) for c in nodules.candidates(prob, affine, 0.1, within=rim)] == [0.9]
    # the first LIDC run's rule (box centre inside the mask, --candidate-rule centre) drops that nodule
    assert nodules.candidates(prob, affine, 0.1, within=rim, rule="centre") == []
    centred = nodules.candidates(prob, affine, 0.1, within=within, rule="centre")
    assert [round(c.score, 2) for c in centred] == [0.9, 0.3]
    with pytest.raises(ValueError, match="unknown candidate rule"):
        nodules.candidates(prob, affine, 0.1, rule="inside")

    truth = nodules.nodule_boxes([(11.5, 11.5, 12.0), (100.0, 100.0, 100.0)], [6.0, 8.0])  # A, and B (missed)
    match = nodules.match_scan(found, truth)
    assert match.lesion_best.tolist() == pytest.approx([0.9, 0.0])
    assert sorted(match.fp_scores.tolist()) == pytest.approx([0.3, 0.6])
    assert nodules.found_at([match], 0.5) == (1, 2, pytest.approx(0.6, abs=1e-6))
    assert nodules.found_at([match], 2.0)[:2] == (1, 2)
    metrics = froc.froc_metrics([match])
    assert metrics["sens@1fp"] == pytest.approx(0.5) and metrics["sens@8fp"] == pytest.approx(0.5)
    # a candidate just outside the radius misses
    far = nodules.candidates(np.roll(prob, 4, axis=0), affine, threshold=0.5)
    assert nodules.match_scan(far, truth[:1]).lesion_best.tolist() == [0.0]


def test_no_candidate_gives_zero_sensitivity() -> None:
    match = nodules.match_scan([], nodules.nodule_boxes([(0.0, 0.0, 0.0)], [10.0]))
    assert nodules.found_at([match], 1.0) == (0, 1, 0.0)
    assert froc.froc_metrics([match])["cpm"] == 0.0
