"""Other sites (issue 9, §5): the shift statistics, recalibration, the drift monitor, and ``medsight evaluate`` writing
the shift report on a simulated other site (labelled) and on a real MR DICOM series from another scanner
(unlabelled), against a bundle whose training fingerprint was recorded at training time (or recomputed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsight.data.fingerprint_stats import Sample, distribution_fingerprint
from medsight.evaluation.shift import PSI_THRESHOLD, compare, psi, recalibration
from medsight.monitoring import DriftMonitor, training_fingerprint
from medsight.tasks import segmentation
from medsight.tasks.segmentation import SegmentationOptions
from medsight.training.bundle import load_bundle

NAMES = ["background", "lesion"]


def _site(rng: np.random.Generator, n: int, gain: float = 1.0, spacing: float = 1.0, size: int = 32) -> list[Sample]:
    """Synthetic 3D cases: a bright blob (the label) in noise; ``gain`` and ``spacing`` make another 'scanner'."""
    out = []
    for _ in range(n):
        image = rng.normal(100, 20, (1, size, size, size)).astype(np.float32)
        label = np.zeros((size, size, size), np.int64)
        r = int(rng.integers(4, 7))
        c = size // 2
        label[c - r : c + r, c - r : c + r, c - r : c + r] = 1
        image[0][label == 1] += 80
        out.append(Sample(image * gain, (spacing,) * 3, label))
    return out


def test_same_site_is_not_flagged_and_another_is_with_statistics_and_thresholds() -> None:
    rng = np.random.default_rng(0)
    reference = distribution_fingerprint(_site(rng, 60), NAMES, "MRI")
    same = distribution_fingerprint(_site(rng, 20), NAMES, "MRI")
    other = distribution_fingerprint(_site(rng, 20, gain=3.0, spacing=0.7), NAMES, "CT")
    assert not [f.feature for f in compare(reference, same) if f.flagged]
    shifted = {f.feature: f for f in compare(reference, other)}
    for name in ("intensity_mean", "intensity_p99", "spacing_0", "intensity (raw)", "modality"):
        assert shifted[name].flagged, name
    ks = shifted["intensity_mean"]
    assert ks.statistic == "KS" and ks.value == 1.0 and ks.p_value is not None and ks.p_value < ks.threshold
    assert shifted["intensity (raw)"].statistic == "PSI" and shifted["intensity (raw)"].threshold == PSI_THRESHOLD
    assert not shifted["intensity (z-scored)"].flagged  # a gain is undone by the per-image z-score
    assert not shifted["prevalence_lesion"].flagged  # same anatomy


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    q = np.percentile(np.random.default_rng(1).normal(0, 1, 100000), np.linspace(0, 100, 101))
    assert psi(q, q) < 1e-9
    assert psi(q, q + 1.0) > PSI_THRESHOLD


def test_recalibration_on_a_small_sample_restores_calibration() -> None:
    """Overconfident per-pixel probabilities (logits sharpened 3x): a temperature fitted on 2 cases lowers the ECE
    of the other 4."""
    rng = np.random.default_rng(2)
    probs, labels = [], []
    for _ in range(6):
        logit = rng.normal(0, 1.5, (40, 40))
        truth = (rng.random((40, 40)) < 1 / (1 + np.exp(-logit))).astype(np.int64)
        sharp = 1 / (1 + np.exp(-3 * logit))
        probs.append(np.stack([1 - sharp, sharp]))
        labels.append(truth)
    result = recalibration(probs, labels, n_fit=2)
    assert result["n_scored"] == 4 and 2.0 < result["temperature"] < 4.5
    assert result["ece_after"] < 0.5 * result["ece_before"] and result["restores_calibration"]


def test_drift_monitor_flags_inputs_and_outputs_with_statistic_and_threshold() -> None:
    rng = np.random.default_rng(3)
    reference = distribution_fingerprint(_site(rng, 60), NAMES, "MRI")
    monitor = DriftMonitor(reference, model="synthetic", min_cases=3)
    assert not monitor.check().ready
    same = _site(rng, 10)
    monitor.update(same, [s.label for s in same], modality="MRI")
    report = monitor.check()
    assert report.ready and not report.flagged, report.summary()
    drifted = DriftMonitor(reference, model="synthetic")
    other = _site(rng, 10, gain=0.2)
    everywhere = [np.ones_like(s.label) for s in other]  # a model that now segments the whole image
    drifted.update(other, everywhere, modality="MRI")
    verdict = drifted.check()
    assert verdict.flagged and "predicted prevalence_lesion" in verdict.flagged_features
    assert "intensity_mean" in verdict.flagged_features
    row = next(f for f in verdict.features if f.feature == "predicted prevalence_lesion")
    assert row.statistic == "KS" and row.p_value is not None and row.p_value < row.threshold
    assert json.loads(json.dumps(verdict.to_json()))["flagged"] is True and "DRIFT" in verdict.summary()


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
def hippo_bundle(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("shift")
    (tmp / "plan.json").write_text(json.dumps(TINY))
    options = SegmentationOptions(epochs=1, plan=tmp / "plan.json", max_cases=8)
    segmentation.TASK.train(str(shared_data / "msd_hippocampus"), tmp / "bundle", options)
    return tmp / "bundle"


def test_training_records_the_fingerprint_and_an_older_bundle_gets_it_recomputed(
    hippo_bundle: Path, tmp_path: Path
) -> None:
    recorded = load_bundle(hippo_bundle).meta["data"]["distribution"]
    assert recorded["n_cases"] == 8 and "prevalence_label_1" in recorded["cases"] and "spacing_2" in recorded["cases"]
    older = tmp_path / "older"
    shutil.copytree(hippo_bundle, older)
    meta = json.loads((older / "bundle.json").read_text())
    del meta["data"]["distribution"]
    (older / "bundle.json").write_text(json.dumps(meta))
    assert training_fingerprint(load_bundle(older)) == recorded  # the same code on the same cases


def _other_site(shared_data: Path, root: Path, ids: list[str]) -> Path:
    """Held-out Hippocampus cases as a simulated other scanner (intensities x0.01 + 50, voxels declared 0.8 mm), all
    but the first as the site's labelled test split (imagesTs/labelsTs)."""
    src = shared_data / "msd_hippocampus"
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / folder).mkdir(parents=True)
    for k, cid in enumerate(ids):
        img = nib.load(str(src / "imagesTr" / f"{cid}.nii.gz"))
        lab = nib.load(str(src / "labelsTr" / f"{cid}.nii.gz"))
        affine = img.affine.copy()
        affine[:3, :3] *= 0.8
        data = np.asarray(img.dataobj, np.float32) * 0.01 + 50
        images, labels = ("imagesTr", "labelsTr") if k == 0 else ("imagesTs", "labelsTs")
        nib.save(nib.Nifti1Image(data, affine), str(root / images / f"{cid}.nii.gz"))
        nib.save(nib.Nifti1Image(np.asarray(lab.dataobj, np.uint8), affine), str(root / labels / f"{cid}.nii.gz"))
    return root


def _medsight(args: list[str], tmp_path: Path, shared_data: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "MEDSIGHT_THREADS": "1",
        "PATH": "/usr/bin:/bin",
        "MEDSIGHT_CACHE": str(tmp_path / "cache"),
        "MEDSIGHT_DATA": str(shared_data.resolve()),
    }
    return subprocess.run(
        [sys.executable, "-m", "medsight", *args], env=env, capture_output=True, text=True, timeout=600
    )


def test_evaluate_on_another_site_writes_the_card_and_the_shift_report(
    hippo_bundle: Path, shared_data: Path, tmp_path: Path
) -> None:
    test_ids = load_bundle(hippo_bundle).meta["data"]["test_ids"][:7]
    site = _other_site(shared_data, tmp_path / "site_b", test_ids)
    out = tmp_path / "eval"
    args = ["evaluate", str(hippo_bundle), str(site), "--out", str(out), "--bootstrap", "20", "--recalibrate", "2"]
    run = _medsight(args, tmp_path, shared_data)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "card.html").is_file() and (out / "metrics.json").is_file()
    report = json.loads((out / "shift.json").read_text())
    flagged = set(report["flagged"])
    assert {"intensity (raw)", "intensity_mean", "spacing_0"} <= flagged
    assert "intensity (z-scored)" not in flagged  # the plan's per-image z-score undoes a gain and an offset
    rows = {m["metric"]: m for m in report["metrics"]}
    assert rows["dice"]["external"]["ci95"] is not None and rows["dice"]["internal"]["value"] is not None
    rec = report["recalibration"]
    assert (
        rec["n_fit"] == 2
        and rec["n_scored"] == 4
        and rec["temperature"] > 0
        and rec["ece_before"] >= 0
        and rec["ece_after"] >= 0
    )
    assert "Shift report" in (out / "shift.html").read_text() and "shift report:" in run.stdout


def test_shift_only_on_a_real_mr_series_from_another_scanner(
    hippo_bundle: Path, shared_data: Path, tmp_path: Path
) -> None:
    series = shared_data / "udacity_brain_mr_dicom" / "Study3" / "11-T1post-18670"
    out = tmp_path / "shift"
    run = _medsight(
        ["evaluate", str(hippo_bundle), str(series), "--shift-only", "--out", str(out)], tmp_path, shared_data
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "shift.json").read_text())
    assert report["current"]["n_cases"] == 1
    features = {f["feature"]: f for f in report["features"]}
    assert features["modality"]["current"] == "MR"
    for name in ("size_0", "spacing_2", "intensity (raw)"):
        assert features[name]["flagged"], name  # 320x280x22 at 0.69x0.69x5 mm vs ~35x50x36 crops at 1 mm
    assert "predicted prevalence_label_1" in features
    assert "Albus" not in (out / "shift.html").read_text() and "PGBM" not in (out / "shift.json").read_text()
