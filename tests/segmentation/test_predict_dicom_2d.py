"""A 2D segmentation model (an ultrasound lesion model) on single-frame DICOM images that have no patient geometry:
an ultrasound image (colour, JPEG 2000) and a radiograph. Before, predict refused every such file ("DICOM input must
be a greyscale series with patient geometry"), so an ultrasound model could only stream; now each gets its mask,
a DICOM SEG on the image (dciodvfy-clean) and an SR referencing it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from medsight.cli import main
from medsight.errors import MedsightError
from runtime import test_stream
from serving.test_dicom_objects import dciodvfy_errors

SAMPLES = ("US1_J2KR.dcm", "RG3_J2KR.dcm")


#: The tiny 2D segmentation bundle the stream tests train (seconds, on real BUSI image/mask pairs).
bundle = test_stream.bundle


@pytest.mark.parametrize("name", SAMPLES)
def test_a_single_frame_dicom_image_without_geometry_gets_mask_seg_and_sr(
    bundle: Path, shared_data: Path, tmp_path: Path, name: str
) -> None:
    source = shared_data / "dicom_samples" / "pydicom_data" / name
    out = tmp_path / "out"
    assert main(["predict", str(bundle), str(source), "--out", str(out), "--any-modality"]) == 0
    record = json.loads((out / "predictions.json").read_text())["predictions"][0]
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    mask = np.asarray(Image.open(out / record["files"]["mask"]))
    assert mask.shape == (int(ds.Rows), int(ds.Columns))
    assert record["amounts"]["unit"] == "pixels"
    seg = out / record["dicom"]["seg"]
    assert dciodvfy_errors(seg) == []
    back = pydicom.dcmread(seg)
    assert back.Modality == "SEG" and (int(back.Rows), int(back.Columns)) == (int(ds.Rows), int(ds.Columns))
    referenced = back.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    assert referenced == ds.SOPInstanceUID
    assert dciodvfy_errors(out / record["dicom"]["sr"]) == []


def test_a_cine_loop_given_to_predict_points_to_stream(bundle: Path, shared_data: Path) -> None:
    from medsight.tasks.segmentation.predict import read_input

    cine = shared_data / "dicom_samples" / "pydicom_test_files" / "examples_ybr_color.dcm"
    with pytest.raises(MedsightError, match="medsight stream") as info:
        read_input(cine)
    assert str(cine) in str(info.value)


def test_the_seg_of_one_image_reads_back_to_the_mask(bundle: Path, shared_data: Path, tmp_path: Path) -> None:
    from medsight.serving.dicom_objects import read_seg

    source = shared_data / "dicom_samples" / "pydicom_data" / "US1_J2KR.dcm"
    out = tmp_path / "out"
    assert main(["predict", str(bundle), str(source), "--out", str(out), "--any-modality"]) == 0
    record = json.loads((out / "predictions.json").read_text())["predictions"][0]
    back = read_seg(out / record["dicom"]["seg"])
    assert back.geometry is None and back.labels == ["foreground"]
    np.testing.assert_array_equal(back.mask[0], np.asarray(Image.open(out / record["files"]["mask"])))


def test_a_dicom_result_that_cannot_be_built_is_blamed_on_the_input(
    bundle: Path, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """693_UNCR.dcm is a CT slice without the Frame of Reference UID its IOD requires: the SEG cannot be built.
    The error names the input and the reason, not the temporary output file the user never named."""
    source = shared_data / "dicom_samples" / "pydicom_data" / "693_UNCR.dcm"
    out = tmp_path / "out"
    assert main(["predict", str(bundle), str(source), "--out", str(out), "--any-modality"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"medsight predict: error: {source}: ") and "Frame Of Reference" in err
    assert ".tmp" not in err and not out.exists()


def test_a_folder_holding_one_such_image_and_a_stray_file_is_read_alike(
    bundle: Path, shared_data: Path, tmp_path: Path
) -> None:
    """What the service and a PACS export hand over: the image in a series folder, beside a file that is not DICOM."""
    import shutil

    folder = tmp_path / "series"
    folder.mkdir()
    shutil.copy(shared_data / "dicom_samples" / "pydicom_data" / "US1_J2KR.dcm", folder / "IM0001")
    (folder / "README.txt").write_text("exported")
    out = tmp_path / "out"
    assert main(["predict", str(bundle), str(folder), "--out", str(out), "--any-modality"]) == 0
    record = json.loads((out / "predictions.json").read_text())["predictions"][0]
    assert dciodvfy_errors(out / record["dicom"]["seg"]) == []
    assert np.asarray(Image.open(out / record["files"]["mask"])).shape == (480, 640)
