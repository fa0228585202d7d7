"""``medsight train --init BUNDLE``: a fine-tuned bundle starts from its parent's weights and names it by checksum;
a parent of another task, with other labels, or a task that cannot fine-tune is refused naming the bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from feedback.feedback_data import breast_manifest
from medsight.cli import main
from medsight.errors import MedsightError
from medsight.serving.provenance import bundle_checksum
from medsight.training.bundle import load_bundle, validate_meta

TRAIN = ["-q", "train"]


@pytest.fixture(scope="module")
def parent(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("parent")
    data = breast_manifest(shared_data, tmp / "a", 0, 120)
    assert main([*TRAIN, str(data), "--out", str(tmp / "bundle"), "--epochs", "2", "--positive", "malignant"]) == 0
    return tmp / "bundle"


def test_fine_tuning_starts_from_the_parent_and_records_it(parent: Path, shared_data: Path, tmp_path: Path) -> None:
    data = breast_manifest(shared_data, tmp_path / "b", 200, 80)
    out = tmp_path / "child"
    # no --task: a fine-tuned model does what its parent does; a learning rate of 1e-9 leaves the start unchanged
    assert main([*TRAIN, str(data), "--out", str(out), "--epochs", "1", "--lr", "1e-9", "--init", str(parent)]) == 0
    child = load_bundle(out)
    assert child.meta["parent"]["checksum"] == bundle_checksum(parent)
    assert child.meta["parent"]["task"] == "classification"
    assert child.meta["options"]["init"] == str(parent)
    assert child.meta["positive_class"] == "malignant"  # taken from the parent when the data declare none
    theirs, mine = load_bundle(parent).network(), child.network()
    for (name, a), (_, b) in zip(theirs.named_parameters(), mine.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name
    # a run from scratch on the same data starts elsewhere: the equality above is the parent's weights, not chance
    scratch = tmp_path / "scratch"
    assert main([*TRAIN, str(data), "--out", str(scratch), "--epochs", "1", "--lr", "1e-9"]) == 0
    far = load_bundle(scratch).network()
    assert "parent" not in load_bundle(scratch).meta
    first = next(iter(far.parameters()))
    assert not torch.allclose(first, next(iter(theirs.parameters())), atol=1e-3)


def test_other_labels_are_refused_naming_the_bundle(
    parent: Path, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = breast_manifest(shared_data, tmp_path / "c", 300, 40, labels={0: "lesion", 1: "clear"})
    assert main([*TRAIN, str(data), "--out", str(tmp_path / "x"), "--epochs", "1", "--init", str(parent)]) == 2
    err = capsys.readouterr().err
    assert f"{parent}: cannot fine-tune from this bundle: the data do not fit it" in err
    assert "unknown label(s) clear, lesion" in err
    assert not (tmp_path / "x").exists()


def test_another_task_is_refused(parent: Path, shared_data: Path, tmp_path: Path) -> None:
    data = breast_manifest(shared_data, tmp_path / "d", 300, 40)
    with pytest.raises(MedsightError) as caught:
        main(
            [
                "--debug",
                *TRAIN,
                f"{data}",
                "--task",
                "segmentation",
                "--out",
                str(tmp_path / "y"),
                "--init",
                f"{parent}",
            ]
        )
    assert str(caught.value) == (
        f"{parent}: cannot fine-tune from this bundle: it is a classification bundle and this run trains a "
        "segmentation model"
    )
    with pytest.raises(MedsightError, match=r"the detection task does not take --init"):
        main(["--debug", *TRAIN, str(data), "--task", "detection", "--out", str(tmp_path / "z"), "--init", str(parent)])


def test_the_parent_record_is_checked_by_the_schema(parent: Path) -> None:
    meta = json.loads((parent / "bundle.json").read_text())
    validate_meta(meta)  # from scratch: no parent, still valid
    meta["parent"] = {"checksum": "0" * 64, "task": "classification"}
    validate_meta(meta)
    meta["parent"]["checksum"] = "not-a-sha256"
    with pytest.raises(MedsightError, match=r"at parent/checksum"):
        validate_meta(meta)
    meta["parent"] = {"checksum": "0" * 64, "task": "classification", "weights": "elsewhere"}
    with pytest.raises(MedsightError, match=r"Additional properties"):
        validate_meta(meta)
