"""Per-image detection uncertainty (test-time flip / contrast disagreement): the measure, the mapping of mirrored
boxes back onto the image, the ranking of bad images, and the review threshold that training decides on validation
and that evaluate and predict apply."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detection.test_detection_cli import coco_subset  # noqa: F401  (pytest fixture: 20 real COVID CXRs)
from medsight import runtime
from medsight.io.images import read_image
from medsight.tasks.detection import TASK, DetectionOptions
from medsight.tasks.detection.data import prepare
from medsight.tasks.detection.network import Detections
from medsight.tasks.detection.predict import DetectionModel, DetectionResult
from medsight.tasks.detection.test_time import FLIPPED, SINGLE, TIE, merge
from medsight.tasks.detection.uncertainty import (
    REVIEW_QUANTILE,
    choose_review_threshold,
    disagreement,
    ranking,
    second_pass,
    second_view,
    spread,
)


def _d(boxes: list[list[float]], scores: list[float], labels: list[int] | None = None) -> Detections:
    return Detections(
        np.asarray(boxes, float).reshape(-1, 4),
        np.asarray(scores, float),
        np.zeros(len(scores), int) if labels is None else np.asarray(labels, int),
    )


def test_disagreement_is_the_largest_score_change_of_a_finding() -> None:
    a = _d([[10, 10, 30, 30], [60, 60, 70, 70]], [0.9, 0.1])
    assert disagreement(a, a) == 0.0
    # the same boxes, the first scored 0.5 in the other view: the change is 0.4
    assert disagreement(a, _d([[11, 10, 31, 30], [60, 60, 70, 70]], [0.5, 0.1])) == pytest.approx(0.4)
    # the confident box moved away (IoU < 0.3): unpaired on both sides, so it counts its whole score
    assert disagreement(a, _d([[40, 40, 60, 60], [60, 60, 70, 70]], [0.9, 0.1])) == pytest.approx(0.9)
    # a low-scoring box that wanders adds at most its own score: a confident "nothing here" stays certain
    assert disagreement(_d([[0, 0, 5, 5]], [0.05]), _d([[50, 50, 55, 55]], [0.04])) == pytest.approx(0.05)
    # boxes of different classes are never paired
    assert disagreement(_d([[10, 10, 30, 30]], [0.8], [0]), _d([[10, 10, 30, 30]], [0.8], [1])) == pytest.approx(0.8)
    assert disagreement(_d([], []), _d([], [])) == 0.0


def _bright_square_detector(images: np.ndarray, scales: list[tuple[float, float]]) -> list[Detections]:
    """A stand-in detector: the bounding box of the pixels above 0.5, in the pixels of the image read."""
    out = []
    for x, (sx, sy) in zip(images, scales, strict=True):
        rows, cols = np.nonzero(x[0] > 0.5)
        box = [cols.min() / sx, rows.min() / sy, (cols.max() + 1) / sx, (rows.max() + 1) / sy]
        out.append(_d([box], [0.9]))
    return out


def test_mirrored_boxes_map_back_onto_the_image_read() -> None:
    # a 32 x 128 image (rows x cols): halved into 64 px with zero padding at the bottom, the bright box off-centre
    raw = np.zeros((1, 32, 128), np.float32)
    raw[0, 4:12, 16:48] = 1.0
    image, scale = prepare(raw, 64)
    first = _bright_square_detector(image[None], [scale])
    assert first[0].boxes[0] == pytest.approx([16, 4, 48, 12])
    u = spread(first, second_pass(_bright_square_detector, image[None], [scale], True))
    assert u.tolist() == [0.0]  # mapped back exactly: the same box, the same score
    mirrored = _bright_square_detector(second_view(image[None], True), [scale])
    assert disagreement(first[0], mirrored[0]) == pytest.approx(0.9)  # not mapped back: a different place


def test_lower_contrast_view_for_models_trained_without_flips() -> None:
    images = np.full((2, 1, 8, 8), 0.5, np.float32)
    assert np.allclose(second_view(images, False), 0.5 * 0.85)
    assert np.array_equal(second_view(images, True), images)  # a flat image is its own mirror


def test_ranking_and_the_review_threshold() -> None:
    rng = np.random.default_rng(0)
    errors = rng.integers(0, 3, 60)
    u = np.clip(0.2 * errors + rng.normal(0, 0.1, 60), 0, 1)  # uncertainty that tracks the errors
    chosen = choose_review_threshold(u, errors, flip=True)
    assert chosen["threshold"] == pytest.approx(float(np.quantile(u, REVIEW_QUANTILE)))
    assert chosen["decided_on"] == "60 validation image(s)" and "flip" in chosen["method"]
    assert chosen["validation"]["n_flagged"] == int(np.sum(u > chosen["threshold"]))
    r = ranking(u, errors, chosen["threshold"], n_boot=200)
    rho = r["spearman_uncertainty_vs_errors"]
    assert rho["value"] > 0.5 and 0 < rho["ci95"][0] <= rho["value"] <= rho["ci95"][1]
    assert r["error_rate_flagged"]["value"] > r["error_rate_unflagged"]["value"]
    # uncertainty unrelated to the errors: rho near 0, its CI spans 0
    flat = ranking(rng.uniform(0, 1, 60), errors, None, n_boot=200)
    lo, hi = flat["spearman_uncertainty_vs_errors"]["ci95"]
    assert lo < 0 < hi and flat["n_flagged"] is None
    assert flat["error_rate_flagged"]["undefined"] == "the bundle has no review threshold"
    # constant errors: rho is undefined, and says why
    assert ranking(u, np.zeros(60), None, n_boot=0)["spearman_uncertainty_vs_errors"]["value"] is None


@pytest.fixture(scope="module")
def mias_subset(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """32 mini-MIAS images (16 women, both breasts), about half with lesions, as a mini-MIAS folder."""
    src = shared_data / "mini_mias"
    lines = (src / "Info.txt").read_text(errors="replace").splitlines()
    rows = [line for line in lines if line.startswith("mdb")]
    abnormal = sorted({r.split()[0] for r in rows if " NORM" not in r and len(r.split()) >= 7})
    women = sorted({(int(ref[3:]) + 1) // 2 for ref in abnormal})[:10]
    women += [w for w in range(1, 80) if w not in women][: 16 - len(women)]
    keep = {f"mdb{n:03d}" for w in women for n in (2 * w - 1, 2 * w)}
    folder = tmp_path_factory.mktemp("mias")
    (folder / "Info.txt").write_text("\n".join(r for r in rows if r.split()[0] in keep) + "\n")
    (folder / "images_512").mkdir()
    for ref in keep:
        (folder / "images_512" / f"{ref}.png").symlink_to(src / "images_512" / f"{ref}.png")
    return folder


def test_lesion_bundle_records_flags_and_reports_uncertainty(mias_subset: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    meta = TASK.train(str(mias_subset), bundle, DetectionOptions(epochs=1, image_size=64, batch_size=8))
    unc = json.loads((bundle / "bundle.json").read_text())["uncertainty"]
    assert unc == meta["uncertainty"] and "horizontal flip" in unc["method"]
    assert unc["decided_on"] == f"{meta['data']['n']['val']} validation image(s)"
    assert 0.0 <= unc["threshold"] <= 1.0
    # the test-time flip was decided on validation by the epoch-selection metric (CPM), a tie keeping one pass
    flip = meta["test_time_flip"]
    assert flip["decided_on"] == "val" and [c["views"] for c in flip["candidates"]] == [SINGLE, FLIPPED]
    assert flip["kept"] == (flip["candidates"][1]["cpm"] > flip["candidates"][0]["cpm"] + TIE)

    ev = TASK.evaluate(bundle, str(mias_subset), "test", tmp_path / "eval", 30)
    assert ev["test_time_flip"] == flip and "test-time flip" in (tmp_path / "eval" / "card.html").read_text()
    rep = ev["uncertainty"]
    assert rep["threshold"] == unc["threshold"] and rep["n"] == ev["n"]
    assert set(rep["spearman_uncertainty_vs_errors"]) >= {"value", "ci95"}
    per = json.loads((tmp_path / "eval" / "detections.json").read_text())
    assert [p["flag_for_review"] for p in per] == [p["uncertainty"] > unc["threshold"] for p in per]
    assert rep["n_flagged"] == sum(p["flag_for_review"] for p in per)
    assert rep["n_with_errors"] == sum(p["errors"] > 0 for p in per)
    assert "Uncertainty" in (tmp_path / "eval" / "card.html").read_text()

    model = runtime.load(bundle)
    image = mias_subset / "images_512" / f"{per[0]['key']}.png"
    (result,) = model.predict([image])
    assert isinstance(result, DetectionResult)
    assert result.uncertainty == pytest.approx(per[0]["uncertainty"], abs=1e-6)
    entry = result.to_json()
    assert entry["uncertainty"] == result.uncertainty and entry["flag_for_review"] == per[0]["flag_for_review"]

    # a bundle that keeps the flip reports the merged findings of both views; the uncertainty does not change
    path = bundle / "bundle.json"
    edited = json.loads(path.read_text())
    edited["test_time_flip"] = {**flip, "kept": True, "views": FLIPPED, "forward_passes_per_image": 2}
    path.write_text(json.dumps(edited))
    flipped = runtime.load(bundle)
    assert isinstance(flipped, DetectionModel) and flipped.flip_merged
    x, scale = prepare(read_image(image), flipped.plan.image_size)
    images, scales = x[None], [scale]
    dets, spread = flipped.findings(images, scales)
    second = second_pass(flipped.detect, images, scales, True)
    expected = merge(flipped.detect(images, scales)[0], second[0])
    assert dets[0].scores == pytest.approx(expected.scores) and dets[0].boxes == pytest.approx(expected.boxes)
    assert spread[0] == pytest.approx(result.uncertainty, abs=1e-6)
    (merged_result,) = flipped.predict([image])
    assert [f.score for f in merged_result.findings] == [  # type: ignore[attr-defined]
        round(float(s), 4) for s in expected.scores if s >= flipped.threshold
    ]


def test_object_bundle_uses_the_contrast_view_and_old_bundles_do_not_flag(
    coco_subset: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "bundle"
    meta = TASK.train(str(coco_subset), bundle, DetectionOptions(epochs=1, image_size=64, batch_size=8))
    assert "contrast" in meta["uncertainty"]["method"]  # lungs are lateral: never mirrored
    assert meta["test_time_flip"]["kept"] is False and meta["test_time_flip"]["decided_on"] == "plan"
    image = Path(json.loads((coco_subset / "annotations.json").read_text())["images"][0]["file_name"])
    (result,) = runtime.load(bundle).predict([image])
    assert isinstance(result, DetectionResult) and 0.0 <= result.uncertainty <= 1.0  # type: ignore[operator]
    assert result.to_json()["flag_for_review"] == (result.uncertainty > meta["uncertainty"]["threshold"])
    # a bundle trained before the review threshold existed: uncertainty still given, no flag decided
    path = bundle / "bundle.json"
    old = json.loads(path.read_text())
    old.pop("uncertainty")
    old.pop("test_time_flip")  # nor had it decided on a test-time flip: one pass
    path.write_text(json.dumps(old))
    (again,) = runtime.load(bundle).predict([image])
    assert again.to_json()["flag_for_review"] is None and again.to_json()["uncertainty"] == result.uncertainty
