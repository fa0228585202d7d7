"""The model lifecycle and trust tools on input as hospitals produce it: the drift monitor never says "no drift"
about studies it could not measure, an ensemble refuses members that take other input or other data, a promotion
refuses a bundle that would silently change a route's meaning, and the frozen feedback split is never reshuffled by
another key or read from a damaged file. Tiny bundles (seconds)."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from feedback.service_fixture import site_toml, store_cases
from medsight.cli import main
from medsight.data.fingerprint_stats import Sample, check, distribution_fingerprint
from medsight.errors import MedsightError
from medsight.feedback.splits import FrozenSplit
from medsight.monitoring import DriftMonitor
from medsight.tasks.segmentation.ensemble import check_members
from medsight.tasks.segmentation.plan import NETWORK
from medsight.training.bundle import Bundle
from tiny_bundle import train_tiny_bundle


def reference(n: int = 40) -> dict:
    """The training fingerprint of ``n`` 2D single-channel images (no bundle needed)."""
    rng = np.random.default_rng(0)
    samples = (Sample(rng.normal(100, 10, (1, 32, 32)), (1.0, 1.0)) for _ in range(n))
    return distribution_fingerprint(samples, ["background", "lesion"], "CT")


# ---------------------------------------------------------------------------------------------- drift monitor


def test_drift_monitor_refuses_nan_pixels_instead_of_saying_no_drift() -> None:
    monitor = DriftMonitor(reference())
    rng = np.random.default_rng(1)
    good = [rng.normal(100, 10, (1, 32, 32)) for _ in range(3)]
    partly_nan = rng.normal(100, 10, (1, 32, 32))
    partly_nan[0, :4] = np.nan
    with pytest.raises(MedsightError, match="non-finite"):
        monitor.update([*good, partly_nan])
    assert monitor.check().n_cases == 0  # the batch with the unmeasurable study recorded nothing, not 3 of 4
    with pytest.raises(MedsightError, match="non-finite"):
        monitor.update([np.full((1, 32, 32), np.inf, np.float32)] * 5)
    monitor.update(good)
    report = monitor.check()
    assert report.ready and not report.flagged  # the valid studies alone: same distribution, no drift


def test_drift_monitor_whose_window_cannot_hold_min_cases_is_refused() -> None:
    with pytest.raises(MedsightError, match="window 2 must hold at least min_cases 3"):
        DriftMonitor(reference(), window=2)
    with pytest.raises(MedsightError, match="min_cases"):
        DriftMonitor(reference(), min_cases=0)


def test_drift_monitor_flags_volumes_fed_to_a_2d_model() -> None:
    """3D series whose slices look like the 2D training images: every size, spacing and intensity compared matches,
    so only the number of spatial dimensions tells."""
    rng = np.random.default_rng(2)
    monitor = DriftMonitor(reference())
    monitor.update([rng.normal(100, 10, (1, 32, 32, 5)) for _ in range(10)])
    report = monitor.check()
    assert report.flagged and report.flagged_features == ["spatial dims"]
    same = DriftMonitor(reference())
    same.update([rng.normal(100, 10, (1, 32, 32)) for _ in range(10)])
    assert not same.check().flagged


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda fp: fp["cases"]["intensity_mean"].__setitem__(0, float("nan")), "cases.intensity_mean"),
        (lambda fp: fp.update(n_cases=0), "n_cases is 0"),
        (lambda fp: fp.update(intensity_quantiles=[]), "intensity_quantiles"),
        (lambda fp: fp.update(cases=[]), "'cases' is not an object"),
    ],
)
def test_a_damaged_recorded_fingerprint_is_refused_by_name(edit: object, problem: str) -> None:
    fp = copy.deepcopy(reference(5))
    edit(fp)  # type: ignore[operator]
    with pytest.raises(MedsightError, match=problem) as err:
        check(fp, "b/bundle.json: data.distribution")
    assert "b/bundle.json" in str(err.value)


# ------------------------------------------------------------------------------------------------- ensemble

MEMBER = {
    "task": "segmentation",
    "label_names": ["background", "lesion"],
    "network": {"name": NETWORK, "kwargs": {"in_channels": 1}},
    "plan": {"spatial_dims": 2, "patch_size": [128, 128], "normalisation": {"scheme": "zscore"}},
    "input": {"spatial_dims": 2, "n_channels": 1, "patch_size": [128, 128]},
    "data": {
        "source": "busi",
        "modality": "US",
        "val_ids": ["c1", "c2"],
        "case_hashes": {"train": [], "val": ["a", "b"]},
    },
}


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda m: m["data"].update(case_hashes={"train": [], "val": ["x", "y"]}), "same names .* other pixels"),
        (lambda m: m["input"].update(n_channels=3), "n_channels 3 differs from 1"),
        (lambda m: m["data"].update(modality="CT"), "trained on CT images"),
    ],
)
def test_ensemble_refuses_members_of_other_data_channels_or_modality(
    edit: object, problem: str, tmp_path: Path
) -> None:
    other = copy.deepcopy(MEMBER)
    edit(other)  # type: ignore[operator]
    first, second = Bundle(tmp_path / "first", copy.deepcopy(MEMBER)), Bundle(tmp_path / "second", other)
    check_members([first, Bundle(tmp_path / "again", copy.deepcopy(MEMBER))])  # the same record is accepted
    with pytest.raises(MedsightError, match=problem) as err:
        check_members([first, second])
    assert str(tmp_path / "second") in str(err.value)


# --------------------------------------------------------------------------- tiny bundles: promote, compare, feedback


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny binary bundle ('square' positive) and the same training with 'clear' as the positive class."""
    root = tmp_path_factory.mktemp("lifecycle")
    square = train_tiny_bundle(root / "a")
    clear = root / "clear"
    args = ["-q", "train", "--task", "classification", str(root / "a" / "manifest.csv"), "--out", str(clear)]
    assert (
        main([*args, "--epochs", "1", "--seed", "0", "--tta", "off", "--ensemble", "off", "--positive", "clear"]) == 0
    )
    return {"root": root, "square": square, "clear": clear}


def with_modality(bundle: Path, folder: Path, modality: str) -> Path:
    """A copy of ``bundle`` whose bundle.json records another training modality."""
    shutil.copytree(bundle, folder)
    meta = json.loads((folder / "bundle.json").read_text())
    meta["data"]["modality"] = modality
    (folder / "bundle.json").write_text(json.dumps(meta))
    return folder


def promote(config: Path, bundle: Path) -> int:
    return main(["-q", "models", "promote", "cr", str(bundle), "--config", str(config)])


def test_promotion_refuses_a_bundle_with_another_positive_class_or_modality(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = site_toml(tmp_path, "cr", tiny["square"])
    assert promote(config, tiny["clear"]) == 2  # same labels, but 'clear' would now be the finding reported
    err = capsys.readouterr().err
    assert "positive class 'clear' (route cr: 'square')" in err and len(err.strip().splitlines()) == 1
    xray = with_modality(tiny["square"], tmp_path / "xray", "xray")
    config = site_toml(tmp_path, "cr", xray)
    assert promote(config, with_modality(tiny["square"], tmp_path / "mr", "MR")) == 2
    assert "modality 'MR' (route cr: 'xray')" in capsys.readouterr().err
    assert promote(config, with_modality(tiny["square"], tmp_path / "dx", "DX")) == 0  # DX is an X-ray too
    assert main(["-q", "models", "list", "--config", str(config)]) == 0
    listed = capsys.readouterr().out
    assert listed.count(" promote ") == 1 and str(tmp_path / "dx") in listed  # only the compatible one recorded


def test_frozen_split_refuses_another_key_and_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    first, other = b"\x01" * 32, b"\x02" * 32
    split = FrozenSplit.open(path, first)
    sides = {u: split.side(first, u) for u in ("p1", "p2", "p3")}
    split.save()
    again = FrozenSplit.open(path, first)
    assert {u: again.side(first, u) for u in sides} == sides and again.added == 0
    with pytest.raises(MedsightError, match="another feedback key") as err:
        FrozenSplit.open(path, other)
    assert str(path) in str(err.value)
    damaged_files = {
        "[]": "not a frozen split",
        '{"version": 1, "val_share": "x", "assignments": {}}': "val_share",
        '{"version": 1, "val_share": 5, "assignments": {}}': "val_share",
    }
    for damaged, problem in damaged_files.items():
        path.write_text(damaged)
        with pytest.raises(MedsightError, match=problem):
            FrozenSplit.open(path, first)


def test_feedback_export_with_another_key_keeps_the_frozen_split(
    tiny: dict[str, Path], shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medsight.review.verdicts import record_verdict
    from medsight.serving.database import open_database
    from medsight.serving.provenance import bundle_checksum

    monkeypatch.delenv("MEDSIGHT_DEID_KEY", raising=False)
    config = site_toml(tmp_path, "cr", tiny["square"])
    data_dir = tmp_path / "service"
    findings = store_cases(data_dir, shared_data, 0, 8, patients=8)
    engine = open_database(None, data_dir)
    for i, f in enumerate(findings):
        label = ["clear", "square"][i % 2]
        record_verdict(
            engine, study_uid=f.study_uid, finding_id=f"cr-1/{i}", model="cr", model_version="0.1",
            bundle_checksum=bundle_checksum(tiny["square"]), label=label, probability=0.7,
            ai_positive=label == "square", reader="dr_a", role="radiologist", decision="agree", reader_label=label,
            reader_positive=label == "square", edit=None, source_sop_uids=[f.sop_uid],
        )  # fmt: skip
    engine.dispose()
    export = ["-q", "feedback", "export", "--model", "cr", "--config", str(config), "--out"]
    assert main([*export, str(tmp_path / "e1")]) == 0
    split = data_dir / "feedback" / "cr" / "split.json"
    before = split.read_text()
    monkeypatch.setenv("MEDSIGHT_DEID_KEY", "ab" * 32)  # another key: other pseudonyms, all "new" patients
    assert main([*export, str(tmp_path / "e2")]) == 2
    assert split.read_text() == before and not (tmp_path / "e2").exists()  # nothing reassigned, nothing written
    assert os.environ["MEDSIGHT_DEID_KEY"] not in before
