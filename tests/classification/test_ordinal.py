"""Ordinal grades (issue 13): quadratic weighted kappa against a hand computation, order-respecting decoding, the
soft ordinal loss, manifests that declare grades (and their errors), MedMNIST's ordinal sets, and a tiny ordinal
training whose loss, class balance and decoding are chosen on validation and recorded, then evaluated with QWK,
accuracy and AUC with CIs and a confusion matrix in the card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medsight import runtime
from medsight.cli import main
from medsight.data import manifest, medmnist
from medsight.errors import MedsightError
from medsight.evaluation.metrics import bootstrap, ordinal_metrics, quadratic_kappa
from medsight.tasks.classification import ordinal, recipes
from medsight.tasks.classification.network import loss_fn
from medsight.tasks.classification.plan import ClassificationPlan
from medsight.training.bundle import load_bundle

GRADES = ["none", "mild", "severe"]


# ------------------------------------------------------------------------------------------------ metric


def test_qwk_matches_the_hand_computation() -> None:
    y, pred = np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1])
    # By hand: observed off-diagonal cells (1,2) and (2,1), weight (1/2)^2 each -> 0.5; expected matrix
    # outer([1,1,2],[1,1,2])/4 weighted by ((i-j)/2)^2 sums to 22/16; kappa = 1 - 0.5 / (22/16) = 7/11.
    assert quadratic_kappa(y, pred, 3) == pytest.approx(7 / 11)
    assert quadratic_kappa(y, y, 3) == pytest.approx(1.0)
    # a miss by two grades costs more than a miss by one
    assert quadratic_kappa(np.array([0, 0, 1, 2]), np.array([2, 0, 1, 2]), 3) < quadratic_kappa(
        np.array([0, 0, 1, 2]), np.array([1, 0, 1, 2]), 3
    )
    assert np.isnan(quadratic_kappa(np.zeros(4), np.zeros(4), 3))  # undefined: one grade only


def test_ordinal_metrics_come_with_bootstrap_cis() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 30)
    probs = rng.dirichlet(np.ones(3), len(y)) + np.eye(3)[y]
    probs /= probs.sum(1, keepdims=True)
    pred = ordinal.decode(probs, "median")
    out = bootstrap(lambda ix: ordinal_metrics(y[ix], probs[ix], pred[ix]), len(y), y, n_boot=200)
    for key in ("qwk", "accuracy", "auc", "mae"):
        low, high = out[key]["ci95"]
        assert low is not None and high is not None and low <= out[key]["value"] <= high, key
    assert out["accuracy"]["value"] == pytest.approx(np.mean(pred == y))


# ----------------------------------------------------------------------------------- decoding and loss


def test_decoding_respects_the_order_of_grades() -> None:
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(5), 500)
    # move a fraction of every grade's mass one grade up: a distribution that dominates p
    t = rng.uniform(0, 1, (500, 1))
    up = p * (1 - t)
    up[:, 1:] += (p * t)[:, :-1]
    up[:, -1] += (p * t)[:, -1]
    for method in ("median", "expected"):
        assert np.all(ordinal.decode(up, method) >= ordinal.decode(p, method)), method
    # arg-max ignores the order: mass split between the two ends decides the lower end, the median the middle
    split = np.array([[0.4, 0.2, 0.4]])
    assert ordinal.decode(split, "argmax")[0] == 0
    assert ordinal.decode(split, "median")[0] == 1 and ordinal.decode(split, "expected")[0] == 1
    with pytest.raises(MedsightError, match="unknown ordinal decoding"):
        ordinal.decode(split, "mode")


def test_decoding_is_chosen_by_validation_qwk_with_ties_to_the_simpler() -> None:
    y = np.array([0, 1, 1, 2, 2, 0])
    probs = np.array([[0.6, 0.3, 0.1], [0.4, 0.2, 0.4], [0.45, 0.1, 0.45], [0.1, 0.3, 0.6], [0.2, 0.3, 0.5]] * 1)
    probs = np.vstack([probs, [[0.7, 0.2, 0.1]]])
    chosen, scores = ordinal.choose_decoding(y, probs)
    assert scores["median"] > scores["argmax"] and chosen == "median"  # expected ties median: the simpler stays
    clear = np.eye(3)[y] * 0.9 + 0.05
    assert ordinal.choose_decoding(y, clear)[0] == "argmax"  # all equal: arg-max, the simplest


def test_soft_ordinal_loss_charges_far_misses_more() -> None:
    labels = np.array([0, 0, 1, 2])
    soft = loss_fn("multiclass", labels, loss="soft-ordinal", n_classes=3)
    plain = loss_fn("multiclass", labels)
    truth = torch.tensor([0])
    near, far = torch.tensor([[0.0, 4.0, 0.0]]), torch.tensor([[0.0, 0.0, 4.0]])
    assert soft(near, truth) < soft(far, truth)
    assert plain(near, truth) == pytest.approx(plain(far, truth).item())  # plain CE does not see the order
    targets = ordinal.soft_targets(torch.tensor([1]), 3)[0]
    assert targets.argmax() == 1 and targets.sum() == pytest.approx(1.0) and targets[0] == pytest.approx(targets[2])
    weighted = loss_fn("multiclass", labels, balanced=True, loss="soft-ordinal", n_classes=3)
    assert isinstance(weighted, ordinal.SoftOrdinalLoss) and weighted.weight is not None
    assert weighted.weight.tolist() == pytest.approx([4 / 6, 4 / 3, 4 / 3])


# ------------------------------------------------------------------------------------------ declaring grades


def _ordinal_manifest(root: Path, counts: tuple[int, ...] = (30, 18, 12), sidecar: object | None = None) -> Path:
    """Grades of brightness: a square whose intensity rises with the grade, in noise (one image per patient)."""
    rng = np.random.default_rng(5)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for grade, n in enumerate(counts):
        for i in range(n):
            img = rng.normal(50, 20, (16, 16))
            img[4:12, 4:12] += 35 * grade + rng.normal(0, 15)
            name = f"img/{grade}_{i}.png"
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / name)
            rows.append({"path": name, "label": GRADES[grade], "patient_id": f"P{grade}_{i}"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    declared = {"task": "ordinal", "labels": GRADES} if sidecar is None else sidecar
    (root / "manifest.json").write_text(json.dumps(declared))
    return root / "manifest.csv"


def test_a_manifest_declares_ordered_grades(tmp_path: Path) -> None:
    csv = _ordinal_manifest(tmp_path / "a", (6, 6, 6))
    data = manifest.load_manifest(csv)
    assert data.ordinal and data.task_type == "multiclass"
    assert data.label_names == GRADES  # the declared order, not the alphabetical one
    plain = tmp_path / "b"
    _ordinal_manifest(plain, (6, 6, 6))
    (plain / "manifest.json").unlink()
    unordered = manifest.load_manifest(plain / "manifest.csv")
    assert not unordered.ordinal and unordered.label_names == sorted(GRADES)


@pytest.mark.parametrize(
    ("sidecar", "labels", "message"),
    [
        ({"task": "ordinal", "labels": ["none", "mild"]}, None, "severe outside the declared scale"),
        ({"task": "ordinal", "labels": [*GRADES, "extreme"]}, None, "extreme of the scale occur in no row"),
        ({"task": "ordinal"}, ["0", "1", "3"], "grade(s) 2 of the scale occur in no row"),
        ({"task": "ordinal"}, ["0", "1", "-1"], "grade -1 out of range"),
        ({"task": "ordinal"}, ["0", "1", "x"], "must be integer grades"),
        ({"task": "ordinal", "labels": ["none", "severe"]}, ["none", "severe", "none"], "at least 3 grades"),
        ({"task": "regression"}, None, "unknown task 'regression'"),
        (["ordinal"], None, "must hold a JSON object"),
    ],
)
def test_bad_grades_name_the_file_and_the_problem(
    tmp_path: Path, sidecar: object, labels: list[str] | None, message: str
) -> None:
    csv = _ordinal_manifest(tmp_path, (3, 3, 3), sidecar=sidecar)
    if labels is not None:
        table = pd.read_csv(csv)
        table["label"] = [labels[i % len(labels)] for i in range(len(table))]
        table.to_csv(csv, index=False)
    with pytest.raises(MedsightError) as caught:
        manifest.load_manifest(csv)
    assert message in str(caught.value) and "manifest.json" in str(caught.value)


def test_medmnist_ordinal_regression_sets_are_ordinal(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 20), ("val", 10), ("test", 10)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 5).reshape(-1, 1)
    np.savez(tmp_path / "retinamnist.npz", **arrays)  # the catalog marks RetinaMNIST "ordinal-regression"
    data = medmnist.load_npz(tmp_path / "retinamnist.npz")
    assert data.ordinal and data.task_type == "multiclass" and data.label_names == ["0", "1", "2", "3", "4"]
    np.savez(tmp_path / "pathmnist.npz", **{k: v % 3 if "labels" in k else v for k, v in arrays.items()})
    assert not medmnist.load_npz(tmp_path / "pathmnist.npz").ordinal


# ---------------------------------------------------------------------------------------- recipe choice


def test_the_recipe_rule_picks_the_reported_metric_then_auc_then_the_simpler() -> None:
    rs = recipes.candidates(["cross-entropy"], [False, True])
    assert [r.name for r in rs] == ["cross-entropy", "class-balanced cross-entropy"]
    # balanced has the higher AUC but costs accuracy: accuracy is what is reported, plain wins
    assert recipes.choose(rs, [{"accuracy": 0.85, "auc": 0.90}, {"accuracy": 0.80, "auc": 0.95}], "accuracy") == 0
    # a tie on accuracy goes to the higher AUC, then to the simpler recipe
    assert recipes.choose(rs, [{"accuracy": 0.85, "auc": 0.90}, {"accuracy": 0.851, "auc": 0.95}], "accuracy") == 1
    assert recipes.choose(rs, [{"accuracy": 0.85, "auc": 0.9}, {"accuracy": 0.85, "auc": 0.9}], "accuracy") == 0
    assert recipes.choose(rs, [{"accuracy": float("nan"), "auc": 1.0}, {"accuracy": 0.5, "auc": 0.5}], "accuracy") == 1
    assert recipes.selection_metric("multiclass", True) == "qwk"
    assert recipes.selection_metric("binary", False) == "accuracy"


@pytest.fixture(scope="module")
def ordinal_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ordinal")
    csv = _ordinal_manifest(root / "set")  # 30/18/12: imbalanced, so class balance is decided on validation too
    bundle = root / "bundle"
    args = ["train", "--task", "classification", str(csv), "--out", str(bundle), "--epochs", "2", "--batch-size", "16"]
    assert main(args) == 0
    return csv, bundle


def test_training_chooses_loss_balance_and_decoding_on_validation(ordinal_bundle: tuple[Path, Path]) -> None:
    _, bundle_path = ordinal_bundle
    meta = load_bundle(bundle_path).meta
    selection = meta["training"]["recipe_selection"]
    names = [c["recipe"] for c in selection["candidates"]]
    singles = ["cross-entropy", "class-balanced cross-entropy", "soft-ordinal", "class-balanced soft-ordinal"]
    # every recipe alone, then the ensemble of all four (mean logits), which competes under the same rule
    assert names == [*singles, "ensemble (mean logits) of " + " + ".join(singles)]
    assert selection["decided_on"] == "val" and selection["metric"] == "qwk"
    assert all("qwk" in c and "accuracy" in c for c in selection["candidates"])
    # the kept recipe is the rule's pick from the recorded validation scores
    candidates = [recipes.Recipe(name.removeprefix("class-balanced "), "balanced" in name) for name in singles]
    best = recipes.choose([*candidates, recipes.ensemble(candidates)], selection["candidates"], "qwk")
    assert selection["chosen"] == names[best]
    plan = load_bundle(bundle_path).plan(ClassificationPlan)
    assert plan.ordinal and plan.loss == selection["loss"] and plan.balanced_loss == selection["balanced"]
    assert plan.balance_choices == [False, True] and plan.losses == ["cross-entropy", "soft-ordinal"]
    assert meta["ordinal"]["grades"] == GRADES and meta["ordinal"]["chosen_on"] == "val"
    op = meta["operating_point"]
    assert (
        op["decoding"] in ordinal.DECODINGS
        and op["chosen_on"] == "val"
        and set(op["val_qwk"]) == set(ordinal.DECODINGS)
    )
    assert meta["metrics"]["val"]["qwk"] == pytest.approx(meta["ordinal"]["val_qwk"])


def test_evaluation_reports_qwk_with_cis_and_draws_the_confusion_matrix(
    ordinal_bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    csv, bundle_path = ordinal_bundle
    out = tmp_path / "eval"
    assert (
        main(["evaluate", str(bundle_path), str(csv), "--split", "test", "--out", str(out), "--bootstrap", "50"]) == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("qwk", "accuracy", "auc", "mae"):
        assert metrics["metrics"][key]["value"] is not None and len(metrics["metrics"][key]["ci95"]) == 2, key
    assert metrics["ordinal"]["decoding"] == load_bundle(bundle_path).meta["operating_point"]["decoding"]
    card = (out / "card.html").read_text()
    assert "alt='Confusion matrix'" in card and "data:image/png;base64," in card
    assert "Training recipe (chosen on validation)" in card and "qwk" in card
    assert (out / "figures" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predictions_use_the_decoding_chosen_on_validation(ordinal_bundle: tuple[Path, Path]) -> None:
    csv, bundle_path = ordinal_bundle
    model = runtime.load(bundle_path)
    images = sorted((csv.parent / "img").glob("*.png"))[:12]
    results = model.predict(images)
    decoding = load_bundle(bundle_path).meta["operating_point"]["decoding"]
    for r in results:
        p = np.array([r.probabilities[g] for g in GRADES])  # type: ignore[attr-defined]
        assert r.decision == GRADES[int(ordinal.decode(p[None], decoding)[0])]  # type: ignore[attr-defined]


def test_recipes_compared_on_validation_share_the_time_budget() -> None:
    from medsight.data.dataset import ClassificationData, SplitData
    from medsight.tasks.classification.plan import ClassificationOptions, ClassificationPlanner

    rng = np.random.default_rng(0)
    labels = (np.arange(40) % 4 == 0).astype(np.int64)  # 1:3, imbalanced
    images = rng.random((40, 1, 16, 16)).astype(np.float32)
    data = ClassificationData("toy", "binary", ["neg", "pos"], 2, {"train": SplitData(images, labels)})

    def planner(**options: object) -> ClassificationPlanner:
        return ClassificationPlanner(data, ClassificationOptions.from_mapping(options, "classification"), "cpu")

    assert planner().determine_balance_choices() == [False, True]  # auto on imbalanced data: validation decides
    assert planner(class_balance="on").determine_balance_choices() == [True]
    assert planner(class_balance="off").determine_balance_choices() == [False]
    assert planner().determine_losses() == ["cross-entropy"]
    one = planner(time_budget_s=1200.0).determine_epochs_and_budget(60.0, 0.0)
    two = planner(time_budget_s=1200.0).determine_epochs_and_budget(60.0, 0.0, share=2)
    assert one[2] == 1200.0 and two[2] == 600.0 and two[1] == 10 and "shared by 2 models" in two[3]
    data.ordinal = True
    assert planner().determine_losses() == ["cross-entropy", "soft-ordinal"]


def test_compare_scores_each_ordinal_bundle_by_its_own_decoding(ordinal_bundle: tuple[Path, Path]) -> None:
    """``medsight feedback compare`` on ordinal bundles: accuracy from each bundle's chosen decoding (not arg-max),
    and QWK beside it."""
    from medsight.data.splits import recorded_split_seed
    from medsight.feedback.compare import compare
    from medsight.tasks.classification.data import load_like
    from medsight.tasks.classification.predict import ClassificationModel

    csv, bundle_path = ordinal_bundle
    bundle = load_bundle(bundle_path)
    result = compare(bundle_path, bundle_path, str(csv), split="test", n_boot=20)
    part = load_like(bundle, str(csv), recorded_split_seed(bundle.meta)).split("test")
    probs = ClassificationModel(bundle).probabilities(part.images)
    decided = ordinal.decode(probs, bundle.meta["operating_point"]["decoding"])
    assert result["metrics"]["accuracy"]["new"]["value"] == pytest.approx(float(np.mean(decided == part.labels)))
    assert result["metrics"]["qwk"]["new"]["value"] == pytest.approx(quadratic_kappa(part.labels, decided, len(GRADES)))
    assert result["metrics"]["qwk"]["difference"]["value"] == pytest.approx(0.0)
