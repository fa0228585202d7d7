"""The ensemble of the recipes a run trains (mean logits): it competes on validation as one more candidate, and
a bundle holding one predicts, explains, evaluates and fine-tunes like any other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medsight.cli import main
from medsight.tasks.classification import recipes
from medsight.tasks.classification.network import (
    LOGIT_AVERAGE,
    LogitAverage,
    explain,
    members,
    plan_network,
    sanity_layers,
)
from medsight.training.bundle import load_bundle

TRAIN = ["-q", "train", "--task", "classification"]


def test_the_ensemble_averages_its_members_logits() -> None:
    torch.manual_seed(0)
    kwargs = plan_network(2, [28, 28], 1, 2)
    model = LogitAverage(kwargs, 3).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected = torch.stack([m(x) for m in model.members]).mean(dim=0)
        assert torch.allclose(model(x), expected)
        assert not torch.allclose(model.members[0](x), model.members[1](x))  # members differ: a real average
    with pytest.raises(ValueError, match="at least 2"):
        LogitAverage(kwargs, 1)


def test_the_ensembles_explanation_is_the_mean_of_its_members_and_the_check_reaches_every_member() -> None:
    torch.manual_seed(0)
    model = LogitAverage(plan_network(2, [28, 28], 1, 2), 2).eval()
    images = np.random.default_rng(0).random((2, 1, 28, 28)).astype(np.float32)
    signed = explain(model, images, [1, 1], signed=True)
    each = [explain(m, images, [1, 1], signed=True) for m in members(model)]
    assert np.allclose(signed, np.mean(each, axis=0), atol=1e-6)
    shown = explain(model, images, [1, 1])
    assert shown.shape == (2, 28, 28) and shown.min() >= 0 and shown.max() <= 1
    layers = sanity_layers(model)
    assert layers[:2] == ["members.0.fc", "members.1.fc"]
    assert {name.split(".")[1] for name in layers} == {"0", "1"} and len(layers) == len(set(layers)) == 2 * len(
        sanity_layers(model.members[0])
    )


def test_the_ensemble_is_listed_last_so_a_tie_keeps_the_simpler_recipe() -> None:
    plain, balanced = recipes.candidates(["cross-entropy"], [False, True])
    both = recipes.ensemble([plain, balanced])
    assert both.name == "ensemble (mean logits) of cross-entropy + class-balanced cross-entropy"
    assert (both.loss, both.balanced) == ("cross-entropy", False)
    tie = [{"accuracy": 0.9, "auc": 0.95}] * 3
    assert recipes.choose([plain, balanced, both], tie, "accuracy") == 0
    better = [{"accuracy": 0.9, "auc": 0.95}, {"accuracy": 0.9, "auc": 0.95}, {"accuracy": 0.92, "auc": 0.9}]
    assert recipes.choose([plain, balanced, both], better, "accuracy") == 2
    record = recipes.record([plain, balanced, both], better, "accuracy", 2, "auto")
    assert record["ensemble"] == ["cross-entropy", "class-balanced cross-entropy"]
    assert recipes.record([plain, balanced, both], better, "accuracy", 0, "auto")["ensemble"] is None
    with pytest.raises(ValueError):
        recipes.ensemble([plain])


@pytest.fixture(scope="module")
def ensemble_bundle(tmp_path_factory: pytest.TempPathFactory, square_manifest: Path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ensemble")
    csv = square_manifest
    out = root / "bundle"
    args = [*TRAIN, str(csv), "--out", str(out), "--epochs", "2", "--batch-size", "16", "--positive", "square"]
    assert main([*args, "--ensemble", "on", "--tta", "off"]) == 0
    return csv, out


def test_an_ensemble_bundle_records_its_members_and_its_onnx_matches_torch(
    ensemble_bundle: tuple[Path, Path],
) -> None:
    _, path = ensemble_bundle
    bundle = load_bundle(path)
    meta = bundle.meta
    assert meta["network"]["name"] == LOGIT_AVERAGE and meta["network"]["kwargs"]["n_members"] == 2
    model = bundle.network()
    assert isinstance(model, LogitAverage)
    assert meta["network"]["parameters"] == sum(p.numel() for p in model.parameters())
    selection = meta["training"]["recipe_selection"]
    assert [c["recipe"] for c in selection["candidates"]] == [
        "cross-entropy",
        "class-balanced cross-entropy",
        "ensemble (mean logits) of cross-entropy + class-balanced cross-entropy",
    ]
    assert selection["chosen"] == selection["candidates"][2]["recipe"] and "as asked" in selection["rule"]
    assert [m["recipe"] for m in meta["training"]["ensemble_members"]] == selection["ensemble"]
    assert meta["training"]["loss"] == selection["chosen"]
    # the members are the recipes' own models: they were trained apart and differ
    a, b = (dict(m.named_parameters()) for m in model.members)
    assert not torch.allclose(a["fc.weight"], b["fc.weight"])
    import onnxruntime

    x = np.random.default_rng(1).random((3, 1, 32, 32)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        assert np.allclose(onnx_out, model(torch.as_tensor(x)).numpy(), atol=1e-4)


def test_an_ensemble_bundle_predicts_explains_and_evaluates(ensemble_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    csv, path = ensemble_bundle
    image = csv.parent / "img" / "0.png"
    assert main(["-q", "predict", str(path), str(image), "--explain", "--out", str(tmp_path / "p")]) == 0
    pred = json.loads((tmp_path / "p" / "predictions.json").read_text())["predictions"][0]
    assert sum(pred["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    heat = np.load(tmp_path / "p" / pred["heatmap"]["array"])
    assert heat.shape == (32, 32) and heat.max() <= 1 and heat.min() >= 0
    assert main(["-q", "evaluate", str(path), str(csv), "--out", str(tmp_path / "e"), "--bootstrap", "50"]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    explanations = metrics["explanations"]
    assert "mean over the ensemble's members" in explanations["method"]
    layers = explanations["sanity_check"]["layers"]
    assert layers[:2] == ["members.0.fc", "members.1.fc"] and len(layers) % 2 == 0
    card = (tmp_path / "e" / "card.html").read_text()
    assert "ensemble (mean logits)" in card and "Member class-balanced cross-entropy" in card


def test_fine_tuning_an_ensemble_keeps_it_and_starts_from_its_weights(
    ensemble_bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    csv, parent = ensemble_bundle
    out = tmp_path / "child"
    args = [*TRAIN, str(csv), "--out", str(out), "--epochs", "1", "--lr", "1e-9", "--batch-size", "16"]
    assert main([*args, "--init", str(parent)]) == 0
    child = load_bundle(out)
    assert child.meta["network"] == {**load_bundle(parent).meta["network"]}
    assert "ensemble" not in [c["recipe"][:8] for c in child.meta["training"]["recipe_selection"]["candidates"]]
    theirs, mine = load_bundle(parent).network(), child.network()
    for (name, a), (_, b) in zip(theirs.named_parameters(), mine.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name


def test_ensemble_off_builds_none_and_auto_lets_validation_decide(
    ensemble_bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    csv, _ = ensemble_bundle
    base = [*TRAIN, str(csv), "--epochs", "1", "--batch-size", "16", "--positive", "square"]
    assert main([*base, "--out", str(tmp_path / "off"), "--ensemble", "off"]) == 0
    off = load_bundle(tmp_path / "off").meta
    assert len(off["training"]["recipe_selection"]["candidates"]) == 2 and off["network"]["name"] != LOGIT_AVERAGE
    assert main([*base, "--out", str(tmp_path / "auto")]) == 0
    auto = load_bundle(tmp_path / "auto").meta["training"]["recipe_selection"]
    assert len(auto["candidates"]) == 3
    scores = auto["candidates"]
    kept = recipes.choose(
        [recipes.Recipe("cross-entropy", False), recipes.Recipe("cross-entropy", True), recipes.Recipe("x", False)],
        scores,
        auto["metric"],
    )
    assert auto["chosen"] == scores[kept]["recipe"]


def test_a_hand_edited_ensemble_that_cannot_be_built_is_a_clear_bundle_error(
    ensemble_bundle: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from medsight.errors import MedsightError

    csv, path = ensemble_bundle
    edited = tmp_path / "edited"
    shutil.copytree(path, edited)
    meta = json.loads((edited / "bundle.json").read_text())
    meta["network"]["kwargs"]["n_members"] = 1
    (edited / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(MedsightError, match="an ensemble needs at least 2 members") as info:
        load_bundle(edited).network()
    assert str(edited / "bundle.json") in str(info.value) and "cannot be built" in str(info.value)
    image = csv.parent / "img" / "0.png"
    assert main(["-q", "predict", str(edited), str(image), "--explain", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "an ensemble needs at least 2 members" in err and "Traceback" not in err


def test_seed_members_are_named_seeded_apart_and_only_join_the_ensemble() -> None:
    compared = recipes.candidates(["cross-entropy"], [False, True])
    extra = recipes.seed_members(compared, 3)
    assert [r.name for r in extra] == [
        "cross-entropy, seed member 2",
        "class-balanced cross-entropy, seed member 2",
        "cross-entropy, seed member 3",
        "class-balanced cross-entropy, seed member 3",
    ]
    assert recipes.seed_members(compared, 1) == []
    assert [recipes.seed_of(r, 7) for r in [compared[0], *extra]] == [7, 1007, 1007, 2007, 2007]


def test_a_run_with_seed_members_ensembles_every_model_and_compares_only_the_recipes(
    square_manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    args = [*TRAIN, str(square_manifest), "--out", str(out), "--epochs", "1", "--batch-size", "16"]
    assert main([*args, "--positive", "square", "--seed-members", "2", "--ensemble", "on", "--tta", "off"]) == 0
    meta = load_bundle(out).meta
    assert meta["plan"]["seed_members"] == 2 and meta["network"]["kwargs"]["n_members"] == 4
    names = [
        "cross-entropy",
        "class-balanced cross-entropy",
        "cross-entropy, seed member 2",
        "class-balanced cross-entropy, seed member 2",
    ]
    selection = meta["training"]["recipe_selection"]
    assert [c["recipe"] for c in selection["candidates"]] == [
        *names[:2],
        "ensemble (mean logits) of " + " + ".join(names),
    ]
    assert selection["ensemble"] == names == [m["recipe"] for m in meta["training"]["ensemble_members"]]
    model = load_bundle(out).network()
    plain, plain_again = (dict(model.members[i].named_parameters())["fc.weight"] for i in (0, 2))
    assert not torch.allclose(plain, plain_again)  # the same recipe from another seed is another model
