"""``medsight feedback export``: verdicts in the service database become a manifest ``medsight train`` reads, with
the readers' labels, pseudonyms instead of identifiers and a validation split that a later export never reshuffles;
then the loop closes: ``train --init`` on the export and ``compare`` on its frozen split."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from feedback.feedback_data import breast_manifest
from feedback.service_fixture import record, site_toml, store_cases
from medsight.cli import main
from medsight.review.verdicts import record_verdict
from medsight.serving.audit import AuditLog
from medsight.serving.database import open_database
from medsight.serving.provenance import bundle_checksum

KEY = "3c" * 32


def rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "manifest.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def site(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("site")
    data = breast_manifest(shared_data, tmp / "train", 0, 200)
    bundle = tmp / "breast_bundle"
    assert main(["-q", "train", str(data), "--out", str(bundle), "--epochs", "4", "--positive", "malignant"]) == 0
    config = site_toml(tmp, "breast", bundle)
    data_dir = tmp / "service"
    # a fixed feedback key: the frozen split (a keyed hash) is then the same on every run, with both labels on
    # each side (with a fresh random key the validation side could hold one label only: AUC undefined)
    key = data_dir / "feedback" / "breast" / "key"
    key.parent.mkdir(parents=True)
    key.write_text(KEY + "\n")
    os.chmod(key, 0o600)
    findings = store_cases(data_dir, shared_data, 0, 60, patients=40)  # 20 patients with two studies
    record(data_dir, findings, "breast", bundle_checksum(bundle))
    return {"tmp": tmp, "bundle": bundle, "config": config, "data_dir": data_dir, "findings": findings}


def test_export_writes_the_readers_labels_under_pseudonyms(site: dict, tmp_path: Path) -> None:
    out = tmp_path / "export"
    assert (
        main(["-q", "feedback", "export", "--model", "breast", "--out", str(out), "--config", str(site["config"])]) == 0
    )
    table = rows(out)
    findings = site["findings"]
    assert len(table) == len(findings) == 60
    text = (out / "manifest.csv").read_text() + (out / "export.json").read_text()
    assert "PAT" not in text and "DOE" not in text  # no patient identifier, no name
    assert not any(f.study_uid in text or f.sop_uid in text for f in findings)  # nor a UID
    by_pixels = {f.pixels.tobytes(): f for f in findings}
    patients: dict[str, set[str]] = {}
    for row in table:
        image = np.load(out / row["path"])
        assert image.shape == (28, 28)
        f = by_pixels[image.astype(np.uint8).tobytes()]  # the stored instance's own pixels
        assert row["label"] == f.label  # the reader's label, whatever the model said
        patients.setdefault(f.patient, set()).add(row["patient_id"])
        assert len(row["patient_id"]) == 16
    assert all(len(keys) == 1 for keys in patients.values())  # one pseudonym per patient
    sides: dict[str, set[str]] = {}
    for row in table:
        sides.setdefault(row["patient_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in sides.values())  # a patient's studies stay on one side
    summary = json.loads((out / "export.json").read_text())
    assert summary["frozen_split"]["units"] == 40 and summary["frozen_split"]["new_units"] == 40
    assert 0 < sum(summary["by_split"]["val"].values()) < 30
    assert json.loads((out / "manifest.json").read_text()) == {"positive": "malignant"}
    audit = [json.loads(line) for line in (site["data_dir"] / "audit.log").read_text().splitlines()]
    assert any(r["action"] == "feedback.export" and r["target"]["cases"] == 60 for r in audit)
    assert AuditLog(site["data_dir"] / "audit.log").verify()


def test_a_later_export_keeps_every_earlier_assignment(site: dict, shared_data: Path, tmp_path: Path) -> None:
    config, data_dir = site["config"], site["data_dir"]
    first = tmp_path / "first"
    assert main(["-q", "feedback", "export", "--model", "breast", "--out", str(first), "--config", str(config)]) == 0
    split_file = data_dir / "feedback" / "breast" / "split.json"
    before = json.loads(split_file.read_text())["assignments"]
    # new studies: 10 of patients seen before (PAT0000-PAT0009), 10 of new patients
    more = store_cases(data_dir, shared_data, 0, 10, patients=40, part="test")
    more += store_cases(data_dir, shared_data, 10, 10, patients=40, part="test", prefix="NEW")
    record(data_dir, more, "breast", "0" * 64, first=60)
    # a second reader disagrees with the first on one earlier finding: that finding is left out
    engine = open_database(None, data_dir)
    f0 = site["findings"][0]
    other = "malignant" if f0.label != "malignant" else "normal, benign"
    record_verdict(engine, study_uid=f0.study_uid, finding_id="breast-1/0", model="breast", model_version="0.1",
                   bundle_checksum="0" * 64, label=f0.label, probability=0.7, ai_positive=None, reader="dr_b",
                   role="radiologist", decision="disagree", reader_label=other, reader_positive=None,
                   source_sop_uids=[f0.sop_uid])  # fmt: skip
    engine.dispose()
    second = tmp_path / "second"
    assert main(["-q", "feedback", "export", "--model", "breast", "--out", str(second), "--config", str(config)]) == 0
    after = json.loads(split_file.read_text())["assignments"]
    assert {k: after[k] for k in before} == before  # never reshuffled
    old = {r["path"]: r["split"] for r in rows(first)}
    new = {r["path"]: r["split"] for r in rows(second)}
    assert all(new[p] == s for p, s in old.items() if p in new)
    summary = json.loads((second / "export.json").read_text())
    assert summary["left_out"] == {"readers settled on different labels": 1}
    assert summary["cases"] == 60 + 20 - 1
    assert summary["frozen_split"]["new_units"] == len(after) - len(before) > 0


def test_the_loop_closes_train_init_then_compare(site: dict, tmp_path: Path) -> None:
    export, child, report = tmp_path / "export", tmp_path / "child", tmp_path / "compare"
    cfg = str(site["config"])
    assert main(["-q", "feedback", "export", "--model", "breast", "--out", str(export), "--config", cfg]) == 0
    parent = site["bundle"]
    assert main(["-q", "train", str(export), "--out", str(child), "--epochs", "2", "--init", str(parent)]) == 0
    meta = json.loads((child / "bundle.json").read_text())
    assert meta["parent"]["checksum"] == bundle_checksum(parent)
    assert meta["data"]["split_method"] == "manifest"  # the frozen split, as exported
    assert (
        main(["-q", "compare", str(child), str(parent), str(export), "--out", str(report), "--bootstrap", "200"]) == 0
    )
    result = json.loads((report / "compare.json").read_text())
    n_val = sum(1 for r in rows(export) if r["split"] == "val")
    assert len({r["label"] for r in rows(export) if r["split"] == "val"}) == 2  # so the AUC difference is defined
    assert result["n"] == n_val and result["lineage"] == "NEW was fine-tuned from OLD"
    assert result["verdict"]["outcome"] in ("better", "worse", "no_difference")
    assert result["caveat"]  # scored on validation: said so


def test_an_unknown_model_is_an_error(site: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["feedback", "export", "--model", "chest", "--out", str(tmp_path / "x"), "--config", str(site["config"])]
    assert main(args) == 2
    assert "no route 'chest' in the configuration (routes: breast)" in capsys.readouterr().err


def test_a_reader_who_judged_a_study_and_its_rerun_is_one_case(site: dict, shared_data: Path, tmp_path: Path) -> None:
    """A re-run gives the same image a new finding id; the reader who judged both results once gave two training
    cases of one image (here with two labels), as the agreement once counted them twice. The export takes each
    reader's newest verdict per image, as the agreement now does."""
    config = site_toml(tmp_path, "breast", site["bundle"])
    data_dir = tmp_path / "service"
    key = data_dir / "feedback" / "breast" / "key"
    key.parent.mkdir(parents=True)
    key.write_text(KEY + "\n")
    os.chmod(key, 0o600)
    (image, *others) = store_cases(data_dir, shared_data, 0, 8, patients=8)
    record(data_dir, others, "breast", "0" * 64, first=10)
    engine = open_database(None, data_dir)
    for run, label in (("breast-1", "normal, benign"), ("breast-2", "malignant")):  # the result, then its re-run
        record_verdict(
            engine, study_uid=image.study_uid, finding_id=f"{run}/0", model="breast", model_version="0.1",
            bundle_checksum="0" * 64, label="malignant", probability=0.7, ai_positive=True, reader="dr_a",
            role="radiologist", decision="agree" if label == "malignant" else "disagree", reader_label=label,
            reader_positive=label == "malignant", edit=None, source_sop_uids=[image.sop_uid],
        )  # fmt: skip
    engine.dispose()
    out = tmp_path / "export"
    assert main(["-q", "feedback", "export", "--model", "breast", "--out", str(out), "--config", str(config)]) == 0
    table = rows(out)
    mine = [r for r in table if np.load(out / r["path"]).astype(np.uint8).tobytes() == image.pixels.tobytes()]
    assert len(table) == 8 and [r["label"] for r in mine] == ["malignant"]  # one case, the newest verdict's label
