"""Segmentation fine-tuning: the child keeps its parent's plan (spacing, normalisation, patch, network) with the
options applied, starts from its weights and records it; a plan override that changes the network is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medsight.errors import MedsightError
from medsight.serving.provenance import bundle_checksum
from medsight.tasks import segmentation
from medsight.tasks.segmentation import SegmentationOptions, SegmentationPlan
from medsight.training.bundle import load_bundle

TINY = {
    "target_spacing": [2.0, 2.0, 2.0],
    "patch_size": [32, 32, 32],
    "batch_size": 2,
    "iterations_per_epoch": 2,
    "optimizer": {"warmup_iterations": 1},
    "validate_every": 0,
    "test_time_flips": False,
    "network": {"filters": [8, 16, 32, 64]},
}


@pytest.fixture(scope="module")
def parent(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("segparent")
    plan = tmp / "tiny.json"
    plan.write_text(json.dumps(TINY))
    options = SegmentationOptions(epochs=1, lr=1e-2, plan=plan, max_cases=8)
    segmentation.TASK.train(str(shared_data / "msd_hippocampus"), tmp / "bundle", options)
    return tmp / "bundle"


def test_the_child_keeps_the_parent_plan_and_weights(parent: Path, shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "child"
    options = SegmentationOptions(epochs=1, lr=1e-9, max_cases=6, fold=1, init=parent)
    segmentation.TASK.train(str(shared_data / "msd_hippocampus"), out, options)
    child, mother = load_bundle(out), load_bundle(parent)
    assert child.meta["parent"]["checksum"] == bundle_checksum(parent)
    theirs, mine = mother.plan(SegmentationPlan).to_json(), child.plan(SegmentationPlan).to_json()
    assert mine["optimizer"]["lr"] == 1e-9 and theirs["optimizer"]["lr"] == 1e-2
    mine["optimizer"]["lr"] = theirs["optimizer"]["lr"]
    assert mine == theirs  # no --plan given: every planned decision is the parent's (no re-planning from the data)
    for (name, a), (_, b) in zip(mother.network().named_parameters(), child.network().named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name


def test_a_changed_network_is_refused(parent: Path, shared_data: Path, tmp_path: Path) -> None:
    wider = tmp_path / "wider.json"
    wider.write_text(json.dumps({"network": {"filters": [16, 32, 64, 128]}}))
    options = SegmentationOptions(epochs=1, max_cases=6, plan=wider, init=parent)
    with pytest.raises(MedsightError) as caught:
        segmentation.TASK.train(str(shared_data / "msd_hippocampus"), tmp_path / "x", options)
    assert str(caught.value).startswith(
        f"{parent}: cannot fine-tune from this bundle: its network differs from the one planned for this data "
        "(filters: bundle [8, 16, 32, 64], this run [16, 32, 64, 128]"
    )
    assert not (tmp_path / "x").exists()


def test_compare_scores_both_on_the_same_cases_with_wilcoxon(parent: Path, shared_data: Path, tmp_path: Path) -> None:
    from scipy import stats

    from medsight.feedback.compare import compare
    from medsight.feedback.compare_report import write_report

    child = tmp_path / "child"
    options = SegmentationOptions(epochs=1, lr=1e-2, max_cases=8, init=parent)  # fold 0, as the parent
    segmentation.TASK.train(str(shared_data / "msd_hippocampus"), child, options)
    result = compare(child, parent, str(shared_data / "msd_hippocampus"), "val", 200)
    assert result["n"] == len(load_bundle(child).meta["data"]["val_ids"]) == 2
    assert result["lineage"] == "NEW was fine-tuned from OLD"
    new = [r["dice_new"] for r in result["per_case"]]
    old = [r["dice_old"] for r in result["per_case"]]
    assert all(0 <= d <= 1 for d in new + old)
    assert result["metrics"]["dice"]["difference"]["value"] == pytest.approx(sum(new) / 2 - sum(old) / 2)
    expected = stats.wilcoxon(new, old).pvalue if new != old else 1.0
    assert result["tests"]["dice"]["p"] == pytest.approx(expected)
    assert result["verdict"]["outcome"] == "no_difference"  # two cases cannot show a difference
    page = write_report(tmp_path / "report", result)
    assert "Wilcoxon signed-rank" in page.read_text() and (tmp_path / "report" / "compare.json").is_file()
