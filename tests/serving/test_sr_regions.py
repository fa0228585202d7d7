"""SR findings with image regions (boxes, points) on a real CR radiograph and a real MR slice."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from medsight.errors import MedsightError
from medsight.io.dicom import read_datasets, read_series
from medsight.serving.dicom_objects import Finding, Label, read_sr, write_sr
from serving.test_dicom_objects import dciodvfy_errors


def _cr(root: Path) -> list[Dataset]:
    return read_datasets([root / "dicom_samples" / "pydicom_data" / "RG3_J2KR.dcm"])


def _mr(root: Path) -> list[Dataset]:
    volume = read_series(root / "udacity_brain_mr_dicom" / "Study3" / "11-T1post-18670")
    return read_datasets(volume.files[10:11])


@pytest.mark.parametrize("source", [_cr, _mr], ids=["cr", "mr"])
def test_boxes_and_point_are_valid_and_read_back(source, shared_data: Path, tmp_path: Path) -> None:
    datasets = source(shared_data)
    ds = datasets[0]
    rows, cols = int(ds.Rows), int(ds.Columns)
    boxes = [(10.25, 20.5, 60.75, 90.125), (cols / 2, rows / 3, cols - 0.5, float(rows))]  # one up to the edge
    point = (cols / 4 + 0.5, rows / 5)
    findings = [
        Finding("mass", 0.91, image_indices=(0,), box=boxes[0]),
        Finding(Label("calcification"), 0.42, image_indices=(0,), box=boxes[1]),
        Finding("nodule centre", 0.66, point=point),  # None = all source images = the one image here
    ]
    out = write_sr(findings, datasets, tmp_path / "sr.dcm", model_name="lesionnet", model_version="1.2")
    assert dciodvfy_errors(out) == []
    sr = pydicom.dcmread(out)
    assert sr.StudyInstanceUID == ds.StudyInstanceUID

    back = read_sr(out)
    assert [f.label for f in back] == ["mass", "calcification", "nodule centre"]
    assert [f.probability for f in back] == pytest.approx([0.91, 0.42, 0.66])
    for f, box in zip(back[:2], boxes, strict=True):
        assert f.box == pytest.approx(box, abs=1e-3) and f.point is None
    assert back[2].point == pytest.approx(point, abs=1e-3) and back[2].box is None
    assert all(f.referenced_sop_instance_uids == (str(ds.SOPInstanceUID),) for f in back)
    assert all((f.model_name, f.model_version) == ("lesionnet", "1.2") for f in back)


def test_region_findings_mix_with_plain_findings_in_order(shared_data: Path, tmp_path: Path) -> None:
    datasets = _cr(shared_data)
    findings = [Finding("abnormal", 0.8), Finding("mass", 0.7, image_indices=(0,), box=(1, 2, 3, 4))]
    back = read_sr(write_sr(findings, datasets, tmp_path / "sr.dcm", "m", "1"))
    assert [(f.label, f.box) for f in back] == [("abnormal", None), ("mass", (1.0, 2.0, 3.0, 4.0))]


def test_region_findings_must_name_one_image_inside_it(shared_data: Path, tmp_path: Path) -> None:
    volume = read_series(shared_data / "udacity_brain_mr_dicom" / "Study3" / "11-T1post-18670")
    datasets = read_datasets(volume.files[:3])
    target = tmp_path / "bad.dcm"
    with pytest.raises(MedsightError, match="exactly one source image"):
        write_sr([Finding("x", 0.5, image_indices=(0, 1), box=(1, 1, 5, 5))], datasets, target, "m", "1")
    with pytest.raises(MedsightError, match="exactly one source image"):
        write_sr([Finding("x", 0.5, point=(3, 3))], datasets, target, "m", "1")  # None = all three
    with pytest.raises(MedsightError, match="exactly one source image"):
        write_sr([Finding("x", 0.5, image_indices=(), box=(1, 1, 5, 5))], datasets, target, "m", "1")
    with pytest.raises(MedsightError, match="out of range"):
        write_sr([Finding("x", 0.5, image_indices=(7,), box=(1, 1, 5, 5))], datasets, target, "m", "1")
    with pytest.raises(MedsightError, match="x1 <= x2"):
        write_sr([Finding("x", 0.5, image_indices=(0,), box=(5, 1, 1, 5))], datasets, target, "m", "1")
    with pytest.raises(MedsightError, match="outside the image"):
        write_sr([Finding("x", 0.5, image_indices=(0,), point=(1e6, 3))], datasets, target, "m", "1")
    assert list(tmp_path.iterdir()) == []


def test_numbered_findings_carry_their_volume_and_area(shared_data: Path, tmp_path: Path) -> None:
    """One group per nodule: its own tracking identifier and an SCT Volume (or Area) in UCUM units, read back."""
    datasets = _mr(shared_data)
    findings = [
        Finding("nodule", 0.93, identifier="nodule 1", size=(523.5, "mm3")),
        Finding("nodule", 0.61, identifier="nodule 2", size=(14.25, "mm3")),
        Finding("lesion", 0.5, identifier="lesion 1", size=(30.0, "mm2")),
        Finding("vessel", 0.1),
    ]
    out = write_sr(findings, datasets, tmp_path / "sr.dcm", "nodulenet", "1")
    assert dciodvfy_errors(out) == []
    back = read_sr(out)
    assert [f.label for f in back] == ["nodule 1", "nodule 2", "lesion 1", "vessel"]
    assert [f.size for f in back] == [(523.5, "mm3"), (14.25, "mm3"), (30.0, "mm2"), None]
    assert [f.probability for f in back] == pytest.approx([0.93, 0.61, 0.5, 0.1])
    with pytest.raises(MedsightError, match="size unit"):
        write_sr([Finding("nodule", 0.5, size=(1.0, "ml"))], datasets, tmp_path / "bad.dcm", "m", "1")
