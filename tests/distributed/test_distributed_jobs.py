"""Ray on a local 2-CPU cluster in a loopback-only network namespace: DDP training, and batch jobs that survive a
killed worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import raycluster

from medsight import tasks
from medsight.distributed.predict import predict_archive
from medsight.privacy.run import LEDGER, STAGING, deidentify

KEY = bytes(range(32))


@pytest.fixture(scope="module")
def ray_cluster(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    env = {
        "MEDSIGHT_DATA": str(shared_data.resolve()),
        "MEDSIGHT_THREADS": "1",
        "MEDSIGHT_CACHE": str(tmp_path_factory.mktemp("raycache")),
    }
    yield from raycluster.start(env)


@pytest.fixture(scope="module")
def bundle(ray_cluster: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BreastMNIST classifier trained for one epoch by 2 DDP ranks on Ray Train."""
    from medsight.distributed.train import train

    out = tmp_path_factory.mktemp("ddp") / "bundle"
    options = tasks.get("classification").Options.from_mapping({"seed": 0, "epochs": 1}, "classification")
    train("classification", "medmnist:breastmnist", out, options, workers=2)
    return out


def test_cluster_is_one_local_node_reachable_on_loopback_only(ray_cluster: ModuleType) -> None:
    # Ray listens on every interface of its node: the test cluster's node is a network namespace with only ``lo``
    nodes = ray_cluster.nodes()
    assert len(nodes) == 1 and nodes[0]["Alive"]
    assert nodes[0]["NodeManagerAddress"] == "127.0.0.1"
    interfaces = [line.split(":")[0].strip() for line in Path("/proc/thread-self/net/dev").read_text().splitlines()[2:]]
    assert interfaces == ["lo"], interfaces
    assert ray_cluster.cluster_resources()["CPU"] == 2


def test_two_rank_training_writes_a_working_bundle(bundle: Path) -> None:
    from medsight.training.bundle import load_bundle

    meta = load_bundle(bundle).meta
    assert meta["training"]["epochs_run"] == 1
    assert 0.5 < meta["metrics"]["val"]["auc"] <= 1.0  # learned something in one epoch on 2 ranks


def test_deid_on_ray_survives_a_killed_worker(ray_cluster: ModuleType, shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "udacity_brain_mr_dicom"
    inputs = sorted(src.rglob("*.dcm"))
    out = tmp_path / "out"
    killed: list[int] = []
    staging = out / STAGING
    thread = raycluster.kill_one_worker_when(lambda: len(list(staging.glob("*.json"))) > 3, killed)
    result = deidentify(src, out, key=KEY, workers=2, audit_log=None, progress=False, address="auto")
    thread.join()
    assert killed, "no worker was killed: the test proved nothing"
    counts = result.report.counts
    assert counts["written"] == len(inputs) and counts["not_processed"] == 0
    outputs = sorted(out.rglob("*.dcm"))
    assert len(outputs) == len(inputs) == len({p.name for p in outputs})  # every file written, once
    assert not staging.exists() and (out / LEDGER).exists()
    # a re-run finds every file finished and writes nothing
    stamps = {p: p.stat().st_mtime_ns for p in outputs}
    again = deidentify(src, out, key=KEY, workers=2, audit_log=None, progress=False, address="auto")
    assert again.resumed == counts["files_seen"] and again.report.counts["written"] == len(inputs)
    assert {p: p.stat().st_mtime_ns for p in sorted(out.rglob("*.dcm"))} == stamps


def test_deid_resumes_after_a_crash_while_placing(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local path too: a run that dies before placing its outputs leaves marks; the re-run redoes nothing."""
    from medsight.privacy import run

    src = shared_data / "udacity_brain_mr_dicom" / "Study3" / "11-T1post-18670"
    n = len(list(src.glob("*.dcm")))
    out = tmp_path / "out"
    calls: list[str] = []
    original = run.process_file
    monkeypatch.setattr(run, "_place_outputs", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("crash")))
    with pytest.raises(RuntimeError):
        deidentify(src, out, key=KEY, workers=1, audit_log=None, progress=False)
    assert len(list((out / STAGING).glob("*.dcm"))) == n
    assert not [p for p in out.rglob("*.dcm") if STAGING not in str(p)]
    monkeypatch.undo()
    monkeypatch.setattr(run, "process_file", lambda *a, **k: calls.append("x") or original(*a, **k))
    result = deidentify(src, out, key=KEY, workers=1, audit_log=None, progress=False)
    assert calls == [] and result.resumed == n
    assert result.report.counts["written"] == n and len(list(out.rglob("*.dcm"))) == n


def test_predict_archive_on_ray_survives_a_killed_worker(
    bundle: Path, ray_cluster: ModuleType, shared_data: Path, tmp_path: Path
) -> None:
    from PIL import Image

    archive = tmp_path / "archive"
    (archive / "sub").mkdir(parents=True)
    images = np.load(shared_data / "medmnist" / "breastmnist.npz")["test_images"][:96]
    for i, image in enumerate(images):
        Image.fromarray(image).save(archive / ("sub" if i % 2 else "") / f"case{i:03d}.png")
    (archive / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    killed: list[int] = []
    thread = raycluster.kill_one_worker_when(lambda: len(list((out / "results").glob("*"))) > 4, killed)
    report = predict_archive(bundle, archive, out, workers=2, address="auto", progress=False)
    thread.join()
    assert killed, "no worker was killed: the test proved nothing"
    assert report["files_seen"] == 97 and report["counts"] == {"written": 96, "skipped": 1}  # the text file
    folders = sorted((out / "results").iterdir())
    assert len(folders) == 96 and all((f / "predictions.json").exists() for f in folders)
    skipped = [f for f in report["files"] if f["status"] == "skipped"]
    assert "notes.txt" not in str(report) and skipped[0]["reason"].startswith("not an image file")
    # resumable: a second run finds everything done and writes nothing
    stamps = {f: f.stat().st_mtime_ns for f in folders}
    again = predict_archive(bundle, archive, out, workers=1, progress=False)
    assert again["processed_this_run"] == 0 and again["finished_earlier"] == 97
    assert {f: f.stat().st_mtime_ns for f in sorted((out / "results").iterdir())} == stamps


def test_missing_ray_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from medsight.distributed.cluster import require_ray
    from medsight.errors import MedsightError

    real = builtins.__import__

    def fake(name: str, *args: object, **kwargs: object) -> object:
        if name == "ray":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(MedsightError, match=r"pip install 'ray\[train\]==2.60.0'"):
        require_ray()


def test_workers_refused_for_tasks_that_do_not_train_on_shared_batches(tmp_path: Path) -> None:
    from medsight.distributed.train import train
    from medsight.errors import MedsightError

    with pytest.raises(MedsightError, match="segmentation task trains in one process"):
        train("segmentation", "x", tmp_path / "b", None, workers=2)
