"""Folder adapters, label validation, stored folds and the plan derived from real data (Hippocampus, DRIVE)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsight import tasks
from medsight.data.folds import derive
from medsight.errors import MedsightError
from medsight.tasks.segmentation.data import fingerprint, folds_for, heldout_ids, load_case, open_dataset, recognises
from medsight.tasks.segmentation.plan import (
    NetworkPlan,
    SegmentationPlan,
    SegmentationPlanner,
    describe,
    make_plan,
    topology_for,
)


def test_hippocampus_is_recognised_folded_and_planned(shared_data: Path) -> None:
    root = shared_data / "msd_hippocampus"
    assert recognises(str(root)) and tasks.detect(str(root)) == "segmentation"
    ds = open_dataset(root)
    assert ds.layout == "msd" and ds.spatial_dims == 3 and len(ds.train) == 260
    assert ds.labels == {0: "background", 1: "label_1", 2: "label_2"}  # inferred: no dataset.json
    assert ds.modality == "unknown" and not ds.official_test

    folds = folds_for(ds)
    again = folds_for(ds)
    assert folds.folds == again.folds and folds.test == again.test  # stored: every run sees the same split
    held = set(heldout_ids(ds, folds))
    assert len(held) == 52 and len(folds.folds) == 5
    assert sorted(c for f in folds.folds for c in f) == sorted(c.id for c in ds.train if c.id not in held)
    for k in range(5):
        train, val = folds.train_val(k)
        assert not set(train) & set(val) and not (set(train) | set(val)) & held

    train, val = folds.train_val(0)
    cases = [load_case(ds, ds.case(i)) for i in train[:24]]
    fp = fingerprint(ds, cases)
    assert fp["spacing_median"] == [1.0, 1.0, 1.0] and fp["n_channels"] == 1
    assert 30 <= fp["shape_median"][0] <= 40 and 44 <= fp["shape_median"][1] <= 56
    assert 0 < fp["class_frequency"]["label_1"] < 0.1
    plan = make_plan(fp, "cpu")
    assert isinstance(plan, SegmentationPlan) and isinstance(plan.network, NetworkPlan)
    assert plan.resample is False and plan.target_spacing == [1.0, 1.0, 1.0]
    assert plan.normalisation.scheme == "zscore"
    factor = np.prod(np.asarray(plan.network.strides), axis=0)
    assert all(p % f == 0 for p, f in zip(plan.patch_size, factor, strict=True))
    assert all(p >= s for p, s in zip(plan.patch_size, fp["shape_median"], strict=True))  # one patch covers a case
    assert plan.network.out_channels == 3 and plan.network.spatial_dims == 3
    assert plan.batch_size >= 2
    assert plan.time_budget_s is not None and plan.time_budget_s <= 20 * 60  # a default CPU run fits 20 minutes
    assert SegmentationPlan.from_json(plan.to_json()) == plan  # the typed plan round-trips exactly
    words = describe(plan, fp)
    assert any("z-scored" in w for w in words) and any("no resampling" in w for w in words)


def test_drive_is_recognised_with_fov_second_observer_and_planned(shared_data: Path) -> None:
    root = shared_data / "drive"
    assert recognises(str(root))
    ds = open_dataset(root)
    assert ds.layout == "pairs" and ds.spatial_dims == 2 and ds.official_test
    assert len(ds.train) == 20 and len(ds.test) == 20
    assert ds.labels == {0: "background", 1: "foreground"} and ds.modality == "RGB"
    assert all(c.roi is not None for c in ds.train) and all(c.second is not None for c in ds.test)
    case = load_case(ds, ds.test[0])
    assert case.image.shape == (3, 584, 565) and case.label is not None and set(np.unique(case.label)) == {0, 1}
    assert case.roi is not None and case.roi.dtype == bool and case.second is not None
    folds = folds_for(ds)
    assert sorted(heldout_ids(ds, folds)) == sorted(c.id for c in ds.test)
    assert not set(folds.dev) & set(heldout_ids(ds, folds))

    fp = fingerprint(ds, [load_case(ds, c) for c in ds.train[:4]])
    plan = make_plan(fp, "cpu")
    assert plan.normalisation.scheme == "zscore_per_channel"
    assert plan.network.in_channels == 3 and plan.network.out_channels == 2
    assert plan.patch_size[0] < 584 and np.prod(plan.patch_size) <= 1.25 * 128 * 128
    assert plan.network.kernel_size[0] == [3, 3]
    over = make_plan(fp, "cpu", {"patch_size": [64, 64], "batch_size": 4, "test_time_flips": False})
    assert over.patch_size == [64, 64] and over.batch_size == 4 and over.test_time_flips is False
    assert len(over.network.strides) == 5  # topology re-derived for the smaller patch: 64 → 4 after 4 pools
    nested = make_plan(fp, "cpu", {"network": {"filters": [8, 16, 32, 64, 64]}, "optimizer": {"lr": 0.01}})
    assert nested.network.filters == [8, 16, 32, 64, 64] and nested.network.strides == plan.network.strides
    assert nested.optimizer.lr == 0.01 and nested.optimizer.weight_decay == plan.optimizer.weight_decay
    with pytest.raises(MedsightError, match="'patch_sise'"):
        make_plan(fp, "cpu", {"patch_sise": [64, 64]})
    with pytest.raises(MedsightError, match=r"'network\.filtres'"):
        make_plan(fp, "cpu", {"network": {"filtres": [8]}})
    with pytest.raises(MedsightError, match=r"'optimizer\.momentum'"):
        make_plan(fp, "cpu", {"optimizer": {"momentum": 0.9}})


class _SmallerPatches(SegmentationPlanner):
    """A planner that changes one rule; every later rule (topology, batch) follows it."""

    def determine_patch_size(self, shape: np.ndarray, spacing: list[float]) -> list[int]:
        return [32, 32]


def test_planner_steps_can_be_overridden() -> None:
    fp = {
        "n_cases": 100,
        "spatial_dims": 2,
        "n_channels": 1,
        "modality": "CT",
        "spacing_median": [0.5, 0.5],
        "spacing_min": [0.4, 0.5],
        "spacing_max": [0.6, 0.5],
        "shape_median": [512.0, 512.0],
        "foreground_intensity": [{"mean": 40.0, "std": 20.0, "p00_5": -100.0, "p99_5": 200.0}],
        "class_frequency": {"background": 0.9, "lesion": 0.1},
    }
    plan = _SmallerPatches(fp, "cpu").plan()
    assert plan.patch_size == [32, 32] and len(plan.network.strides) == 4  # 32 → 4 after 3 pools
    assert plan.resample is True and plan.normalisation.scheme == "ct" and plan.normalisation.clip == [[-100.0, 200.0]]
    assert plan.batch_size == 8 * 128 * 128 // (32 * 32)


def test_topology_follows_anisotropic_spacing() -> None:
    topo = topology_for([20, 192, 160], [5.0, 0.8, 0.8])
    assert topo["strides"][1][0] == 1 and topo["strides"][1][1:] == [2, 2]  # the coarse axis is not pooled at first
    assert topo["kernels"][0][0] == 1  # nor convolved across


def _nifti(path: Path, arr: np.ndarray, affine: np.ndarray | None = None) -> None:
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))


def _msd(tmp: Path, label: np.ndarray, label_affine: np.ndarray | None = None) -> Path:
    (tmp / "imagesTr").mkdir(parents=True)
    (tmp / "labelsTr").mkdir()
    _nifti(tmp / "imagesTr" / "case_001_0000.nii.gz", np.random.default_rng(0).random((8, 8, 8), dtype=np.float32))
    _nifti(tmp / "labelsTr" / "case_001.nii.gz", label, label_affine)
    (tmp / "dataset.json").write_text('{"labels": {"0": "background", "1": "tumour"}, "channel_names": {"0": "CT"}}')
    return tmp


def test_labels_are_validated(tmp_path: Path) -> None:
    good = np.zeros((8, 8, 8), np.uint8)
    good[2:4, 2:4, 2:4] = 1
    ds = open_dataset(_msd(tmp_path / "ok", good))
    assert ds.modality == "CT" and ds.labels == {0: "background", 1: "tumour"} and ds.train[0].id == "case_001"
    assert load_case(ds, ds.train[0]).label is not None

    fractional = good.astype(np.float32) * 0.5
    ds = open_dataset(_msd(tmp_path / "frac", fractional))
    with pytest.raises(MedsightError, match="integer classes"):
        load_case(ds, ds.train[0])
    ds = open_dataset(_msd(tmp_path / "shape", np.zeros((8, 8, 7), np.uint8)))
    with pytest.raises(MedsightError, match="does not match its image"):
        load_case(ds, ds.train[0])
    ds = open_dataset(_msd(tmp_path / "affine", good, np.diag([2.0, 1.0, 1.0, 1.0])))
    with pytest.raises(MedsightError, match="geometry"):
        load_case(ds, ds.train[0])
    ds = open_dataset(_msd(tmp_path / "undeclared", good * 3))
    with pytest.raises(MedsightError, match="not declared"):
        load_case(ds, ds.train[0])
    with pytest.raises(MedsightError, match="not a segmentation folder"):
        open_dataset(tmp_path)


def test_folds_keep_patients_together() -> None:
    ids = [f"c{i:02d}" for i in range(30)]
    patients = [f"p{i // 3}" for i in range(30)]  # three images per patient
    folds = derive(ids, patients)
    where = {}
    for k, f in enumerate([folds.test, *folds.folds]):
        for c in f:
            where.setdefault(patients[ids.index(c)], set()).add(k)
    assert all(len(v) == 1 for v in where.values())
    assert derive(ids, patients).folds == folds.folds  # deterministic
