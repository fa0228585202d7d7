"""Dice, HD95 and NSD against values computed by hand on small arrays; pixel AUC; the post-processing rule."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medsight.tasks.segmentation.inference import (
    case_summaries,
    decide_postprocessing,
    drop_summarised,
    keep_largest,
    postprocess,
)
from medsight.tasks.segmentation.metrics import PixelCounts, auc_from_histograms, case_metrics, summarise


def test_dice_by_hand() -> None:
    ref = np.zeros((10, 10), np.int64)
    ref[2:6, 2:6] = 1  # 16 pixels
    pred = np.zeros_like(ref)
    pred[2:6, 3:7] = 1  # 16 pixels, 12 overlap
    m = case_metrics(pred, ref, 2, (1.0, 1.0), 1.0)
    assert m["dice"][0] == pytest.approx(2 * 12 / 32)


def test_hd95_by_hand_with_spacing() -> None:
    ref = np.zeros((12, 12), np.int64)
    pred = np.zeros_like(ref)
    ref[3, 2] = 1
    pred[3, 8] = 1  # one pixel each, 6 pixels apart along the second axis
    m = case_metrics(pred, ref, 2, (1.0, 1.0), 1.0)
    assert m["dice"][0] == 0.0 and m["hd95"][0] == pytest.approx(6.0) and m["nsd"][0] == 0.0
    m = case_metrics(pred, ref, 2, (2.0, 0.5), 1.0)
    assert m["hd95"][0] == pytest.approx(3.0)  # 6 pixels x 0.5 mm

    ref3 = np.zeros((6, 6, 6), np.int64)
    pred3 = np.zeros_like(ref3)
    ref3[1, 1, 1] = 2
    pred3[1, 1, 4] = 2
    m = case_metrics(pred3, ref3, 3, (1.0, 1.0, 2.0), 1.0)
    assert m["dice"][0] == 1.0 and m["hd95"][0] == 0.0  # class 1 absent from both: a true negative, counted
    assert m["hd95"][1] == pytest.approx(6.0)  # 3 voxels x 2 mm


def test_identical_masks_are_perfect_and_summary_has_cis() -> None:
    ref = np.zeros((16, 16), np.int64)
    ref[4:10, 5:12] = 1
    cases = [case_metrics(ref, ref, 2, (1.0, 1.0), 1.0) for _ in range(3)]
    assert cases[0]["dice"][0] == 1.0 and cases[0]["hd95"][0] == 0.0 and cases[0]["nsd"][0] == 1.0
    overall, per_class = summarise(cases, ["lesion"], n_boot=20)
    assert overall["dice"]["value"] == 1.0 and per_class["lesion"]["hd95"]["value"] == 0.0
    assert overall["dice"]["ci95"] == [1.0, 1.0]


def test_pixel_auc_from_histograms_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random((3, 50, 50)) < 0.2
    score = np.clip(truth * 0.3 + rng.random(truth.shape) * 0.7, 0, 1)
    roi = np.ones((50, 50), bool)
    roi[:5] = False
    counts = PixelCounts()
    for s, t in zip(score, truth, strict=True):
        counts.add(s, t.astype(int), roi)
    inside = np.broadcast_to(roi, truth.shape)
    exact = roc_auc_score(truth[inside], score[inside])
    m = counts.metrics(np.arange(3))
    assert m["auc"] == pytest.approx(exact, abs=1e-3)
    assert counts.metrics(np.arange(3), exact_auc=True)["auc"] == pytest.approx(exact)
    pred = score[inside] >= 0.5
    t = truth[inside]
    assert m["sensitivity"] == pytest.approx((pred & t).sum() / t.sum())
    assert m["accuracy"] == pytest.approx((pred == t).mean())
    assert auc_from_histograms(np.array([0, 1]), np.array([1, 0])) == 1.0


def test_postprocessing_is_decided_per_class() -> None:
    ref = np.zeros((20, 20), np.int64)
    ref[2:8, 2:8] = 1
    ref[12:18, 12:18] = 2
    pred = ref.copy()
    pred[0, 19] = 1  # a speck of class 1 far away: removing it helps
    ref2 = ref.copy()
    ref2[15:17, 2:4] = 2  # class 2 truly has two components: keeping only the largest hurts
    pred2 = ref2.copy()
    decision = decide_postprocessing([pred, pred2], [ref, ref2], 3)
    assert decision["keep_largest_component"] == [1]
    assert keep_largest(pred, [1])[0, 19] == 0 and pred[0, 19] == 1  # the input is left untouched


def _lesion_case(lesion: bool, peak: float, size: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prediction, reference, probabilities) of a 32x32 image whose prediction has one blob of peak ``peak``."""
    pred = np.zeros((32, 32), np.int64)
    pred[4 : 4 + size, 4 : 4 + size] = 1
    ref = pred.copy() if lesion else np.zeros_like(pred)
    fg = np.where(pred == 1, peak, 0.05)
    return pred, ref, np.stack([1 - fg, fg])


def test_an_unsure_lesion_gate_is_chosen_on_validation_and_removes_false_positives() -> None:
    """BUSI's defect: a lesion drawn on nearly every normal image, each scoring Dice 0. On validation cases where the
    false positives are less certain than the true lesions, a gate between the two is chosen and removes them."""
    cases = [_lesion_case(True, 0.97) for _ in range(5)] + [_lesion_case(False, 0.66) for _ in range(5)]
    preds, refs, probs = zip(*cases, strict=True)
    summaries = [case_summaries(p, q, 2) for p, q in zip(preds, probs, strict=True)]
    decision = decide_postprocessing(list(preds), list(refs), 2, summaries)
    gate = decision["drop_unsure"]["1"]
    assert 0.66 < gate["min_peak"] <= 0.97
    assert decision["unsure_trials"]["1"]["dice_before"] == pytest.approx(0.5)
    assert decision["unsure_trials"]["1"]["dice_after"] == pytest.approx(1.0)
    for (pred, ref, prob), summary in zip(cases, summaries, strict=True):
        kept = postprocess(pred, decision["keep_largest_component"], None, prob, decision["drop_unsure"])
        assert np.array_equal(kept, ref)  # the lesions survive, the false positives are gone
        # validation applies the same gate from the summaries as prediction does from the probabilities
        assert np.array_equal(drop_summarised(keep_largest(pred, decision["keep_largest_component"]), summary,
                                              decision), kept)


def test_no_gate_where_it_gains_nothing() -> None:
    """A class present in every validation image (an organ) has nothing to gain from dropping predictions: no gate,
    and a small true region is not removed for being small."""
    cases = [_lesion_case(True, 0.7, size=2) for _ in range(4)] + [_lesion_case(True, 0.99) for _ in range(4)]
    preds, refs, probs = zip(*cases, strict=True)
    summaries = [case_summaries(p, q, 2) for p, q in zip(preds, probs, strict=True)]
    decision = decide_postprocessing(list(preds), list(refs), 2, summaries)
    assert decision["drop_unsure"] == {}
    assert decision["unsure_trials"]["1"]["dice_after"] == pytest.approx(1.0)
    small = postprocess(preds[0], [1], None, probs[0], decision["drop_unsure"])
    assert small.sum() == 4


def test_thread_tuner_trains_with_the_faster_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a shared machine one thread can beat two (OpenMP spinning); the tuner times both and keeps the faster."""
    from types import SimpleNamespace

    import torch

    from medsight.tasks.segmentation import threads
    from medsight.training.engine import Event

    before = torch.get_num_threads()
    now = [0.0]
    monkeypatch.setattr(threads.time, "monotonic", lambda: now[0])
    tuner = threads.ThreadTuner([2, 1], probe=3, every=20)
    engine = SimpleNamespace(state=SimpleNamespace(iteration=0))
    used = []
    try:
        for it in range(10):
            engine.state.iteration = it
            tuner(engine, Event.ITERATION_STARTED)  # type: ignore[arg-type]
            used.append(torch.get_num_threads())
            now[0] += 1.0 if torch.get_num_threads() == 2 else 0.3  # two threads are slower here
            engine.state.iteration = it + 1
            tuner(engine, Event.ITERATION_COMPLETED)  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(before)
    assert used[:6] == [2, 2, 2, 1, 1, 1] and used[6:] == [1, 1, 1, 1]
    assert tuner.choice == 1 and tuner.choices == [{"iteration": 6.0, "threads": 1.0}]


def test_scoring_many_cases_prints_no_library_warning_per_case() -> None:
    """Evaluating 157 BUSI images printed MONAI's FutureWarning about its own ``always_return_as_numpy`` 157 times
    (our catch_warnings around the distances reset Python's once-per-place record each case)."""
    import warnings

    from medsight.tasks.segmentation.metrics import case_metrics

    ref = np.zeros((24, 24), np.int64)
    ref[4:12, 4:12] = 1
    pred = np.roll(ref, 2, axis=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(5):
            case_metrics(pred, ref, 2, (1.0, 1.0), 1.0)
    assert not [w for w in caught if "always_return_as_numpy" in str(w.message)]
