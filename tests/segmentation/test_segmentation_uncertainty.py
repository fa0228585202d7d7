"""Per-case uncertainty from test-time mirroring: the disagreement of the mirrored passes with their consensus, higher
for a noisy input than a clean one on a constructed model; a review threshold chosen on the validation cases at the
end of training and stored in the bundle; evaluate reporting how well it ranks bad cases without ever recomputing the
threshold on the test split; and predict writing ``uncertainty`` and ``flag_for_review`` per input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medsight import runtime
from medsight.tasks import segmentation
from medsight.tasks.segmentation import SegmentationOptions, uncertainty
from medsight.tasks.segmentation.data import Loaded
from medsight.tasks.segmentation.inference import predict_case
from medsight.tasks.segmentation.plan import make_plan
from medsight.tasks.segmentation.predict import SegmentationModel
from medsight.training.bundle import load_bundle

# --------------------------------------------------------------------------------------------------- the measure


def test_disagreement_is_zero_when_mirrors_agree_and_grows_with_disagreement() -> None:
    mask = np.zeros((12, 12), np.uint8)
    mask[3:9, 3:9] = 1
    shifted = np.roll(mask, 3, axis=1)
    agree = uncertainty.Mirrors(masks=[mask, mask, mask], consensus=mask)
    some = uncertainty.Mirrors(masks=[mask, mask, shifted], consensus=mask)
    most = uncertainty.Mirrors(masks=[mask, shifted, shifted], consensus=mask)
    assert uncertainty.disagreement(agree, 2) == 0.0
    assert 0.0 < uncertainty.disagreement(some, 2) < uncertainty.disagreement(most, 2) <= 1.0
    empty = np.zeros_like(mask)
    # every mirror agrees there is nothing: no disagreement; one mirror sees something: counted
    assert uncertainty.disagreement(uncertainty.Mirrors(masks=[empty, empty], consensus=empty), 2) == 0.0
    assert uncertainty.disagreement(uncertainty.Mirrors(masks=[empty, mask], consensus=empty), 2) == 0.5


def _plan_2d(flips: bool):  # type: ignore[no-untyped-def]
    fp = {
        "n_cases": 4,
        "spatial_dims": 2,
        "n_channels": 1,
        "modality": "MRI",
        "spacing_median": [1.0, 1.0],
        "spacing_min": [1.0, 1.0],
        "spacing_max": [1.0, 1.0],
        "shape_median": [48.0, 48.0],
        "class_frequency": {"background": 0.9, "lesion": 0.1},
    }
    return make_plan(fp, "cpu", {"patch_size": [48, 48], "test_time_flips": flips})


def _asymmetric_model(x: torch.Tensor) -> torch.Tensor:
    """A constructed 'network' that is not mirror-symmetric: foreground where an off-centre smoothing of the image is
    bright. On a clean disc its mirrored passes shift the edge by a pixel; on noise they disagree everywhere."""
    kernel = torch.zeros(1, 1, 5, 5)
    kernel[0, 0, 2, 2:] = 1.0
    kernel[0, 0, 3:, 2] = 1.0
    fg = torch.nn.functional.conv2d(x, kernel / kernel.sum(), padding=2)
    return torch.cat([torch.zeros_like(fg), 4.0 * fg], dim=1)


@pytest.mark.parametrize("flips", [True, False])
def test_uncertainty_is_higher_for_a_noisy_input_than_a_clean_one(flips: bool) -> None:
    plan = _plan_2d(flips)
    yy, xx = np.mgrid[:48, :48]
    disc = ((yy - 24) ** 2 + (xx - 22) ** 2 < 12**2).astype(np.float32)
    noisy = disc + np.random.default_rng(0).normal(0, 1.5, disc.shape).astype(np.float32)
    scores = {}
    for name, image in (("clean", disc), ("noisy", noisy)):
        case = Loaded(name, image[None], None, (1.0, 1.0), np.eye(4))
        mirrors = uncertainty.Mirrors()
        mask, _ = predict_case(case, plan, _asymmetric_model, mirrors=mirrors)
        assert len(mirrors.masks) == (4 if flips else 3)  # all 2^2 mirrorings, or identity + one flip per axis
        assert mirrors.consensus is not None and mirrors.consensus.shape == mask.shape
        scores[name] = uncertainty.disagreement(mirrors, 2)
    assert 0.0 <= scores["clean"] < 0.15 < scores["noisy"]
    assert scores["noisy"] > 2 * scores["clean"]


# ------------------------------------------------------------------------------------- threshold and ranking


def test_threshold_is_a_validation_quantile_and_flags_only_cases_above_it() -> None:
    values = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.30]
    dice = [0.9, 0.9, 0.88, 0.87, 0.86, 0.85, 0.84, 0.8, 0.7, 0.3]
    review = uncertainty.choose_threshold(values, dice)
    assert review["threshold"] == pytest.approx(float(np.quantile(values, uncertainty.REVIEW_QUANTILE)))
    assert review["decided_on"] == "10 validation case(s)" and "validation" in review["rule"]
    assert review["validation"]["uncertainty"] == pytest.approx(values)
    assert uncertainty.flag(0.30, review["threshold"]) is True and uncertainty.flag(0.05, review["threshold"]) is False
    assert uncertainty.flag(0.30, None) is None  # no threshold (no validation case): no flag rather than a guess
    assert uncertainty.choose_threshold([], [])["threshold"] is None


def test_ranking_reports_spearman_with_a_ci_and_dice_of_flagged_against_unflagged() -> None:
    rng = np.random.default_rng(1)
    u = np.sort(rng.random(30))
    dice = 0.95 - 0.5 * u + rng.normal(0, 0.02, 30)  # the more uncertain, the worse
    report = uncertainty.ranking(u, dice, threshold=0.7, n_boot=200)
    rho = report["spearman_uncertainty_vs_dice"]
    assert rho["value"] < -0.8 and rho["ci95"][0] <= rho["value"] <= rho["ci95"][1] < 0
    assert report["n_flagged"] == int((u > 0.7).sum()) and report["n"] == 30
    assert report["dice_flagged"]["value"] < report["dice_unflagged"]["value"]
    assert report["dice_flagged"]["value"] == pytest.approx(float(dice[u > 0.7].mean()))
    none = uncertainty.ranking(u, dice, threshold=2.0, n_boot=20)
    assert none["n_flagged"] == 0 and none["dice_flagged"]["value"] is None and none["dice_flagged"]["undefined"]


# ----------------------------------------------------------------------------------- train, evaluate, predict

TINY = {
    "target_spacing": [2.0, 2.0, 2.0],
    "patch_size": [32, 32, 32],
    "batch_size": 2,
    "iterations_per_epoch": 3,
    "optimizer": {"warmup_iterations": 1},
    "validate_every": 0,
    "test_time_flips": False,
    "network": {"filters": [8, 16, 32, 64]},
}


@pytest.fixture(scope="module")
def small(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 14-case Hippocampus folder (its own held-out test split and folds) and a tiny bundle trained on it."""
    tmp = tmp_path_factory.mktemp("seg_uncertainty")
    source = (shared_data / "msd_hippocampus").resolve()
    root = tmp / "hippocampus_small"
    names = sorted(p.name for p in (source / "labelsTr").glob("hippocampus_*.nii.gz"))[:14]
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
        for name in names:
            (root / folder / name).symlink_to(source / folder / name)
    plan = tmp / "tiny_plan.json"
    plan.write_text(json.dumps(TINY))
    bundle = tmp / "bundle"
    segmentation.TASK.train(str(root), bundle, SegmentationOptions(epochs=2, lr=1e-2, plan=plan, max_cases=8))
    return root, bundle


def test_train_stores_a_threshold_chosen_on_the_validation_cases(small: tuple[Path, Path]) -> None:
    _, bundle = small
    meta = load_bundle(bundle).meta
    review = meta["uncertainty"]
    n_val = len(meta["data"]["val_ids"])
    assert review["decided_on"] == f"{n_val} validation case(s)" and n_val == 2
    assert review["method"] == "tta_disagreement" and review["passes"] == 4  # identity + 3 single-axis flips (3D)
    values = review["validation"]["uncertainty"]
    assert len(values) == n_val and all(0.0 <= v <= 1.0 for v in values)
    assert review["threshold"] == pytest.approx(float(np.quantile(values, review["quantile"])))


def test_evaluate_on_test_uses_the_stored_threshold_and_never_recomputes_it(
    small: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, bundle = small
    edited = tmp_path / "bundle"
    import shutil

    shutil.copytree(bundle, edited)
    meta = json.loads((edited / "bundle.json").read_text())
    meta["uncertainty"]["threshold"] = 0.0123  # a value no quantile of the test cases would give
    (edited / "bundle.json").write_text(json.dumps(meta))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the review threshold was recomputed during evaluation")

    monkeypatch.setattr(uncertainty, "choose_threshold", refuse)
    result = segmentation.TASK.evaluate(edited, str(root), "test", tmp_path / "eval", 50)
    report = result["uncertainty"]
    assert report["threshold"] == 0.0123 and "validation" in report["threshold_from"]
    assert result["n"] == len(load_bundle(edited).meta["data"]["test_ids"]) >= 2
    for case in result["per_case"]:
        assert 0.0 <= case["uncertainty"] <= 1.0
        assert case["flag_for_review"] == (case["uncertainty"] > 0.0123)
    assert report["n_flagged"] == sum(c["flag_for_review"] for c in result["per_case"])
    assert set(report["spearman_uncertainty_vs_dice"]) >= {"value", "ci95"}
    assert set(result["case_situations"]) == {"label_1", "label_2"}
    for counts in result["case_situations"].values():
        assert sum(counts.values()) == result["n"]
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["uncertainty"]["threshold"] == 0.0123
    assert "review" in (tmp_path / "eval" / "card.html").read_text().lower()


def test_predict_writes_uncertainty_and_flag_for_review(small: tuple[Path, Path], tmp_path: Path) -> None:
    root, bundle = small
    image = sorted((root / "imagesTr").iterdir())[0]
    threshold = load_bundle(bundle).meta["uncertainty"]["threshold"]
    model = SegmentationModel(load_bundle(bundle), uncertainty=True)
    [result] = model.predict([image])
    assert result.uncertainty is not None and 0.0 <= result.uncertainty <= 1.0
    assert result.flag_for_review == (result.uncertainty > threshold)
    runtime.write_predictions(model, [result], tmp_path / "pred")
    entry = json.loads((tmp_path / "pred" / "predictions.json").read_text())["predictions"][0]
    assert entry["uncertainty"] == pytest.approx(result.uncertainty)
    assert entry["flag_for_review"] is result.flag_for_review
    # the tiny plan has test-time flips off (real-time use): the default model adds no mirrored passes
    [plain] = runtime.load(bundle).predict([image])
    assert plain.uncertainty is None and plain.flag_for_review is None
    np.testing.assert_array_equal(plain.mask, result.mask)  # the mask itself does not depend on the option
