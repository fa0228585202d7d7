"""The test split decides nothing, for every task:

* the training seed changes initialisation and order only: two seeds train and validate on the same cases, so they
  leave the same test cases (split by a fixed split seed, patients kept together);
* ``medsight evaluate BUNDLE DATA --split test`` refuses, in one line with a count and no identifier, a test split
  holding a case the bundle was trained or validated on, recognised by its pixels: here a training image copied
  under a new name into another folder; the same folder without the copy is scored, and says it was verified.

Every data set is tiny and synthetic (DRIVE-like segmentation uses four real DRIVE images), every training one epoch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medsight.cli import main
from medsight.data.fingerprint import case_hash
from medsight.data.splits import SPLIT_SEED
from medsight.training.bundle import load_bundle

pytestmark = pytest.mark.slow

# ------------------------------------------------------------------------------------------------- helpers


def _square_image(rng: np.random.Generator, lesion: bool, size: int = 40) -> np.ndarray:
    img = rng.normal(60, 12, size=(size, size))
    if lesion:
        r, c = rng.integers(4, size - 16, size=2)
        img[r : r + 12, c : c + 12] += 120
    return img.clip(0, 255).astype(np.uint8)


def _train(data: Path | str, out: Path, task: str, seed: int, *extra: str) -> dict[str, Any]:
    assert main(["-q", "train", str(data), "--task", task, "--out", str(out), "--seed", str(seed), *extra]) == 0
    return load_bundle(out).meta


def _evaluate(bundle: Path, data: Path | str, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    status = main(["-q", "evaluate", str(bundle), str(data), "--split", "test", "--out", str(out), "--bootstrap", "20"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medsight evaluate: error")]
    return status, "\n".join(errors)


def _train_hashes(meta: dict[str, Any]) -> tuple[set[str], set[str]]:
    recorded = meta["data"]["case_hashes"]
    return set(recorded["train"]), set(recorded["val"])


def _assert_refused(status: int, error: str, count: str, secrets: list[str]) -> None:
    assert status == 2 and error.count("\n") == 0 and "refusing to score the test split" in error, error
    assert count in error, error
    for secret in secrets:  # neither patient ids nor file names reach the message
        assert secret not in error, (secret, error)


def _assert_verified(status: int, error: str, metrics_dir: Path) -> None:
    assert status == 0, error
    leakage = json.loads((metrics_dir / "metrics.json").read_text())["leakage"]
    assert leakage["status"].startswith("verified") and leakage["n_seen"] == 0 and leakage["n_training_cases"] > 0


# ----------------------------------------------------------------------------------- classification (manifest)


def _manifest(root: Path, patients: range, seed: int, split: str | None = None) -> Path:
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in patients:
        for k in range(2):
            name = f"img/p{p:03d}_{k}.png"
            Image.fromarray(_square_image(rng, p % 2 == 1)).save(root / name)
            rows.append({"path": name, "label": "lesion" if p % 2 else "clear", "patient_id": f"P{p:03d}"})
    table = pd.DataFrame(rows)
    if split:
        table["split"] = split
    table.to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def classification(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("cls")
    data = _manifest(tmp / "site_a", range(24), seed=0).parent
    metas = {s: _train(data, tmp / f"b{s}", "classification", s, "--epochs", "1") for s in (0, 1)}
    return {"tmp": tmp, "data": data, "metas": metas}


def test_classification_seeds_train_on_the_same_cases(classification: dict[str, Any]) -> None:
    a, b = (classification["metas"][s] for s in (0, 1))
    assert _train_hashes(a) == _train_hashes(b)
    assert a["data"]["split_seed"] == b["data"]["split_seed"] == SPLIT_SEED
    assert a["training"]["seed"] == 0 and b["training"]["seed"] == 1


def test_classification_refuses_a_renamed_training_image_in_another_folder(
    classification: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from medsight.io.images import read_image
    from medsight.transforms import prepare

    tmp, data, meta = classification["tmp"], classification["data"], classification["metas"][0]
    honest = _manifest(tmp / "site_b", range(100, 104), seed=7, split="test").parent
    status, error = _evaluate(tmp / "b0", honest, tmp / "e_honest", capsys)
    _assert_verified(status, error, tmp / "e_honest")

    size, channels = meta["input"]["spatial_size"], meta["input"]["n_channels"]
    train_hashes, _ = _train_hashes(meta)
    seen = next(
        p for p in sorted((data / "img").iterdir()) if case_hash(prepare(read_image(p), size, channels)) in train_hashes
    )
    leaky = tmp / "site_c"
    shutil.copytree(honest, leaky)
    shutil.copy(seen, leaky / "img" / "new_name.png")
    table = pd.read_csv(leaky / "manifest.csv", dtype=str)
    label = pd.read_csv(data / "manifest.csv", dtype=str).set_index("path").loc[f"img/{seen.name}", "label"]
    table.loc[len(table)] = {"path": "img/new_name.png", "label": label, "patient_id": "P999", "split": "test"}
    table.to_csv(leaky / "manifest.csv", index=False)
    status, error = _evaluate(tmp / "b0", leaky, tmp / "e_leaky", capsys)
    _assert_refused(status, error, "1 of 9 test case(s)", ["P999", "P1", "new_name", seen.stem])
    assert not (tmp / "e_leaky").exists()


def test_classification_bundle_of_another_seed_scores_the_same_test_split(
    classification: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    tmp = classification["tmp"]
    status, error = _evaluate(tmp / "b1", classification["data"], tmp / "e_seed1", capsys)
    _assert_verified(status, error, tmp / "e_seed1")
    status, error = _evaluate(tmp / "b0", classification["data"], tmp / "e_seed0", capsys)
    _assert_verified(status, error, tmp / "e_seed0")
    n = [json.loads((tmp / f"e_seed{s}" / "metrics.json").read_text())["n"] for s in (0, 1)]
    assert n[0] == n[1] > 0


# --------------------------------------------------------------------------------------------- detection (COCO)


def _coco(root: Path, n: int, seed: int) -> Path:
    """``n`` 64-px images, two per patient, a box around the bright square of every other patient."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        img = rng.normal(60, 12, size=(64, 64))
        patient = i // 2
        if patient % 2:
            r, c = (int(v) for v in rng.integers(4, 40, size=2))
            img[r : r + 18, c : c + 18] += 120
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "bbox": [c, r, 18, 18]})
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / "images" / f"s{seed}_{i:03d}.png")
        images.append(
            {
                "id": i,
                "file_name": f"s{seed}_{i:03d}.png",
                "width": 64,
                "height": 64,
                "metadata": {"patientid": f"Q{seed}-{patient}"},
            }
        )
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "lesion"}]}
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


@pytest.fixture(scope="module")
def detection(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("det")
    data = _coco(tmp / "site_a", 32, seed=0)
    flags = ("--epochs", "1", "--image-size", "64", "--batch-size", "4")
    metas = {s: _train(data, tmp / f"b{s}", "detection", s, *flags) for s in (0, 1)}
    return {"tmp": tmp, "data": data, "metas": metas}


def test_detection_seeds_leave_the_same_test_split(detection: dict[str, Any]) -> None:
    a, b = (detection["metas"][s] for s in (0, 1))
    assert a["data"]["split_digest"] == b["data"]["split_digest"]
    assert _train_hashes(a) == _train_hashes(b)
    assert a["data"]["split_seed"] == b["data"]["split_seed"] == SPLIT_SEED


def test_detection_refuses_a_renamed_training_image_in_another_folder(
    detection: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from medsight.data.detection import load_coco
    from medsight.io.images import read_image
    from medsight.tasks.detection.data import prepare

    tmp, data, meta = detection["tmp"], detection["data"], detection["metas"][0]
    honest = _coco(tmp / "site_b", 20, seed=5)
    status, error = _evaluate(tmp / "b0", honest, tmp / "e_honest", capsys)
    _assert_verified(status, error, tmp / "e_honest")

    train_hashes, _ = _train_hashes(meta)
    seen = next(
        p for p in sorted((data / "images").iterdir()) if case_hash(prepare(read_image(p), 64)[0]) in train_hashes
    )
    leaky = tmp / "site_c"
    shutil.copytree(honest, leaky)
    ext = load_coco(leaky)
    test_item = ext.items[int(ext.split()["test"][0])]  # the split depends on patients, not on the pixels
    shutil.copy(seen, test_item.image)  # a training image under this folder's own new name
    status, error = _evaluate(tmp / "b0", leaky, tmp / "e_leaky", capsys)
    n_test = len(ext.split()["test"])
    _assert_refused(status, error, f"1 of {n_test} test case(s)", ["Q5-", seen.stem, test_item.image.stem])


# ---------------------------------------------------------------------------------------- outcome (task file)


def _task_file(root: Path, patients: range, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = ["image,patient_id,died,age,sex"]
    for i in patients:
        died = i % 3 == 0
        Image.fromarray(_square_image(rng, died)).save(root / f"img{i:03d}.png")
        rows.append(f"img{i:03d}.png,R{i:03d},{int(died)},{int(rng.normal(75 if died else 55, 8))},{'MF'[i % 2]}")
    (root / "clinical.csv").write_text("\n".join(rows) + "\n")
    spec = {
        "table": "clinical.csv",
        "image_column": "image",
        "patient_column": "patient_id",
        "target": {"column": "died", "positive": ["1"], "negative": ["0"], "name": "died"},
        "fields": {"age": "numeric", "sex": "categorical"},
        "attributes": ["sex", "age"],
    }
    (root / "task.json").write_text(json.dumps(spec))
    return root / "task.json"


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("outcome")
    spec = _task_file(tmp / "site_a", range(60), seed=0)
    flags = ("--epochs", "1", "--image-size", "32", "--batch-size", "16")
    metas = {s: _train(spec, tmp / f"b{s}", "outcome", s, *flags) for s in (0, 1)}
    return {"tmp": tmp, "spec": spec, "metas": metas}


def test_outcome_seeds_train_on_the_same_cases(outcome: dict[str, Any]) -> None:
    a, b = (outcome["metas"][s] for s in (0, 1))
    assert _train_hashes(a) == _train_hashes(b)
    assert a["data"]["split_seed"] == b["data"]["split_seed"] == SPLIT_SEED
    assert a["data"]["n_patients"] == b["data"]["n_patients"]


def test_outcome_refuses_a_renamed_training_image_in_another_folder(
    outcome: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from medsight.data.clinical import load_outcome
    from medsight.io.images import read_image
    from medsight.transforms import prepare

    tmp, spec, meta = outcome["tmp"], outcome["spec"], outcome["metas"][0]
    honest = _task_file(tmp / "site_b", range(200, 230), seed=9)
    status, error = _evaluate(tmp / "b0", honest, tmp / "e_honest", capsys)
    _assert_verified(status, error, tmp / "e_honest")
    status, error = _evaluate(tmp / "b1", spec, tmp / "e_seed1", capsys)  # another seed: the same test split
    _assert_verified(status, error, tmp / "e_seed1")

    train_hashes, _ = _train_hashes(meta)
    seen = next(
        p for p in sorted(spec.parent.glob("*.png")) if case_hash(prepare(read_image(p), [32, 32], 1)) in train_hashes
    )
    leaky = tmp / "site_c"
    shutil.copytree(honest.parent, leaky)
    ext = load_outcome(str(leaky / "task.json"))
    target = ext.images[int(ext.split()["test"][0])]
    shutil.copy(seen, target)
    status, error = _evaluate(tmp / "b0", leaky / "task.json", tmp / "e_leaky", capsys)
    n_test = len(ext.split()["test"])
    _assert_refused(status, error, f"1 of {n_test} test case(s)", ["R2", seen.stem, target.stem])


# --------------------------------------------------------------------------------- segmentation (DRIVE-like)


def _drive_like(root: Path, drive: Path, test_ids: list[str], copy_of: str | None = None) -> Path:
    for split, ids, folders in (
        ("training", ["21", "22", "23", "24"], ["images", "1st_manual", "mask"]),
        ("test", test_ids, ["images", "1st_manual", "mask"]),
    ):
        for folder in folders:
            (root / split / folder).mkdir(parents=True, exist_ok=True)
            for f in sorted((drive / split / folder).iterdir()):
                if f.name.split("_")[0] in ids:
                    (root / split / folder / f.name).symlink_to(f.resolve())
    if copy_of:  # a training case under the new id 09, as if it were a test image
        for folder, new in (("images", "09_test.tif"), ("1st_manual", "09_manual1.gif"), ("mask", "09_test_mask.gif")):
            source = next(f for f in (drive / "training" / folder).iterdir() if f.name.startswith(copy_of + "_"))
            shutil.copy(source, root / "test" / folder / new)
    return root


def test_segmentation_refuses_a_renamed_training_image_in_another_folder(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medsight.data.folds import FOLDS_SEED
    from medsight.tasks import segmentation

    drive = shared_data / "drive"
    data = _drive_like(tmp_path / "site_a", drive, ["01"])
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "patch_size": [96, 96],
                "batch_size": 2,
                "iterations_per_epoch": 2,
                "optimizer": {"warmup_iterations": 1},
                "test_time_flips": False,
                "validate_every": 0,
                "sliding_window": {"overlap": 0.25, "mode": "gaussian"},
                "network": {"filters": [8, 16, 32, 64, 64]},
            }
        )
    )
    options = segmentation.SegmentationOptions(epochs=1, plan=plan)
    segmentation.TASK.train(str(data), tmp_path / "b0", options)
    meta = load_bundle(tmp_path / "b0").meta
    leaky = _drive_like(tmp_path / "site_c", drive, ["02"], copy_of=meta["data"]["train_ids"][0])
    status, error = _evaluate(tmp_path / "b0", leaky, tmp_path / "e_leaky", capsys)
    _assert_refused(status, error, "1 of 2 test case(s)", ["09_test", "_training"])

    honest = _drive_like(tmp_path / "site_b", drive, ["02"])
    status, error = _evaluate(tmp_path / "b0", honest, tmp_path / "e_honest", capsys)
    _assert_verified(status, error, tmp_path / "e_honest")
    assert meta["data"]["split_seed"] == FOLDS_SEED
    train_ids = meta["data"]["train_ids"] + meta["data"]["val_ids"]
    assert len(meta["data"]["case_hashes"]["train"]) + len(meta["data"]["case_hashes"]["val"]) == len(train_ids)
