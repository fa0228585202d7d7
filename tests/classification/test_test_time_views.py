"""Test-time augmentation (the mean logits of the image, its mirror where the modality allows one, and shifts by a
few pixels): decided on validation, kept in the bundle as one network, and used alike by ONNX, predict, evaluate and
fine-tuning."""

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
    NETWORK,
    VIEW_AVERAGE,
    ViewAverage,
    ensemble_spec,
    explain,
    members,
    plan_network,
    sanity_layers,
    view_candidates,
    view_names,
)
from medsight.training.bundle import load_bundle

TRAIN = ["-q", "train", "--task", "classification"]


def test_the_views_are_the_image_its_mirror_and_shifts_that_repeat_the_edge() -> None:
    torch.manual_seed(0)
    model = ViewAverage({"name": NETWORK, "kwargs": plan_network(2, [8, 8], 1, 2)}, flip=True, shift=1).eval()
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    image, mirror, down, up, right, left = (v[0, 0].tolist() for v in model.views(x))
    assert image == x[0, 0].tolist()
    assert mirror[0] == [3, 2, 1, 0]
    assert down[:2] == [[0, 1, 2, 3], [0, 1, 2, 3]] and down[3] == [8, 9, 10, 11]
    assert up[0] == [4, 5, 6, 7] and up[3] == [12, 13, 14, 15]
    assert right[0] == [0, 0, 1, 2] and left[0] == [1, 2, 3, 3]
    assert view_names(model) == [
        "image",
        "left-right mirror",
        "shift y +1 px",
        "shift y -1 px",
        "shift x +1 px",
        "shift x -1 px",
    ]
    # the output is the mean of the network's logits over the views, image by image
    batch = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        expected = torch.stack([model.model(v) for v in model.views(batch)]).mean(dim=0)
        assert torch.allclose(model(batch), expected, atol=1e-5)
        assert not torch.allclose(model(batch), model.model(batch))
    with pytest.raises(ValueError, match="mirror or a shift"):
        ViewAverage({"name": NETWORK, "kwargs": plan_network(2, [8, 8], 1, 2)}, flip=False, shift=0)


def test_the_views_follow_the_modality_and_size_and_wrap_an_ensemble() -> None:
    # training flips ultrasound but not chest X-rays (medsight.transforms.FLIP_OK): test time does the same
    assert view_candidates("ultrasound", [28, 28]) == [{"flip": True, "shift": 0}, {"flip": True, "shift": 1}]
    assert view_candidates("xray", [224, 224]) == [{"flip": False, "shift": 9}]
    member = plan_network(2, [28, 28], 1, 2)
    model = ViewAverage(ensemble_spec(member, 2), flip=False, shift=1).eval()
    assert len(members(model)) == 2 and view_names(model)[1:2] == ["shift y +1 px"]
    layers = sanity_layers(model)
    assert layers[:2] == ["model.members.0.fc", "model.members.1.fc"]
    assert all(model.get_submodule(name) is not None for name in layers)
    # the explanation is the un-augmented view's: the wrapped ensemble's own map
    images = np.random.default_rng(0).random((2, 1, 28, 28)).astype(np.float32)
    assert np.allclose(explain(model, images, [1, 1], signed=True), explain(model.model, images, [1, 1], signed=True))
    with pytest.raises(ValueError, match="wraps"):
        ViewAverage({"name": "torch.nn.Identity", "kwargs": {}}, flip=True, shift=1)


@pytest.fixture(scope="module")
def views_bundle(tmp_path_factory: pytest.TempPathFactory, square_manifest: Path) -> Path:
    out = tmp_path_factory.mktemp("views") / "bundle"
    args = [*TRAIN, str(square_manifest), "--out", str(out), "--epochs", "2", "--batch-size", "16"]
    assert main([*args, "--positive", "square", "--ensemble", "off", "--tta", "on"]) == 0
    return out


def test_a_bundle_with_test_time_views_records_them_and_its_onnx_matches_torch(views_bundle: Path) -> None:
    bundle = load_bundle(views_bundle)
    meta = bundle.meta
    assert meta["network"]["name"] == VIEW_AVERAGE
    kwargs = meta["network"]["kwargs"]
    # a manifest without a modality is not mirrored (only modalities training flips are); shifts of 4% of 32 px
    assert kwargs["flip"] is False and kwargs["shift"] == 1 and kwargs["network"]["name"] == NETWORK
    model = bundle.network()
    assert isinstance(model, ViewAverage)
    assert meta["network"]["parameters"] == sum(p.numel() for p in model.parameters())
    views = meta["training"]["test_time_views"]
    assert views["views"] == view_names(model) and len(views["views"]) == 5
    assert views["decided_on"].endswith("(--tta on)")
    assert [len(c["views"]) for c in views["candidates"]] == [1, 5] and views["forward_passes_per_image"] == 5
    # the calibration and the validation scores recorded are the averaged model's
    assert meta["metrics"]["val"]["auc"] == pytest.approx(views["candidates"][1]["auc"], abs=1e-4)
    import onnxruntime

    x = np.random.default_rng(1).random((3, 1, 32, 32)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        assert np.allclose(onnx_out, model(torch.as_tensor(x)).numpy(), atol=1e-4)
        assert not np.allclose(onnx_out, model.model(torch.as_tensor(x)).numpy(), atol=1e-4)


def test_a_bundle_with_test_time_views_predicts_explains_and_evaluates(
    views_bundle: Path, square_manifest: Path, tmp_path: Path
) -> None:
    data = square_manifest
    image = data.parent / "img" / "0.png"
    assert main(["-q", "predict", str(views_bundle), str(image), "--explain", "--out", str(tmp_path / "p")]) == 0
    pred = json.loads((tmp_path / "p" / "predictions.json").read_text())["predictions"][0]
    assert sum(pred["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    heat = np.load(tmp_path / "p" / pred["heatmap"]["array"])
    assert heat.shape == (32, 32) and heat.max() <= 1 and heat.min() >= 0
    evaluate = ["-q", "evaluate", str(views_bundle), str(data), "--out", str(tmp_path / "e"), "--bootstrap", "50"]
    assert main(evaluate) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    explanations = metrics["explanations"]
    assert "of the un-augmented view" in explanations["method"]
    assert explanations["sanity_check"]["layers"][0] == "model.fc"
    card = (tmp_path / "e" / "card.html").read_text()
    assert "Test-time augmentation kept (val, among the sets of views (--tta on)): the mean logits over image, " in card
    assert "shift x -1 px, 5 forward passes per image" in card and "5 test-time views" in card


def test_fine_tuning_keeps_the_parents_views_and_starts_from_its_weights(
    views_bundle: Path, square_manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "child"
    args = [*TRAIN, str(square_manifest), "--out", str(out), "--epochs", "1", "--lr", "1e-9", "--batch-size", "16"]
    assert main([*args, "--init", str(views_bundle)]) == 0
    child = load_bundle(out)
    assert child.meta["network"] == load_bundle(views_bundle).meta["network"]
    assert child.meta["training"]["test_time_views"]["decided_on"].startswith("the parent bundle's")
    theirs, mine = load_bundle(views_bundle).network(), child.network()
    for (name, a), (_, b) in zip(theirs.named_parameters(), mine.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name


def test_tta_off_uses_one_view_and_auto_lets_validation_decide(square_manifest: Path, tmp_path: Path) -> None:
    base = [*TRAIN, str(square_manifest), "--epochs", "1", "--batch-size", "16", "--positive", "square"]
    assert main([*base, "--out", str(tmp_path / "off"), "--tta", "off"]) == 0
    off = load_bundle(tmp_path / "off").meta
    assert off["network"]["name"] in (NETWORK, LOGIT_AVERAGE)
    assert off["training"]["test_time_views"] == {"views": ["image"], "decided_on": "none (--tta off)"}
    assert main([*base, "--out", str(tmp_path / "auto")]) == 0
    auto = load_bundle(tmp_path / "auto").meta
    views = auto["training"]["test_time_views"]
    assert views["decided_on"] == "val"
    # the record agrees with the rule applied to the validation scores it lists
    metric = auto["training"]["recipe_selection"]["metric"]
    assert [len(c["views"]) for c in views["candidates"]] == [1, 5]
    kept = recipes.choose([recipes.Recipe("x", False)] * 2, views["candidates"], metric)
    assert views["views"] == views["candidates"][kept]["views"]
    assert (auto["network"]["name"] == VIEW_AVERAGE) == (kept == 1)


def test_tta_takes_only_auto_on_or_off(square_manifest: Path, tmp_path: Path) -> None:
    from medsight.errors import MedsightError
    from medsight.tasks.classification.plan import ClassificationOptions

    with pytest.raises(MedsightError, match="--tta must be auto, on or off"):
        ClassificationOptions(tta="sometimes")  # type: ignore[arg-type]
    with pytest.raises(SystemExit):
        main([*TRAIN, str(square_manifest), "--out", str(tmp_path / "x"), "--tta", "maybe"])
    assert not (tmp_path / "x").exists()
