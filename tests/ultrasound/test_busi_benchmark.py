"""``benchmarks/busi.py`` as a smoke run (4 images per fold, one epoch): segmentation Dice and classification AUC with
CIs on the test fold of a fold view, the split it used, and the provenance every results file carries; then the
mirroring and two-seed ensemble decisions (``busi_tta.py``, ``busi_seed_ensemble.py``) on that fold."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmark_scripts import run_script
from medsight.training.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[2]


def test_busi_benchmark_smoke_run_records_dice_and_auc_with_cis(shared_data: Path, tmp_path: Path) -> None:
    results = tmp_path / "busi.json"
    plan = tmp_path / "tiny.json"
    plan.write_text(
        json.dumps(
            {
                "preset": "fast",
                "patch_size": [64, 64],
                "iterations_per_epoch": 2,
                "validate_every": 0,
                "optimizer": {"warmup_iterations": 1},
            }
        )
    )
    env = {
        **os.environ,
        "MEDSIGHT_DATA": str(shared_data.resolve()),
        "MEDSIGHT_THREADS": "1",
        "MEDSIGHT_SEG_PLAN": str(plan),
    }
    run = run_script(
        "busi.py",
        *("--folds", "1", "--limit", "4", "--seg-epochs", "1", "--cls-epochs", "1", "--bootstrap", "20"),
        *("--out", str(tmp_path / "out"), "--results", str(results)),
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads(results.read_text())
    seg, cls = doc["segmentation"]["folds"][0], doc["classification"]["folds"][0]
    assert seg["fold"] == 1 and seg["n_test"] == 4 and len(seg["dice"]["ci95"]) == 2
    assert 0.0 <= seg["dice"]["value"] <= 1.0
    lesion = seg["dice_lesion_images"]  # UNeXt's protocol: the images with a lesion (this view holds 3 of 4)
    assert lesion["n"] == 3 and 0.0 <= lesion["value"] <= 1.0 and len(lesion["ci95"]) == 2
    assert "drop_unsure" in seg["postprocessing"]  # the gate chosen on the validation fold, and its ablation
    assert 0.0 <= seg["ablation_without_unsure_gate"]["dice"] <= 1.0
    assert cls["n_test"] == 4 and set(cls["metrics"]["auc"]) == {"value", "ci95"}
    assert "BUSI CV fold 1" in cls["split_method"]
    assert doc["split"]["file"] == "src/medsight/data/busi_folds.json" and doc["split"]["folds_tested"] == [1]
    assert {"command", "commit", "date", "load_average_1min"} <= set(doc["provenance"])

    # test-time mirroring (benchmarks/busi_tta.py) decides on the fold's validation images, both ways the same code
    tta = tmp_path / "tta.json"
    fold_dir = tmp_path / "out" / "fold1"
    paths = ["--fold-dirs", str(fold_dir), "--reference", str(results), "--results", str(tta)]
    run = run_script("busi_tta.py", *paths, "--bootstrap", "20", "--replace", env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    decision = json.loads(tta.read_text())
    (fold,) = decision["validation"]["folds"]
    assert fold["fold"] == 1 and {"one_pass", "mirrored"} <= set(fold)
    means = decision["validation"]["val_dice_before_gate_mean"]
    assert decision["adopted"] is (means["mirrored"] > means["one_pass"])
    replaced = json.loads(results.read_text())
    if decision["adopted"]:  # the mirrored fold is scored once on test and becomes the record
        assert replaced["segmentation"]["folds"][0]["test_time_flips"] is True and "previous" in replaced
    else:
        assert replaced == doc
    # a folder whose bundle did not train the record's fold is refused by name, and the record is left as it was
    doc["segmentation"]["folds"][0]["training"]["iterations"] += 1
    results.write_text(json.dumps(doc))
    run = run_script("busi_tta.py", *paths, "--replace", env=env)
    assert run.returncode != 0 and str(fold_dir) in run.stderr and "did not train" in run.stderr
    assert json.loads(results.read_text()) == doc

    # two seeds per fold as one model (benchmarks/busi_seed_ensemble.py): decided on validation, the same way
    results.write_text(json.dumps(replaced))  # the record as the mirroring decision left it
    seed1 = tmp_path / "seed1"
    run = run_script(
        "busi.py",
        *("--folds", "1", "--limit", "4", "--seg-epochs", "1", "--seed", "1", "--skip", "classification"),
        *("--bootstrap", "20", "--out", str(seed1), "--results", str(tmp_path / "seed1.json")),
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ens = tmp_path / "ensemble.json"
    paths = ["--fold-dirs", str(fold_dir), "--seed-dirs", str(seed1 / "fold1"), "--reference", str(results)]
    extra = ["--results", str(ens), "--bootstrap", "20", "--member-runs", str(tmp_path / "seed1.json"), "--replace"]
    run = run_script("busi_seed_ensemble.py", *paths, *extra, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    decision = json.loads(ens.read_text())
    (fold,) = decision["validation"]["folds"]
    assert fold["fold"] == 1 and {"record", "ensemble"} <= set(fold)
    means = decision["validation"]["val_dice_before_gate_mean"]
    assert decision["adopted"] is (means["ensemble"] > means["record"])
    assert [(m["fold"], m["seed"]) for m in decision["member_runs"]] == [(1, 1)]  # reported, deciding nothing
    assert len(load_bundle(fold_dir / "seg_bundle_seeds2").meta["ensemble"]["members"]) == 2
    after = json.loads(results.read_text())
    if decision["adopted"]:  # scored once on test, every member's training recorded
        entry = after["segmentation"]["folds"][0]
        assert entry["ensemble_seeds"] == [0, 1] and [m["seed"] for m in entry["members_training"]] == [0, 1]
        assert after["previous"] == {
            k: replaced[k] for k in ("segmentation", "provenance", "previous") if k in replaced
        }
    else:
        assert after == replaced
    # a seed-0 folder given as the second seed is refused by name
    run = run_script("busi_seed_ensemble.py", *paths[:2], "--seed-dirs", str(fold_dir), *paths[-2:], env=env)
    assert run.returncode != 0 and "not the seed-1 bundle" in run.stderr


def test_add_keeps_the_earlier_runs_other_folds_with_their_own_provenance(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import busi as bench

    earlier_run = {"command": "busi.py --folds 0,1", "commit": "aaaa"}
    results = tmp_path / "busi.json"
    results.write_text(
        json.dumps(
            {
                "provenance": earlier_run,
                "segmentation": {"folds": [{"fold": 0, "dice": 0.5}, {"fold": 1, "dice": 0.4}]},
                "classification": {"folds": [{"fold": 1, "auc": 0.8}]},
            }
        )
    )
    record = {
        "provenance": {"command": "busi.py --folds 1,2 --add"},
        "split": {"folds_tested": [1, 2]},
        "segmentation": {"folds": []},
        "classification": {"folds": []},
    }
    bench.keep_earlier_folds(record, results, [1, 2], [])
    assert record["segmentation"]["folds"] == [{"fold": 0, "dice": 0.5, "provenance": earlier_run}]
    assert record["classification"]["folds"] == []  # fold 1 is measured again by this run
    assert record["split"]["folds_tested"] == [0, 1, 2] and record["earlier_runs"] == [earlier_run]

    # a segmentation-only run of fold 1 keeps the earlier run's fold-1 classification
    record = {
        "provenance": {"command": "busi.py --folds 1 --skip classification --add"},
        "split": {"folds_tested": [1]},
        "segmentation": {"folds": []},
        "classification": {"folds": []},
    }
    bench.keep_earlier_folds(record, results, [1], ["classification"])
    assert record["classification"]["folds"] == [{"fold": 1, "auc": 0.8, "provenance": earlier_run}]


def test_merge_joins_folds_run_in_parallel_later_files_winning(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import busi as bench

    old, a, b = ({"command": name, "commit": "c"} for name in ("old", "a", "b"))
    files = []
    for name, prov, seg, cls in (
        ("old", old, [{"fold": 0, "dice": 0.5}, {"fold": 1, "dice": 0.4}], [{"fold": 0, "auc": 0.9}]),
        ("a", a, [{"fold": 0, "dice": 0.6}], []),
        ("b", b, [{"fold": 1, "dice": 0.7}], []),
    ):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(
            json.dumps({"provenance": prov, "segmentation": {"folds": seg}, "classification": {"folds": cls}})
        )
    record = {
        "provenance": {"command": "busi.py --merge"},
        "split": {"folds_tested": []},
        "segmentation": {"folds": []},
        "classification": {"folds": []},
    }
    bench.merge(record, files)
    assert record["segmentation"]["folds"] == [
        {"fold": 0, "dice": 0.6, "provenance": a},
        {"fold": 1, "dice": 0.7, "provenance": b},
    ]
    assert record["classification"]["folds"] == [{"fold": 0, "auc": 0.9, "provenance": old}]
    assert record["split"]["folds_tested"] == [0, 1] and record["merged_from"] == [old, a, b]


def test_network_options_become_a_plan_override_the_planner_applies(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import busi as bench

    from fingerprints import BUSI_LIKE
    from medsight.tasks.segmentation.plan import make_plan, read_overrides

    base = {"preset": "fast", "image_pixels": None, "flip_axes": None, "max_rotation": None}
    args = argparse.Namespace(**base, filters=[16, 32, 64, 128, 128], res_block=True)
    overrides = read_overrides(bench.plan_overrides(args, tmp_path))
    assert overrides == {"preset": "fast", "network": {"filters": [16, 32, 64, 128, 128], "res_block": True}}
    plan = make_plan(BUSI_LIKE, overrides=overrides)
    assert plan.network.filters == [16, 32, 64, 128, 128] and plan.network.res_block and plan.image_pixels == 8192
    # without them, the preset's name stands for the plan, as before
    assert bench.plan_overrides(argparse.Namespace(**base, filters=None, res_block=False), tmp_path) == Path("fast")


def test_mirroring_wins_only_when_its_mean_validation_dice_before_the_gate_is_higher() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import busi_tta

    def ways(one: float, mirrored: float) -> dict[str, Any]:
        return {"one_pass": {"val_dice_before_gate": one}, "mirrored": {"val_dice_before_gate": mirrored}}

    means, adopted = busi_tta.decide({0: ways(0.6, 0.7), 1: ways(0.7, 0.62)})
    assert adopted and abs(means["mirrored"] - 0.66) < 1e-9 and abs(means["one_pass"] - 0.65) < 1e-9
    assert busi_tta.decide({0: ways(0.6, 0.6)})[1] is False  # a tie keeps one pass
    assert busi_tta.decide({0: ways(0.6, 0.7), 1: ways(0.7, 0.55)})[1] is False


def test_a_folder_not_named_for_its_fold_is_refused_by_name() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import busi_tta

    assert busi_tta.fold_of(Path("out/fold3")) == 3
    with pytest.raises(SystemExit, match=r"seg_bundle: not a busi\.py fold folder"):
        busi_tta.fold_of(Path("out/fold3/seg_bundle"))
