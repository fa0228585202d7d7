"""``medsight predict`` on DICOM as it arrives from the field: a CD folder with its DICOMDIR, a series folder with a
structured report beside the image, a Parametric Map (float pixels, no Bits Stored), a Modality LUT of 12-bit entries
and a file without its preamble or a ``.dcm`` name. Each once failed or was judged by the wrong object."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medsight.cli import main
from medsight.errors import MedsightError
from medsight.io import modality
from medsight.io.dicom import read_dicom_image
from medsight.io.images import read_image
from tiny_bundle import train_tiny_bundle


@pytest.fixture(scope="module")
def samples(shared_data: Path) -> Path:
    return shared_data / "dicom_samples"


@pytest.fixture(scope="module")
def xray_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch on 32 noise images declared X-ray by the manifest's sidecar, so the modality check is on (seconds)."""
    out = train_tiny_bundle(tmp_path_factory.mktemp("tiny_xray"), modality="xray")
    assert json.loads((out / "bundle.json").read_text())["data"]["modality"] == "xray"
    return out


def _radiograph(samples: Path, out: Path, code: str = "CR") -> Path:
    """A small uncompressed MONOCHROME1 radiograph cut from the RG3 sample, with the given Modality."""
    ds = pydicom.dcmread(samples / "pydicom_data" / "RG3_J2KR.dcm")
    pixels = np.ascontiguousarray(ds.pixel_array[::27, ::27][:64, :64].astype(np.uint16))
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    ds.Rows, ds.Columns = pixels.shape
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = code
    ds.PatientName, ds.PatientID = "Test^Person", "TEST-0001"
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def _cd_folder(samples: Path, folder: Path, code: str) -> Path:
    """A CD as a PACS burns it: DICOMDIR at the top (alphabetically first, no Modality) and the image below."""
    from pydicom.fileset import FileSet

    image = _radiograph(samples, folder.parent / f"{folder.name}_source.dcm", code)
    fs = FileSet()
    fs.add(image)
    fs.write(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    assert files[0].name == "DICOMDIR" and len(files) == 2
    return files[1]


def _report_folder(samples: Path, folder: Path) -> Path:
    """A series folder holding a CR image and, first by name, a structured report (no pixels, Modality SR)."""
    image = _radiograph(samples, folder / "b_image.dcm", "CR")
    (folder / "a_report.dcm").write_bytes((samples / "pydicom_test_files" / "reportsi.dcm").read_bytes())
    return image


# ---------------------------------------------------------------------------------------------------------------
# 1. The modality check judges the image objects predict reads, not the first DICOM file of a folder
# ---------------------------------------------------------------------------------------------------------------


def test_a_cd_folder_is_judged_by_its_image_not_its_dicomdir(samples: Path, tmp_path: Path) -> None:
    image = _cd_folder(samples, tmp_path / "cd", "CT")
    assert modality.dicom_modality(tmp_path / "cd") == (image, "CT")
    with pytest.raises(MedsightError, match="a DICOM CT image") as caught:
        modality.check("xray", [tmp_path / "cd"])
    assert caught.value.path == str(image)


def test_a_report_beside_the_image_does_not_speak_for_the_folder(samples: Path, tmp_path: Path) -> None:
    image = _report_folder(samples, tmp_path / "series")
    assert modality.dicom_modality(tmp_path / "series") == (image, "CR")
    modality.check("xray", [tmp_path / "series"])
    with pytest.raises(MedsightError, match="a DICOM CR image") as caught:
        modality.check("ct", [tmp_path / "series"])
    assert caught.value.path == str(image)


def test_predict_on_messy_folders(
    xray_bundle: Path, samples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _cd_folder(samples, tmp_path / "ct_cd", "CT")
    _report_folder(samples, tmp_path / "cr_sr")
    capsys.readouterr()
    assert main(["predict", str(xray_bundle), str(tmp_path / "ct_cd"), "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert "a DICOM CT image" in err and "Traceback" not in err and "Test^Person" not in err
    assert main(["predict", str(xray_bundle), str(tmp_path / "cr_sr"), "--out", str(tmp_path / "o2")]) == 0
    predictions = json.loads((tmp_path / "o2" / "predictions.json").read_text())["predictions"]
    assert len(predictions) == 1


# ---------------------------------------------------------------------------------------------------------------
# 2. VOI windowing of float pixel data (Parametric Map: no Bits Stored, no Pixel Representation)
# ---------------------------------------------------------------------------------------------------------------


def _parametric_map(samples: Path, out: Path) -> Path:
    import highdicom as hd

    src = pydicom.dcmread(samples / "pydicom_test_files" / "CT_small.dcm")
    values = src.pixel_array.astype(np.float32) / 100.0
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="x",
        lut_explanation="x",
        unit=hd.sr.CodedConcept("1", "UCUM", "no units"),
        value_range=(float(values.min()), float(values.max())),
        slope=1,
        intercept=0,
    )
    pm = hd.pm.ParametricMap(
        [src],
        values,
        series_instance_uid=hd.UID(),
        series_number=5,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="x",
        manufacturer_model_name="x",
        software_versions="1",
        device_serial_number="1",
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.0, window_width=100.0)],
    )
    pm.save_as(out)
    return out


def test_a_parametric_map_is_windowed(samples: Path, tmp_path: Path) -> None:
    path = _parametric_map(samples, tmp_path / "pm.dcm")
    ds = pydicom.dcmread(path)
    assert "FloatPixelData" in ds and "BitsStored" not in ds
    values = read_dicom_image(path).astype(np.float64)
    shown = read_dicom_image(path, voi=True)
    centre, width = 0.0 - 0.5, 100.0 - 1.0  # PS3.3 C.11.2.1.2.1, LINEAR
    expected = np.clip((values - centre) / width + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(shown, expected, atol=1e-6)
    shown = read_dicom_image(path, voi=(float(np.median(values)), 2.0))  # an explicit window works the same way
    assert shown.min() == 0.0 and shown.max() == 1.0


def test_predict_explains_a_parametric_map(
    xray_bundle: Path, samples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _parametric_map(samples, tmp_path / "pm.dcm")  # Modality OT: nothing to check
    capsys.readouterr()
    assert main(["predict", str(xray_bundle), str(path), "--explain", "--out", str(tmp_path / "out")]) == 0
    assert "Traceback" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# 3. A Modality LUT whose entries are 12 bits (stored in 16-bit words)
# ---------------------------------------------------------------------------------------------------------------


def _modality_lut(source: Path, out: Path, bits: int, vr: str = "US") -> Path:
    ds = pydicom.dcmread(source)
    item = Dataset()
    item.LUTDescriptor = [1024, 0, bits]
    item.ModalityLUTType = "OD"
    table = (np.arange(1024) * 4).astype(np.uint16)
    item.LUTData = table.tolist() if vr == "US" else table.astype("<u2").tobytes()
    item["LUTData"].VR = vr
    ds.ModalityLUTSequence = [item]
    ds.WindowCenter, ds.WindowWidth = 2000, 4000
    ds.save_as(out, enforce_file_format=True)
    return out


@pytest.mark.parametrize("vr", ["US", "OW"])
def test_a_12_bit_modality_lut_reads_as_the_same_table_in_16_bits(samples: Path, tmp_path: Path, vr: str) -> None:
    cr = _radiograph(samples, tmp_path / "cr.dcm")
    twelve = _modality_lut(cr, tmp_path / "lut12.dcm", 12, vr)
    sixteen = _modality_lut(cr, tmp_path / "lut16.dcm", 16, vr)
    image = read_image(twelve)
    np.testing.assert_array_equal(image, read_image(sixteen))
    stored = pydicom.dcmread(cr).pixel_array.astype(np.int64)
    looked_up = np.clip(stored, 0, 1023) * 4
    np.testing.assert_array_equal(image[0], (0 + 4092) - looked_up)  # MONOCHROME1: inverted within the LUT's range
    np.testing.assert_allclose(read_dicom_image(twelve, voi=True), read_dicom_image(sixteen, voi=True), atol=1e-6)


def test_predict_reads_a_12_bit_modality_lut(
    xray_bundle: Path, samples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cr = _radiograph(samples, tmp_path / "cr.dcm")
    path = _modality_lut(cr, tmp_path / "lut12.dcm", 12)
    assert main(["predict", str(xray_bundle), str(path), "--out", str(tmp_path / "out")]) == 0


# ---------------------------------------------------------------------------------------------------------------
# 4. One test of "is this DICOM": a file without its preamble or a .dcm name
# ---------------------------------------------------------------------------------------------------------------


def test_a_file_without_preamble_or_suffix_is_read(samples: Path, tmp_path: Path) -> None:
    from medsight.io import dicom, images

    full = _radiograph(samples, tmp_path / "full.dcm")
    bare = tmp_path / "IM0001"
    bare.write_bytes(full.read_bytes()[132:])  # file meta kept, preamble and "DICM" gone
    assert images.is_dicom_file(bare) and dicom.is_dicom_file(bare)
    np.testing.assert_array_equal(read_image(bare), read_image(full))
    not_dicom = tmp_path / "notes.dcm"
    not_dicom.write_text("not DICOM at all, whatever its name")
    assert not images.is_dicom_file(not_dicom) and not dicom.is_dicom_file(not_dicom)
    with pytest.raises(MedsightError, match="not a DICOM file") as caught:
        read_image(not_dicom)
    assert caught.value.path == str(not_dicom)


def test_predict_reads_a_file_without_preamble_or_suffix(
    xray_bundle: Path, samples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full = _radiograph(samples, tmp_path / "full.dcm")
    bare = tmp_path / "IM0001"
    bare.write_bytes(full.read_bytes()[132:])
    assert main(["predict", str(xray_bundle), str(bare), "--out", str(tmp_path / "out")]) == 0
    assert [p["input"] for p in json.loads((tmp_path / "out" / "predictions.json").read_text())["predictions"]] == [
        "IM0001"
    ]
