"""Promotion and rollback: the service's worker runs the configured bundle until another is promoted, the promoted
one from the next job on, and the old one again after a rollback; incompatible or altered bundles are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from feedback.feedback_data import breast_manifest
from feedback.service_fixture import site_toml, store_cases
from medsight import runtime
from medsight.cli import main
from medsight.errors import MedsightError
from medsight.feedback import promotion
from medsight.serving.config import load_config
from medsight.serving.provenance import bundle_checksum
from medsight.serving.service import Service
from medsight.serving.worker import INFERENCE, run_inference


@pytest.fixture(scope="module")
def bundles(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("promote")
    data = breast_manifest(shared_data, tmp / "a", 0, 150)
    old, new = tmp / "old", tmp / "new"
    assert main(["-q", "train", str(data), "--out", str(old), "--epochs", "2", "--positive", "malignant"]) == 0
    more = breast_manifest(shared_data, tmp / "b", 150, 150)
    assert main(["-q", "train", str(more), "--out", str(new), "--epochs", "2", "--lr", "1e-2", "--init", str(old)]) == 0
    other = breast_manifest(shared_data, tmp / "c", 300, 60, labels={0: "lesion", 1: "clear"})
    assert main(["-q", "train", str(other), "--out", str(tmp / "other"), "--epochs", "1"]) == 0
    return {"old": old, "new": new, "other": tmp / "other", "tmp": tmp}


def run_job(service: Service, study_uid: str, series_uid: str, n: int) -> tuple[dict, float]:
    """Queue and run one inference job the way the scheduler would; (job result, p(malignant) written)."""
    job = service.queue.enqueue(
        INFERENCE, study_uid, "breast", {"series": [series_uid], "apply_per": "instance"}, dedupe_key=f"{study_uid}/{n}"
    )
    result = run_inference(service.ctx, job)
    entry = json.loads((service.ctx.results_dir / result["out"] / "predictions.json").read_text())["predictions"][0]
    return result, float(entry["probabilities"]["malignant"])


def test_the_worker_follows_promotion_and_rollback(bundles: dict[str, Path], shared_data: Path, tmp_path: Path) -> None:
    old, new = bundles["old"], bundles["new"]
    config = load_config(site_toml(tmp_path, "breast", old))
    data_dir = tmp_path / "service"
    finding = store_cases(data_dir, shared_data, 0, 1, patients=1)[0]
    service = Service(config)
    try:
        series_uid = service.store.instance(finding.sop_uid).series_uid
        image = service.store.instance(finding.sop_uid).path
        expected = {b: runtime.load(b).predict([image])[0].to_json()["probabilities"]["malignant"] for b in (old, new)}
        assert expected[old] != pytest.approx(expected[new], abs=1e-4)  # the two models tell apart

        result, p = run_job(service, finding.study_uid, series_uid, 1)
        assert Path(result["bundle"]) == old and p == pytest.approx(expected[old], abs=1e-5)

        route = config.route("breast")
        event = promotion.promote(service.engine, route, new, "tester")
        assert event.checksum == bundle_checksum(new)
        result, p = run_job(service, finding.study_uid, series_uid, 2)
        assert Path(result["bundle"]) == new.resolve() and p == pytest.approx(expected[new], abs=1e-5)

        promotion.rollback(service.engine, route, "tester")
        result, p = run_job(service, finding.study_uid, series_uid, 3)
        assert Path(result["bundle"]) == old and p == pytest.approx(expected[old], abs=1e-5)
        assert [e.action for e in promotion.history(service.engine, "breast")] == ["promote", "rollback"]
        with pytest.raises(MedsightError, match="uses its configured bundle: nothing to roll back"):
            promotion.rollback(service.engine, route, "tester")
    finally:
        service.engine.dispose()


def test_history_is_a_stack_and_the_cli_records_it(bundles: dict[str, Path], tmp_path: Path, capsys) -> None:
    site = site_toml(tmp_path, "breast", bundles["old"])
    copy = tmp_path / "copy"
    shutil.copytree(bundles["new"], copy)
    cfg = ["--config", str(site)]
    assert main(["models", "promote", "breast", str(bundles["new"]), *cfg]) == 0
    assert main(["models", "promote", "breast", str(copy), *cfg]) == 0
    assert main(["models", "rollback", "breast", *cfg]) == 0  # back to the first promotion, not to the configured one
    capsys.readouterr()
    assert main(["models", "list", *cfg]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0] == f"breast: {bundles['new'].resolve()}"
    assert [line.split()[1] for line in listed[1:]] == ["promote", "promote", "rollback"]
    audit = [json.loads(x) for x in (tmp_path / "service" / "audit.log").read_text().splitlines()]
    assert [r["action"] for r in audit] == ["model.promote", "model.promote", "model.rollback"]
    # a promoted bundle altered afterwards is refused, not run
    assert main(["models", "promote", "breast", str(copy), *cfg]) == 0
    meta = json.loads((copy / "bundle.json").read_text())
    meta["created"] = "2000-01-01T00:00:00+00:00"
    (copy / "bundle.json").write_text(json.dumps(meta))
    config = load_config(site)
    from medsight.serving.database import open_database

    engine = open_database(None, tmp_path / "service")
    with pytest.raises(MedsightError, match="changed after it was promoted"):
        promotion.current_bundle(engine, config.route("breast"))
    engine.dispose()


def test_a_bundle_that_cannot_serve_the_route_is_refused(
    bundles: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = site_toml(tmp_path, "breast", bundles["old"])
    assert main(["models", "promote", "breast", str(bundles["other"]), "--config", str(site)]) == 2
    err = capsys.readouterr().err
    assert (
        "cannot serve route breast: labels ['clear', 'lesion'] (route breast: ['malignant', 'normal, benign'])" in err
    )
    assert main(["models", "promote", "chest", str(bundles["new"]), "--config", str(site)]) == 2
    assert "no route 'chest'" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["onnx_garbage", "onnx_data_missing", "weights_garbage"])
def test_a_damaged_bundle_is_refused_at_promotion_not_at_the_routes_next_job(
    damage: str, bundles: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / damage
    shutil.copytree(bundles["new"], broken)
    if damage == "onnx_garbage":
        (broken / "model.onnx").write_bytes(bytes(range(256)) * 20)
        named, words = "model.onnx", "cannot load the ONNX model"
    elif damage == "onnx_data_missing":
        (broken / "model.onnx.data").unlink()
        named, words = "model.onnx", "cannot load the ONNX model"
    else:
        (broken / "model.pt").write_text("hello")
        named, words = "model.pt", "cannot load weights"
    site = site_toml(tmp_path, "breast", bundles["old"])
    assert main(["models", "promote", "breast", str(broken), "--config", str(site)]) == 2
    err = capsys.readouterr().err
    assert f"{broken / named}: {words}" in err and "Traceback" not in err
    assert main(["models", "list", "--config", str(site)]) == 0
    assert str(broken) not in capsys.readouterr().out  # nothing was recorded
