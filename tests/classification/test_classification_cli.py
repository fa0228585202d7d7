"""Classification end to end through the CLI: train → evaluate → predict, in 2D and 3D, and failure modes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from medsight.cli import main
from medsight.training.bundle import load_bundle

#: --task is given so these tests do not depend on the other tasks' recognisers (which claim their own data
#: first); classification is what every source here would be detected as.
TRAIN = ["train", "--task", "classification"]
METRIC_KEYS = {"auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "brier", "ece"}


@pytest.fixture(scope="module")
def breast_bundle(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    out = tmp_path_factory.mktemp("breast") / "bundle"
    assert main([*TRAIN, "medmnist:breastmnist", "--out", str(out), "--seed", "0", "--epochs", "3"]) == 0
    return out


def test_bundle_is_complete_and_onnx_matches_torch(breast_bundle: Path) -> None:
    bundle = load_bundle(breast_bundle)
    meta = bundle.meta
    assert meta["task"] == "classification" and meta["label_names"] == ["malignant", "normal, benign"]
    assert meta["input"] == {
        "spatial_dims": 2,
        "spatial_size": [28, 28],
        "n_channels": 1,
        "layout": "N,C,H,W",
        "dtype": "float32",
    }
    assert meta["data"]["fingerprint"]["files"]["breastmnist.npz"] == "750601b1f35ba3300ea97c75c52ff8f6"
    assert meta["training"]["seed"] == 0 and meta["training"]["epochs_run"] == 3
    assert {"torch", "monai", "onnxruntime"} <= set(meta["versions"])
    # the weights kept are the better of the trained weights and their average at the best epoch, on validation
    weights, best = meta["training"]["weights"], meta["training"]["history"][meta["training"]["best_epoch"] - 1]
    trained, averaged = weights["val_score_trained"], weights["val_score_averaged"]
    assert weights["kept"] == ("average" if averaged > trained else "trained") and weights["chosen_on"] == "val"
    assert best["val_score"] == pytest.approx(max(trained, averaged))
    assert "decay" in weights["average"] and meta["plan"]["weight_average_decay"] == pytest.approx(0.9)
    # temperature and threshold were fitted on validation (p(malignant), the positive class): refitting them from the
    # bundle's own network on the validation split gives the recorded values (a range check would pass on anything)
    from medsight.data import medmnist
    from medsight.evaluation.calibration import TemperatureScaler
    from medsight.evaluation.operating_point import choose_threshold
    from medsight.tasks.classification.network import probabilities

    val = medmnist.load("medmnist:breastmnist").split("val")
    with torch.no_grad():
        val_logits = bundle.network()(torch.as_tensor(val.images)).numpy()
    temperature = TemperatureScaler().fit(val_logits, val.labels).temperature_
    assert meta["calibration"]["temperature"] == pytest.approx(temperature, rel=1e-3)
    p_malignant = probabilities(val_logits, "binary", temperature)[:, 0]
    refit = choose_threshold((val.labels == 0).astype(int), p_malignant)["threshold"]
    assert meta["operating_point"]["threshold"] == pytest.approx(refit, abs=1e-4)
    assert {"model.pt", "model.onnx", "model.onnx.data", "bundle.json"} <= {p.name for p in breast_bundle.iterdir()}
    assert meta["onnx"]["max_abs_diff_vs_torch"] < 1e-3
    # The ONNX graph takes any batch size and agrees with PyTorch on fresh inputs.
    from medsight.runtime.onnx_export import OnnxPredictor

    x = np.random.default_rng(0).random((5, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        expected = bundle.network()(torch.as_tensor(x)).numpy()
    assert np.abs(OnnxPredictor(bundle.onnx_path).run(x) - expected).max() < 1e-3


def test_evaluate_writes_metrics_and_card(breast_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                str(breast_bundle),
                "medmnist:breastmnist",
                "--split",
                "test",
                "--out",
                str(out),
                "--bootstrap",
                "200",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n"] == 156
    assert set(metrics["metrics"]) == METRIC_KEYS
    for name, m in metrics["metrics"].items():
        lo, hi = m["ci95"]
        assert lo <= m["value"] <= hi, name
    op = metrics["operating_point"]
    assert op["chosen_on"] == "val" and set(op["at_0.5"]) == METRIC_KEYS
    assert {"before", "after", "temperature"} <= set(metrics["calibration"])
    # Adebayo et al.'s cascade ran from the logits down, and the trained model's Grad-CAM maps decorrelated from
    # those of the randomised model (a flat map, or maps that ignore the weights, would fail: tests/explain).
    sanity = metrics["explanations"]["sanity_check"]
    assert sanity["n_images"] == 16 and sanity["n_flat_original"] == 0
    # the output layer first: the model's, or every member's when validation kept the ensemble of the recipes (under
    # "model." when it kept test-time augmentation too)
    assert [s["randomised_through"] for s in sanity["steps"]] == sanity["layers"]
    assert sanity["layers"][0] in ("fc", "members.0.fc", "model.fc", "model.members.0.fc")
    assert sanity["passed"] is True and sanity["mean_abs_spearman"] < sanity["threshold"], sanity["reason"]
    assert metrics["subgroups"] == {}  # MedMNIST carries no attributes
    html = (out / "card.html").read_text()
    assert "whichever scored higher on validation at the best epoch" in html
    assert html.count("data:image/png;base64,") >= 5 and "http://" not in html and "https://" not in html
    card = json.loads((out / "card.json").read_text())
    assert card["evaluation"]["metrics"] == metrics["metrics"]


def test_predict_on_real_dicom_and_png_with_explanations(
    breast_bundle: Path, shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from PIL import Image

    png = tmp_path / "us.png"
    Image.fromarray((np.random.default_rng(0).random((80, 100)) * 255).astype(np.uint8)).save(png)
    dcm = shared_data / "dicom_samples" / "pydicom_data" / "US1_J2KR.dcm"  # ultrasound, as BreastMNIST
    out = tmp_path / "pred"
    caplog.set_level(logging.INFO)  # root: what the console would show
    assert main(["predict", str(breast_bundle), str(dcm), str(png), "--explain", "--out", str(out)]) == 0
    source = pydicom.dcmread(dcm, stop_before_pixels=True)
    for identifier in (source.StudyInstanceUID, source.SOPInstanceUID, str(source.PatientName)):
        assert identifier not in caplog.text  # no identifier reaches the logs
    preds = json.loads((out / "predictions.json").read_text())["predictions"]
    assert [p["input"] for p in preds] == ["US1_J2KR.dcm", "us.png"]
    for p in preds:
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert p["decision"] in p["probabilities"]
        heat = np.load(out / p["heatmap"]["array"])
        assert heat.shape == (28, 28) and heat.min() >= 0 and heat.max() <= 1
        assert (out / p["heatmap"]["image"]).stat().st_size > 0
    # The DICOM input also gets a structured report and a Secondary Capture overlay a PACS accepts.
    from medsight.serving.dicom_objects import read_sr

    sr = read_sr(out / preds[0]["dicom"]["sr"])
    assert {f.label for f in sr} == set(preds[0]["probabilities"])
    sc = pydicom.dcmread(out / preds[0]["dicom"]["secondary_capture"])
    assert sc.Rows == 480 and sc.SamplesPerPixel == 3
    from serving.test_dicom_objects import dciodvfy_errors

    for written in preds[0]["dicom"].values():
        assert dciodvfy_errors(out / written) == [], written
    assert "dicom" not in preds[1]


def test_predict_on_a_series_folder_of_one_image_writes_its_dicom_results(
    breast_bundle: Path, shared_data: Path, tmp_path: Path
) -> None:
    """A PACS export puts the one ultrasound image in a series folder (here beside a README): it is classified as the
    file is, and the SR and the Secondary Capture reference that image (before: "a 3D image", then no SR)."""
    import shutil

    folder = tmp_path / "series"
    folder.mkdir()
    dcm = shared_data / "dicom_samples" / "pydicom_data" / "US1_J2KR.dcm"
    shutil.copy(dcm, folder / "IM0001")
    (folder / "README.txt").write_text("exported")
    out = tmp_path / "pred"
    assert main(["predict", str(breast_bundle), str(folder), "--explain", "--out", str(out)]) == 0
    pred = json.loads((out / "predictions.json").read_text())["predictions"][0]
    assert set(pred["dicom"]) == {"sr", "secondary_capture"}
    from serving.test_dicom_objects import dciodvfy_errors

    for written in pred["dicom"].values():
        assert dciodvfy_errors(out / written) == [], written
    sc = pydicom.dcmread(out / pred["dicom"]["secondary_capture"])
    assert sc.StudyInstanceUID == pydicom.dcmread(dcm, stop_before_pixels=True).StudyInstanceUID


def _small_3d_npz(path: Path) -> Path:
    """A MedMNIST-format 3D file: a bright blob (label 1) or not (label 0) in 16^3 noise."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 24), ("val", 8), ("test", 8)):
        labels = np.arange(n) % 2
        images = (rng.random((n, 16, 16, 16)) * 80).astype(np.uint8)
        images[labels == 1, 5:11, 5:11, 5:11] += 150
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels[:, None].astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return path


def test_3d_medmnist_format_trains_evaluates_predicts(tmp_path: Path) -> None:
    npz = _small_3d_npz(tmp_path / "blobs3d.npz")
    bundle, out, pred = tmp_path / "b3", tmp_path / "e3", tmp_path / "p3"
    assert main([*TRAIN, str(npz), "--out", str(bundle), "--epochs", "2", "--batch-size", "8"]) == 0
    assert load_bundle(bundle).input["spatial_size"] == [16, 16, 16]
    assert main(["evaluate", str(bundle), str(npz), "--out", str(out), "--bootstrap", "50"]) == 0
    assert json.loads((out / "metrics.json").read_text())["n"] == 8
    volume = tmp_path / "one.npy"
    np.save(volume, np.random.default_rng(1).random((20, 20, 20)).astype(np.float32))
    assert main(["predict", str(bundle), str(volume), "--explain", "--out", str(pred)]) == 0
    p = json.loads((pred / "predictions.json").read_text())["predictions"][0]
    assert np.load(pred / p["heatmap"]["array"]).shape == (16, 16, 16)


def test_same_seed_same_weights(tmp_path: Path) -> None:
    npz = _small_3d_npz(tmp_path / "blobs3d.npz")
    for name in ("a", "b"):
        assert (
            main([*TRAIN, str(npz), "--out", str(tmp_path / name), "--epochs", "1", "--seed", "7", "--batch-size", "8"])
            == 0
        )
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------- failure modes


def _assert_clean_failure(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str, out: Path) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("medsight ")]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in err, err
    leftovers = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert not leftovers, leftovers


def test_truncated_npz_fails_cleanly(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = (shared_data / "medmnist" / "breastmnist.npz").read_bytes()
    broken = tmp_path / "cut.npz"
    broken.write_bytes(data[:100_000])
    out = tmp_path / "bundle"
    _assert_clean_failure(capsys, [*TRAIN, str(broken), "--out", str(out)], "cut.npz", out)
    assert not out.exists()


def test_manifest_missing_file_and_unknown_label(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pandas as pd

    from data.test_manifest import make_png_manifest

    csv = make_png_manifest(tmp_path / "set", n_patients=12)
    bundle = tmp_path / "bundle"
    assert main([*TRAIN, str(csv), "--out", str(bundle), "--epochs", "1"]) == 0
    evaluation = tmp_path / "eval"
    assert main(["evaluate", str(bundle), str(csv), "--out", str(evaluation), "--bootstrap", "50"]) == 0
    before = (evaluation / "metrics.json").read_bytes()
    subgroups = json.loads(before)["subgroups"]  # the manifest's sex and age columns are audited
    assert set(subgroups) == {"sex", "age"}
    for report in subgroups.values():
        assert sum(g["n"] for g in report["groups"].values()) == json.loads(before)["n"]
    assert "Subgroups" in (evaluation / "card.html").read_text()
    table = pd.read_csv(csv)
    table.loc[0, "label"] = "tumour"
    table.to_csv(csv, index=False)
    _assert_clean_failure(
        capsys, ["evaluate", str(bundle), str(csv), "--out", str(evaluation)], "unknown label", evaluation
    )
    assert (evaluation / "metrics.json").read_bytes() == before  # the earlier result is intact
    table.loc[0, "label"] = "clear"
    table.loc[1, "path"] = "img/gone.png"
    table.to_csv(csv, index=False)
    _assert_clean_failure(capsys, [*TRAIN, str(csv), "--out", str(tmp_path / "b2")], "gone.png", tmp_path / "b2")


def test_predict_rejects_non_image(breast_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    out = tmp_path / "pred"
    _assert_clean_failure(capsys, ["predict", str(breast_bundle), str(text), "--out", str(out)], "notes.txt", out)
    assert not out.exists()


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    from medsight.cli import command_names

    for name in command_names():
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert "usage: medsight" in out
        assert "%%" not in out, f"{name}: a literal %% in its help (a description is not %-formatted)"


def _shapes_manifest(root: Path, multilabel: bool) -> Path:
    """Three kinds of image: a bright square, a bright bar, both (multi-label) or a plain field."""
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    rows = []
    kinds = ["square", "bar", "square|bar"] if multilabel else ["square", "bar", "plain"]
    for i in range(60):
        kind = kinds[i % 3]
        img = rng.normal(50, 8, (32, 32))
        if "square" in kind:
            img[4:14, 4:14] += 150
        if "bar" in kind:
            img[20:24, :] += 150
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / "img" / f"{i}.png")
        rows.append({"path": f"img/{i}.png", "label": kind, "patient_id": f"P{i // 2}", "site": "AB"[i % 2]})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


@pytest.mark.parametrize("multilabel", [False, True], ids=["multiclass", "multilabel"])
def test_multiclass_and_multilabel_train_evaluate_predict(tmp_path: Path, multilabel: bool) -> None:
    csv = _shapes_manifest(tmp_path / "set", multilabel)
    bundle, out, pred = tmp_path / "b", tmp_path / "e", tmp_path / "p"
    assert main([*TRAIN, str(csv), "--out", str(bundle), "--epochs", "2", "--batch-size", "16"]) == 0
    meta = load_bundle(bundle).meta
    assert meta["task_type"] == ("multilabel" if multilabel else "multiclass")
    expected = ["bar", "square"] if multilabel else ["bar", "plain", "square"]
    assert meta["label_names"] == expected
    assert main(["evaluate", str(bundle), str(csv), "--out", str(out), "--bootstrap", "50"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"auc", "accuracy"} <= set(metrics["metrics"]) and set(metrics["per_class"]) == set(expected)
    for m in metrics["metrics"].values():
        assert m["ci95"][0] is None or m["ci95"][0] <= m["value"] <= m["ci95"][1]
    if not multilabel:  # the multi-class subgroup audit: one-vs-rest AUC and accuracy per site (too few to compare)
        site = metrics["subgroups"]["site"]
        assert set(site["groups"]["A"]) == {"n", "auc", "accuracy"}
        assert sum(g["n"] for g in site["groups"].values()) == metrics["n"]
        assert all(g["n"] < site["min_group_for_gaps"] for g in site["groups"].values()) and site["gaps"] == {}
        assert metrics["calibration"]["ece_kind"] == "top-label"
    assert main(["predict", str(bundle), str(tmp_path / "set" / "img" / "0.png"), "--out", str(pred)]) == 0
    p = json.loads((pred / "predictions.json").read_text())["predictions"][0]
    assert set(p["probabilities"]) == set(expected)
    if multilabel:
        assert isinstance(p["decision"], list) and set(p["decision"]) <= set(expected)
    else:
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5) and p["decision"] in expected


# ------------------------------------------------------------------------------------------- the contract


def test_option_the_task_does_not_take_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    npz = _small_3d_npz(tmp_path / "blobs3d.npz")
    out = tmp_path / "bundle"
    for flag, value in (("--image-size", "64"), ("--fold", "1")):
        _assert_clean_failure(capsys, [*TRAIN, str(npz), "--out", str(out), flag, value], flag, out)
        assert not out.exists()


def test_plan_is_logged_up_front_and_round_trips_through_bundle_json(
    breast_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from medsight.tasks.classification.plan import ClassificationPlan, NetworkPlan

    bundle = load_bundle(breast_bundle)
    plan = bundle.plan(ClassificationPlan)
    # the planned ResNet, or the ensemble of planned ResNets, either possibly averaged over test-time views
    network = bundle.meta["network"]
    if network["name"].endswith("ViewAverage"):
        network = network["kwargs"]["network"]
    kwargs = network["kwargs"]["member"] if network["name"].endswith("LogitAverage") else network["kwargs"]
    assert isinstance(plan.network, NetworkPlan) and plan.network.kwargs() == kwargs
    assert plan.epochs == 3 and plan.batch_size == 128 and plan.lr == 2e-3 and plan.width == 16
    # BreastMNIST is 1:2.7: plain and class-balanced are both trained; the plan records the kept recipe's balance
    # (an ensemble's is its first member's)
    selection = bundle.meta["training"]["recipe_selection"]
    assert plan.balance_choices == [False, True] and plan.class_balance.startswith("auto")
    assert plan.balanced_loss == selection["balanced"]
    assert plan.time_budget_s is None and plan.seconds_per_iteration > 0 and plan.expected_seconds > 0
    assert ClassificationPlan.from_json(plan.to_json()) == plan
    assert bundle.meta["options"] == {"seed": 0, "epochs": 3}
    assert bundle.meta["training"]["warnings"] == []
    # A default run announces its plan and expected time before training starts.
    npz = _small_3d_npz(tmp_path / "blobs3d.npz")
    caplog.set_level(logging.INFO)
    assert main([*TRAIN, str(npz), "--out", str(tmp_path / "b"), "--batch-size", "8"]) == 0
    first = next(r.getMessage() for r in caplog.records if "expected training time" in r.getMessage())
    assert "iterations/s" in first and "time budget" in first
    meta = load_bundle(tmp_path / "b").meta
    planned = ClassificationPlan.from_json(meta["plan"])
    assert planned.epochs == 40 and planned.time_budget_s is not None and planned.time_budget_s <= 600
    assert meta["training"]["time_budget_s"] == planned.time_budget_s


def test_runtime_results_equal_what_predict_writes(breast_bundle: Path, tmp_path: Path) -> None:
    from PIL import Image

    from medsight import runtime
    from medsight.tasks.classification.predict import ClassificationModel, ClassificationResult

    paths = []
    for k in range(3):
        png = tmp_path / f"img{k}.png"
        Image.fromarray((np.random.default_rng(k).random((40, 50)) * 255).astype(np.uint8)).save(png)
        paths.append(png)
    model = runtime.load(breast_bundle)
    assert isinstance(model, ClassificationModel)
    results = model.predict(paths)
    assert not any(tmp_path.glob("*.json"))  # predicting writes nothing
    assert all(isinstance(r, ClassificationResult) for r in results)
    first = results[0]
    assert isinstance(first, ClassificationResult) and first.decision in first.probabilities
    assert first.operating_point is not None and first.operating_point["on"] == "malignant"  # BreastMNIST's finding
    out = tmp_path / "pred"
    assert main(["predict", str(breast_bundle), *map(str, paths), "--out", str(out)]) == 0
    written = json.loads((out / "predictions.json").read_text())
    assert written["task"] == "classification"
    assert written["predictions"] == json.loads(json.dumps([r.to_json() for r in results]))
    assert model.predict(paths)[2].to_json() == results[2].to_json()  # the warm model runs again, same answer


def test_hand_edited_bundle_fails_to_load_with_one_line(
    breast_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    png = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((28, 28), np.uint8)).save(png)
    for edit, needle in (
        (lambda m: m["calibration"].update(temperature="warm"), "calibration/temperature"),
        (lambda m: m.pop("plan"), "'plan' is a required property"),
        (lambda m: m["plan"].pop("batch_size"), "missing ['batch_size']"),
    ):
        edited = tmp_path / "edited"
        shutil.rmtree(edited, ignore_errors=True)
        shutil.copytree(breast_bundle, edited)
        meta = json.loads((edited / "bundle.json").read_text())
        edit(meta)
        (edited / "bundle.json").write_text(json.dumps(meta))
        out = tmp_path / "pred"
        _assert_clean_failure(capsys, ["predict", str(edited), str(png), "--out", str(out)], needle, out)
        assert not out.exists()
