"""Multi-label deferral wired through train, predict and evaluate (issue 9 §4): the per-label conformal rule is fitted
on validation and stored in the bundle, predict marks cases with an uncertain label "defer to radiologist" naming the
labels, evaluate reports the coverage per label and of whole cases, and a bundle trained before it still predicts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medsight import runtime
from medsight.cli import main
from medsight.data.splits import recorded_split_seed
from medsight.evaluation import conformal, selective
from medsight.evaluation.conformal import MultilabelConformal, certain, label_coverage
from medsight.evaluation.selective import REASON_LABEL_BOTH, REASON_LABEL_NEITHER, MultilabelSelective
from medsight.tasks.classification.data import load_like
from medsight.tasks.classification.predict import MULTILABEL_NO_RULE, ClassificationResult
from medsight.training.bundle import load_bundle

LABELS = ["bar", "square"]


def _manifest(root: Path) -> Path:
    """90 train / 46 val / 44 test images: a faint square, a faint bar, both or neither, noisy enough to leave
    doubt; two images per patient so that validation patients are the calibration units."""
    rng = np.random.default_rng(5)
    (root / "img").mkdir(parents=True)
    kinds = ["square", "bar", "square|bar", "|"]  # "|" is a multi-label row with no label present
    rows = []
    for i in range(180):
        kind = kinds[(i // 2) % 4]
        img = rng.normal(60, 25, (24, 24))
        if "square" in kind:
            img[3:10, 3:10] += 40
        if "bar" in kind:
            img[16:20, :] += 40
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / "img" / f"{i}.png")
        split = "train" if i < 90 else ("val" if i < 136 else "test")  # a patient's two images stay together
        rows.append({"path": f"img/{i}.png", "label": kind, "patient_id": f"P{i // 2}", "split": split})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ml_deferral")
    csv = _manifest(root / "set")
    bundle = root / "bundle"
    args = ["train", "--task", "classification", str(csv), "--out", str(bundle), "--epochs", "2"]
    assert main([*args, "--batch-size", "16", "--alpha", "0.2"]) == 0
    return csv, bundle


def _copy(bundle: Path, to: Path) -> Path:
    shutil.copytree(bundle, to)
    return to


def _edit(bundle: Path, edit: dict[str, object]) -> None:
    meta = json.loads((bundle / "bundle.json").read_text())
    sp = meta["selective_prediction"]
    sp["conformal"] |= edit
    (bundle / "bundle.json").write_text(json.dumps(meta))


def test_the_bundle_holds_the_per_label_thresholds_fitted_on_validation(trained: tuple[Path, Path]) -> None:
    csv, bundle_path = trained
    bundle = load_bundle(bundle_path)
    assert bundle.meta["task_type"] == "multilabel" and bundle.label_names == LABELS
    stored = bundle.meta["selective_prediction"]
    assert stored["kind"] == "multilabel" and stored["deferral"]["chosen_on"] == "val"
    cp = stored["conformal"]
    assert cp["fitted_on"] == "val" and cp["alpha"] == 0.2 and cp["coverage_is"] == "per label"
    assert len(cp["quantiles"]) == len(LABELS)
    # calibrated on the validation patients (two images each), and the same thresholds a refit on them gives
    val = load_like(bundle, str(csv), seed=recorded_split_seed(bundle.meta)).split("val")
    assert val.patient_ids is not None
    assert cp["calibration_unit"].startswith("patient") and cp["n_calibration"] == len(set(val.patient_ids)) == 23
    model = runtime.load(bundle)
    probs = model.probabilities(val.images)  # type: ignore[attr-defined]
    refit = MultilabelConformal(0.2).fit(probs, val.labels, groups=np.asarray(val.patient_ids))
    assert cp["quantiles"] == pytest.approx(refit.to_json()["quantiles"], abs=1e-5)


def test_predict_defers_uncertain_cases_naming_the_labels(trained: tuple[Path, Path], tmp_path: Path) -> None:
    csv, bundle_path = trained
    images = [csv.parent / "img" / f"{i}.png" for i in range(135, 180)]
    assert main(["predict", str(bundle_path), *map(str, images), "--out", str(tmp_path / "p")]) == 0
    entries = json.loads((tmp_path / "p" / "predictions.json").read_text())["predictions"]
    assert len(entries) == len(images)
    for e in entries:
        sets = e["label_sets"]
        assert sorted(sets["present"] + sets["absent"] + sets["uncertain"]) == LABELS
        assert e["prediction_set"] == sets["present"] and e["coverage_target"] == pytest.approx(0.8)
        assert isinstance(e["defer_to_radiologist"], bool)
        assert (e["defer_reason"] is None) == (not e["defer_to_radiologist"])
        for label in sets["uncertain"]:  # every uncertain label defers the case and is named in the reason
            assert e["defer_to_radiologist"] and f"{label}: " in e["defer_reason"]
        if e["defer_to_radiologist"]:
            assert "defer to radiologist" in e["summary"]

    # thresholds that leave "bar" certain (0.5: absent below, present above) and both answers plausible for
    # "square" (1.0): every case deferred, naming "square" as uncertain
    both = _copy(bundle_path, tmp_path / "both")
    _edit(both, {"quantiles": [0.5, 1.0]})
    results = runtime.load(both).predict(images[:5])
    for r in results:
        assert isinstance(r, ClassificationResult) and r.deferral is not None and r.label_sets is not None
        assert r.deferral.defer_to_radiologist and f"square: {REASON_LABEL_BOTH}" in r.deferral.reasons
        assert r.label_sets["uncertain"] == ["square"] and "square" not in r.deferral.prediction_set
        assert "uncertain: square" in r.summary()

    # thresholds of 0: neither answer probable enough for any label
    neither = _copy(bundle_path, tmp_path / "neither")
    _edit(neither, {"quantiles": [0.0, 0.0]})
    (r,) = runtime.load(neither).predict(images[:1])
    assert r.deferral is not None and r.deferral.reasons == [f"{n}: {REASON_LABEL_NEITHER}" for n in LABELS]
    assert r.to_json()["label_sets"] == {"present": [], "absent": [], "uncertain": LABELS}


def test_evaluate_reports_coverage_per_label_without_refitting(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv, bundle_path = trained

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a conformal threshold was fitted during evaluation")

    monkeypatch.setattr(MultilabelConformal, "fit", refuse)
    monkeypatch.setattr(conformal, "conformal_quantile", refuse)
    out = tmp_path / "eval"
    args = ["evaluate", str(bundle_path), str(csv), "--split", "test", "--out", str(out), "--bootstrap", "50"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    sp = metrics["selective_prediction"]
    bundle = load_bundle(bundle_path)
    assert sp["rule"] == bundle.meta["selective_prediction"] and sp["n"] == metrics["n"] == 44

    # the reported coverage is what the stored rule's sets give on the test cases
    test = load_like(bundle, str(csv), seed=recorded_split_seed(bundle.meta)).split("test")
    model = runtime.load(bundle)
    probs = model.probabilities(test.images)  # type: ignore[attr-defined]
    rule = MultilabelSelective.from_json(bundle.meta["selective_prediction"])
    sets = rule.conformal.predict_sets(probs)
    per_label = label_coverage(sets, test.labels)
    assert set(sp["coverage_per_label"]) == set(LABELS)
    for k, name in enumerate(LABELS):
        c = sp["coverage_per_label"][name]
        assert c["value"] == pytest.approx(per_label[k]) and c["ci95"][0] <= c["value"] <= c["ci95"][1]
    y = test.labels.astype(int)
    every = np.take_along_axis(sets, y[..., None], axis=-1)[..., 0].all(axis=1).mean()
    m = sp["metrics"]
    assert m["coverage"]["value"] == pytest.approx(every)
    assert sp["uncertain_per_label"] == {n: int((~certain(sets))[:, k].sum()) for k, n in enumerate(LABELS)}
    for key in ("share_deferred", "error_kept", "error_deferred", "error_all", "mean_uncertain_labels"):
        assert key in m
    assert m["share_deferred"]["value"] == pytest.approx(sp["deferred"] / sp["n"])
    rc = sp["risk_coverage"]
    assert rc["coverage"][-1] == 1.0 and np.all(np.diff(rc["coverage"]) > 0)
    assert rc["risk"][-1] == pytest.approx(m["error_all"]["value"])
    card = (out / "card.html").read_text()
    assert "Uncertainty and deferral" in card and "empirical coverage: square" in card
    assert "every label of a case" in card and "alt='Risk-coverage'" in card
    assert (out / "figures" / "risk_coverage.png").is_file()


def test_a_bundle_without_the_rule_still_predicts_and_says_so(trained: tuple[Path, Path], tmp_path: Path) -> None:
    csv, bundle_path = trained
    older = _copy(bundle_path, tmp_path / "older")
    meta = json.loads((older / "bundle.json").read_text())
    del meta["selective_prediction"]
    (older / "bundle.json").write_text(json.dumps(meta))
    image = csv.parent / "img" / "140.png"
    assert main(["predict", str(older), str(image), "--out", str(tmp_path / "p")]) == 0
    entry = json.loads((tmp_path / "p" / "predictions.json").read_text())["predictions"][0]
    assert isinstance(entry["decision"], list) and set(entry["probabilities"]) == set(LABELS)
    assert entry["prediction_set"] is None and entry["defer_to_radiologist"] is None
    assert entry["defer_reason"] == MULTILABEL_NO_RULE and "label_sets" not in entry
    out = tmp_path / "eval"
    assert main(["evaluate", str(older), str(csv), "--split", "test", "--out", str(out), "--bootstrap", "20"]) == 0
    assert "selective_prediction" not in json.loads((out / "metrics.json").read_text())
    assert "trained before conformal prediction" in (out / "card.html").read_text()


def test_a_certain_answer_against_the_decision_defers() -> None:
    """Where a label's threshold at the operating point lies outside its conformal band, a certain answer can differ
    from the decision: that case goes to the radiologist too, naming the label."""
    rule = MultilabelConformal(0.2).fit(np.array([[0.1, 0.9], [0.9, 0.1]] * 10), np.array([[0, 1], [1, 0]] * 10))
    probs = np.array([[0.05, 0.95]])
    a = selective.assess_multilabel(rule, probs, LABELS, decided=np.array([[True, True]]))
    assert a.present.tolist() == [[False, True]] and a.defer.tolist() == [True]
    assert a.reasons == [[f"bar: {selective.REASON_LABEL_DISAGREES}"]]
    assert selective.assess_multilabel(rule, probs, LABELS, decided=np.array([[False, True]])).reasons == [[]]
