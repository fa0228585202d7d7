"""SEG, SR and Secondary Capture written from a real MR series: dciodvfy-clean, and they read back."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from medsight.errors import MedsightError
from medsight.io.dicom import Volume, read_datasets, read_series
from medsight.serving.dicom_objects import (
    Finding,
    Label,
    read_seg,
    read_sr,
    volume_order,
    write_secondary_capture,
    write_seg,
    write_sr,
)


def dciodvfy_errors(path: Path) -> list[str]:
    """Lines dciodvfy reports as errors (warnings are allowed); fails loudly when the tool is missing."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy not found: apt-get install dicom3tools")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


@pytest.fixture(scope="module")
def series(shared_data: Path) -> tuple[Volume, list[Dataset]]:
    volume = read_series(shared_data / "udacity_brain_mr_dicom" / "Study3" / "11-T1post-18670")
    datasets = read_datasets(volume.files)
    random.Random(7).shuffle(datasets)  # the writer must not depend on file order
    return volume, datasets


@pytest.fixture(scope="module")
def mask(series: tuple[Volume, list[Dataset]]) -> np.ndarray:
    volume, _ = series
    out = np.zeros(volume.array.shape, dtype=np.uint8)
    out[5:10, 100:150, 80:120] = 1  # "tumour" over five slices
    out[12, 10:20, 10:20] = 2  # "oedema" on one slice, off-centre so a flip would show
    return out


def test_seg_is_valid_and_reads_back_to_the_same_mask_and_geometry(
    series: tuple[Volume, list[Dataset]], mask: np.ndarray, tmp_path: Path
) -> None:
    volume, datasets = series
    out = write_seg(mask, datasets, ["tumour", Label("oedema")], tmp_path / "seg.dcm", model_name="brainnet")
    assert dciodvfy_errors(out) == []
    seg = pydicom.dcmread(out)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == datasets[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == datasets[0].FrameOfReferenceUID
    back = read_seg(out)
    assert back.labels == ["tumour", "oedema"]
    assert back.model == ["brainnet 0.1.0"]
    np.testing.assert_array_equal(back.mask, mask)
    assert volume.geometry is not None
    assert back.geometry.shape == volume.geometry.shape
    np.testing.assert_allclose(back.geometry.affine_lps, volume.geometry.affine_lps, atol=1e-4)
    # each tumour frame references the source image of the same slice
    tumour_slices = {
        str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        for f in seg.PerFrameFunctionalGroupsSequence
        if f.SegmentIdentificationSequence[0].ReferencedSegmentNumber == 1
    }
    uid_of = {Path(d.filename): str(d.SOPInstanceUID) for d in datasets}
    assert {uid_of[volume.files[k]] for k in range(5, 10)} <= tumour_slices


def test_seg_without_empty_frames_is_placed_on_the_source_grid(
    series: tuple[Volume, list[Dataset]], mask: np.ndarray, tmp_path: Path
) -> None:
    volume, datasets = series
    out = write_seg(mask, datasets, ["tumour", "oedema"], tmp_path / "small.dcm", omit_empty_frames=True)
    assert dciodvfy_errors(out) == []
    assert int(pydicom.dcmread(out).NumberOfFrames) == 6
    back = read_seg(out, reference=volume.geometry)
    np.testing.assert_array_equal(back.mask, mask)


def test_seg_over_a_multiframe_source(series: tuple[Volume, list[Dataset]], mask: np.ndarray, tmp_path: Path) -> None:
    volume, datasets = series
    full = [pydicom.dcmread(d.filename) for d in datasets]
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(
        full, series_instance_uid=hd.UID(), series_number=98, sop_instance_uid=hd.UID(), instance_number=1
    )
    assert len(volume_order([enhanced])) == 22
    out = write_seg(mask, [enhanced], ["tumour", "oedema"], tmp_path / "mf.dcm")
    assert dciodvfy_errors(out) == []
    back = read_seg(out)
    np.testing.assert_array_equal(back.mask, mask)
    assert volume.geometry is not None
    np.testing.assert_allclose(back.geometry.affine_lps, volume.geometry.affine_lps, atol=1e-4)


def test_bad_masks_are_refused_and_leave_no_file(series: tuple[Volume, list[Dataset]], tmp_path: Path) -> None:
    _, datasets = series
    target = tmp_path / "bad.dcm"
    with pytest.raises(MedsightError, match="slices"):
        write_seg(np.zeros((21, 320, 280), np.uint8), datasets, ["a"], target)
    with pytest.raises(MedsightError, match=r"0\.\.1"):
        write_seg(np.full((22, 320, 280), 2, np.uint8), datasets, ["a"], target)
    with pytest.raises(MedsightError, match="integer"):
        write_seg(np.zeros((22, 320, 280), np.float32), datasets, ["a"], target)
    assert list(tmp_path.iterdir()) == []


def test_sr_carries_findings_model_and_references(series: tuple[Volume, list[Dataset]], tmp_path: Path) -> None:
    _, datasets = series
    findings = [Finding("glioblastoma", 0.87), Finding(Label("normal"), 0.13, image_indices=(0, 1))]
    out = write_sr(findings, datasets, tmp_path / "sr.dcm", model_name="brainnet", model_version="2.1.0")
    assert dciodvfy_errors(out) == []
    sr = pydicom.dcmread(out)
    assert sr.Modality == "SR" and sr.PatientID == datasets[0].PatientID
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    back = read_sr(out)
    assert [(f.label, f.probability) for f in back] == [("glioblastoma", 0.87), ("normal", 0.13)]
    assert {(f.model_name, f.model_version) for f in back} == {("brainnet", "2.1.0")}
    assert set(back[0].referenced_sop_instance_uids) == {str(d.SOPInstanceUID) for d in datasets}
    assert back[1].referenced_sop_instance_uids == (
        str(datasets[0].SOPInstanceUID),
        str(datasets[1].SOPInstanceUID),
    )
    with pytest.raises(MedsightError, match="outside"):
        write_sr([Finding("x", 1.5)], datasets, tmp_path / "bad.dcm", "m", "1")


def test_secondary_capture_heatmap_overlay(series: tuple[Volume, list[Dataset]], tmp_path: Path) -> None:
    volume, datasets = series
    source = next(d for d in datasets if Path(d.filename) == volume.files[7])
    grey = volume.array[7] / volume.array[7].max()
    heat = np.zeros_like(grey)
    heat[100:150, 80:120] = 1.0
    rgb = np.stack([np.maximum(grey, heat), grey, grey * (1 - heat)], axis=-1)
    out = write_secondary_capture(rgb, source, tmp_path / "sc.dcm")
    assert dciodvfy_errors(out) == []
    sc = pydicom.dcmread(out)
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert (sc.StudyInstanceUID, sc.PatientID) == (source.StudyInstanceUID, source.PatientID)
    np.testing.assert_array_equal(sc.pixel_array, np.round(rgb * 255).astype(np.uint8))
    assert [float(v) for v in sc.PixelSpacing] == [float(v) for v in source.PixelSpacing]


def test_secondary_capture_of_another_size_from_a_radiograph(shared_data: Path, tmp_path: Path) -> None:
    source = pydicom.dcmread(shared_data / "dicom_samples" / "pydicom_data" / "RG3_J2KR.dcm", stop_before_pixels=True)
    rgb = np.zeros((64, 48, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    out = write_secondary_capture(rgb, source, tmp_path / "thumb.dcm")
    assert dciodvfy_errors(out) == []
    assert pydicom.dcmread(out).pixel_array.shape == (64, 48, 3)
    with pytest.raises(MedsightError, match="RGB"):
        write_secondary_capture(np.zeros((4, 4)), source, tmp_path / "grey.dcm")


def test_a_one_word_patient_name_reaches_no_warning_or_log(
    series: tuple[Volume, list[Dataset]], mask: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """highdicom warns that a person name without a caret "is unlikely to represent the intended person name",
    quoting it; many real exports have such names (e.g. "LIDC-IDRI-0001"), and the warning went to stderr, i.e. the
    service's log. No SEG, SR or SC (medsight's or the reader's) may let the name out."""
    import copy
    import logging
    import warnings

    from medsight.review.reader_objects import ReaderBox, write_reader_seg, write_reader_sr

    volume, originals = series
    datasets = [copy.deepcopy(d) for d in originals]
    for d in datasets:
        d.PatientName = "SECRETNAME7"
    source = next(d for d in datasets if Path(d.filename) == volume.files[7])
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_seg(mask, datasets, ["tumour", "oedema"], tmp_path / "seg.dcm")
        write_sr([Finding("tumour", 0.9)], datasets, tmp_path / "sr.dcm", "m", "1")
        write_secondary_capture(np.zeros((8, 8, 3)), source, tmp_path / "sc.dcm")
        box = ReaderBox(str(source.SOPInstanceUID), 1.0, 2.0, 5.0, 6.0, "tumour")
        write_reader_sr(
            None,
            [source],
            tmp_path / "reader_sr.dcm",
            reader="dr^who",
            decision="agree",
            ai_label="tumour",
            reader_label="tumour",
            boxes=[box],
        )
        write_reader_seg(
            {str(source.SOPInstanceUID): np.ones((int(source.Rows), int(source.Columns)), bool)},
            [source],
            tmp_path / "reader_seg.dcm",
            reader="dr^who",
            label="tumour",
        )
    said = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [line for line in said if "SECRETNAME7" in line]
    assert pydicom.dcmread(tmp_path / "sr.dcm").PatientName == "SECRETNAME7"  # the objects keep it, as they must


@pytest.mark.parametrize("keyword", ["SeriesInstanceUID", "StudyInstanceUID", "SOPInstanceUID"])
def test_a_source_without_the_uids_results_must_reference_is_named_with_what_it_lacks(
    series: tuple[Volume, list[Dataset]], tmp_path: Path, keyword: str
) -> None:
    """Not valid DICOM (Type 1 attributes): the error names the source file and the attribute, not the output."""
    _, datasets = series
    broken = pydicom.dcmread(datasets[0].filename)
    delattr(broken, keyword)
    broken.save_as(tmp_path / "no_uid.dcm")
    source = pydicom.dcmread(tmp_path / "no_uid.dcm")
    out = tmp_path / "out"
    out.mkdir()
    for write in (
        lambda: write_sr([Finding("x", 0.5)], [source], out / "sr.dcm"),
        lambda: write_seg(np.zeros((1, int(source.Rows), int(source.Columns)), np.uint8), [source], ["a"], out / "s"),
        lambda: write_secondary_capture(np.zeros((4, 4, 3), np.uint8), source, out / "sc.dcm"),
    ):
        with pytest.raises(MedsightError) as err:
            write()
        assert "no_uid.dcm" in str(err.value) and keyword in str(err.value)
        assert str(out) not in str(err.value)
    assert list(out.iterdir()) == []


def test_an_sr_references_a_source_whose_attributes_are_stored_as_un(shared_data: Path, tmp_path: Path) -> None:
    """explicit_VR-UN.dcm is valid DICOM with its attributes' VRs stored as UN; highdicom's optional Image Library
    cannot describe such a source (a TypeError), so the SR is written without it and still references the image."""
    source = pydicom.dcmread(shared_data / "dicom_samples" / "pydicom_data" / "explicit_VR-UN.dcm")
    out = write_sr([Finding("x", 0.25)], [source], tmp_path / "sr.dcm")
    assert dciodvfy_errors(out) == []
    assert read_sr(out)[0].referenced_sop_instance_uids == (str(source.SOPInstanceUID),)
