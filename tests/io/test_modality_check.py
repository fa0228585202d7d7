"""``medsight predict`` refuses a DICOM input of a modality the model was not trained on (a chest X-ray model given
a CT slice still answers confidently), names the file and both modalities, and lets ``--any-modality`` through."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medsight.cli import main
from medsight.errors import MedsightError
from medsight.io import modality


@pytest.fixture(scope="module")
def samples(shared_data: Path) -> dict[str, Path]:
    root = shared_data / "dicom_samples"
    return {
        "CT": root / "pydicom_test_files" / "CT_small.dcm",
        "CR": root / "pydicom_data" / "RG3_J2KR.dcm",
        "US": root / "pydicom_data" / "US1_J2KR.dcm",
    }


@pytest.fixture(scope="module")
def ultrasound_bundle(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    out = tmp_path_factory.mktemp("us") / "bundle"
    argv = ["-q", "train", "--task", "classification", "medmnist:breastmnist", "--out", str(out), "--epochs", "1"]
    assert main(argv) == 0
    assert json.loads((out / "bundle.json").read_text())["data"]["modality"] == "ultrasound"
    return out


def test_a_dicom_input_of_another_modality_is_refused_by_name(samples: dict[str, Path]) -> None:
    with pytest.raises(MedsightError) as caught:
        modality.check("xray", [samples["CR"], samples["CT"]])
    assert caught.value.path == str(samples["CT"])
    assert "DICOM CT image" in caught.value.problem and "xray (CR, DX, RG)" in caught.value.problem
    modality.check("xray", [samples["CR"]])  # the modality it was trained on passes
    modality.check("ultrasound", [samples["US"]])
    modality.check("CT", [samples["CT"]])  # case does not matter (segmentation bundles say "CT")
    modality.check("unknown", [samples["CT"]])  # nothing known: nothing refused
    modality.check("my own words", [samples["CT"]])


def test_what_cannot_be_told_passes(samples: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    png = tmp_path / "image.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    ds = pydicom.dcmread(samples["CT"])
    del ds.Modality  # Type 1 in a CT image, but absent in the wild: nothing to judge by
    ds.save_as(tmp_path / "no_modality.dcm")
    ds.Modality = "OT"
    ds.save_as(tmp_path / "other.dcm")
    modality.check("xray", [png, tmp_path / "no_modality.dcm", tmp_path / "other.dcm"])
    series = tmp_path / "series"
    series.mkdir()
    (series / "notes.txt").write_text("not DICOM")
    (series / "slice.dcm").write_bytes(samples["CT"].read_bytes())
    with pytest.raises(MedsightError, match="DICOM CT image") as caught:
        modality.check("xray", [series])  # a series folder: the image series read from it speaks for it
    assert caught.value.path == str(series / "slice.dcm")


def test_predict_refuses_and_any_modality_overrides(
    ultrasound_bundle: Path, samples: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pred"
    capsys.readouterr()
    assert main(["predict", str(ultrasound_bundle), str(samples["US"]), str(samples["CR"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("medsight ")]
    assert len(errors) == 1 and "RG3_J2KR.dcm: a DICOM CR image" in errors[0] and "ultrasound (US)" in errors[0]
    assert "Traceback" not in err and not out.exists()
    argv = ["predict", str(ultrasound_bundle), str(samples["CR"]), "--any-modality", "--out", str(out)]
    assert main(argv) == 0
    assert [p["input"] for p in json.loads((out / "predictions.json").read_text())["predictions"]] == ["RG3_J2KR.dcm"]


def test_archive_mode_fails_the_wrong_modality_file_by_file(
    ultrasound_bundle: Path, samples: dict[str, Path], tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    for name in ("US", "CR"):
        (archive / f"{name}.dcm").write_bytes(samples[name].read_bytes())
    out = tmp_path / "out"
    assert main(["-q", "predict", str(ultrasound_bundle), str(archive), "--workers", "1", "--out", str(out)]) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["counts"] == {"failed": 1, "written": 1}
    failed = [f for f in report["files"] if f["status"] == "failed"]
    assert "a DICOM CR image" in failed[0]["reason"]
    again = tmp_path / "again"
    argv = ["-q", "predict", str(ultrasound_bundle), str(archive), "--workers", "1", "--any-modality", "--out"]
    assert main([*argv, str(again)]) == 0
    assert json.loads((again / "report.json").read_text())["counts"] == {"written": 2}


def test_a_manifest_of_dicom_images_records_their_modality(samples: dict[str, Path], tmp_path: Path) -> None:
    """The check needs the bundle to know its modality: a manifest of DICOM images takes it from their headers (one
    modality for all), a sidecar may declare it, and anything else stays ``unknown`` (nothing refused)."""
    from PIL import Image

    from medsight.data.manifest import load_manifest

    rows = ["path,label"]
    for k in range(12):
        name = f"cr_{k}.dcm"
        (tmp_path / name).write_bytes(samples["CR"].read_bytes())
        rows.append(f"{name},{'ab'[k % 2]}")
    csv = tmp_path / "manifest.csv"
    csv.write_text("\n".join(rows) + "\n")
    assert load_manifest(csv, spatial_size=[16, 16]).modality == "xray"
    (tmp_path / "manifest.json").write_text(json.dumps({"modality": "mammography"}))
    assert load_manifest(csv, spatial_size=[16, 16]).modality == "mammography"
    (tmp_path / "manifest.json").write_text(json.dumps({"modality": 3}))
    with pytest.raises(MedsightError, match="modality"):
        load_manifest(csv, spatial_size=[16, 16])
    (tmp_path / "manifest.json").unlink()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "one.png")
    csv.write_text("\n".join([*rows, "one.png,a"]) + "\n")  # one image without a DICOM header: nothing known
    assert load_manifest(csv, spatial_size=[16, 16]).modality == "unknown"
    assert modality.of_dicom([samples["CR"], samples["CT"]]) is None  # disagreeing headers: nothing known
    assert modality.of_dicom([samples["CT"]]) == "ct" and modality.accepted("ct") == frozenset({"CT"})
