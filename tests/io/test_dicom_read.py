"""DICOM reading on real data: geometry against SimpleITK, LUTs, photometric handling, codecs, bad files."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_voi_lut
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import RLELossless, generate_uid

from medsight.errors import MedsightError
from medsight.io.dicom import read_dicom_image, read_series, scan, to_metatensor

BRAIN_SERIES = ["11-T1post-18670", "26401-T1prereg-52906", "36468-FLAIRreg-58706", "37830-T2reg-78532"]


@pytest.fixture(scope="module")
def study(shared_data: Path) -> Path:
    return shared_data / "udacity_brain_mr_dicom" / "Study3"


@pytest.fixture(scope="module")
def samples(shared_data: Path) -> Path:
    return shared_data / "dicom_samples"


# ---------------------------------------------------------------------------------------------------------
# Geometry on the real brain MR study, against SimpleITK's series reader
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", BRAIN_SERIES)
def test_series_matches_simpleitk(study: Path, folder: str) -> None:
    volume = read_series(study / folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(study / folder)))
    image = reader.Execute()
    expected = sitk.GetArrayFromImage(image).astype(np.float32)

    assert volume.array.dtype == np.float32
    assert volume.array.shape == expected.shape == (22, 320, 280)
    np.testing.assert_allclose(volume.array, expected, atol=1e-4)
    g = volume.geometry
    assert g is not None
    np.testing.assert_allclose(g.spacing, image.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(g.origin, image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(g.direction, image.GetDirection(), atol=1e-4)
    # the slice spacing comes from positions (6.5 mm), not Slice Thickness (5 mm)
    assert g.spacing[2] == pytest.approx(6.5, abs=1e-4)
    # every voxel's world position agrees, not just the header numbers
    for index in [(0, 0, 0), (279, 319, 21), (17, 201, 9)]:
        np.testing.assert_allclose(g.index_to_lps(index), image.TransformIndexToPhysicalPoint(index), atol=1e-4)


def test_file_order_does_not_matter(study: Path) -> None:
    files = sorted((study / BRAIN_SERIES[1]).glob("*.dcm"))
    random.Random(3).shuffle(files)
    shuffled = read_series(files)
    reference = read_series(study / BRAIN_SERIES[1])
    np.testing.assert_array_equal(shuffled.array, reference.array)
    assert shuffled.geometry == reference.geometry


def test_scan_groups_studies_and_series_and_counts_other_files(study: Path) -> None:
    found = scan(study.parent)
    assert len(found.studies) == 1
    assert sorted(s.description for s in found.series) == ["FLAIR_reg", "T1post", "T1pre_reg", "T2_reg"]
    assert all(len(s.instances) == 22 and s.modality == "MR" for s in found.series)
    assert sorted(p.name for p in found.skipped) == ["MD5SUMS", "SOURCE.md"]
    # identifiers are stored, but never shown by repr (so they stay out of logs)
    assert found.studies[0].patient_name == "Albus^Dumbledore"
    assert "Albus" not in repr(found) and "PGBM" not in repr(found)


def test_a_study_with_several_series_needs_a_choice(study: Path) -> None:
    with pytest.raises(MedsightError, match="4 image series"):
        read_series(study)
    uid = scan(study / BRAIN_SERIES[3]).series[0].series_instance_uid
    chosen = read_series(study, series_uid=uid)
    assert chosen.array.shape == (22, 320, 280)
    assert "Albus" not in repr(chosen)


def test_a_folder_of_several_series_lists_them_and_reads_the_one_chosen(study: Path) -> None:
    """The choice once existed only as a library argument while the message sent CLI users to it; a folder is now
    read as the series a command was asked for (``medsight predict --series``), by Series Number or UID, and the
    message lists the series (number, modality, description, size: no identifiers) to choose from."""
    from medsight.io.dicom import choose_series

    with pytest.raises(MedsightError) as info:
        read_series(study)
    message = str(info.value)
    assert "Series 11 [MR] T1post: 22 image(s)" in message and "Series 37870 [MR] T2_reg" in message
    assert "--series" in message and "Albus" not in message
    with choose_series("11"):
        assert read_series(study).array.shape == (22, 320, 280)
    uid = scan(study / BRAIN_SERIES[3]).series[0].series_instance_uid
    with choose_series(uid):
        assert read_series(study).series_instance_uid == uid
    with (
        choose_series("12"),
        pytest.raises(MedsightError, match=r"no image series with Series Number 12; found: Series 11"),
    ):
        read_series(study)
    with choose_series("26401"):  # a folder of that one series: the choice holds
        assert read_series(study / BRAIN_SERIES[1]).array.shape[0] == 22
    with choose_series("11"), pytest.raises(MedsightError, match="no image series with Series Number 11"):
        read_series(study / BRAIN_SERIES[1])  # a folder without the series asked for is not read as another


def test_missing_slice_and_duplicate_position_are_refused(study: Path, tmp_path: Path) -> None:
    files = sorted((study / BRAIN_SERIES[0]).glob("*.dcm"))
    volume = read_series(files)
    middle = volume.files[10]
    with pytest.raises(MedsightError, match="uneven gaps"):
        read_series([f for f in files if f != middle])
    gappy = read_series([f for f in files if f != middle], allow_irregular=True)
    assert gappy.array.shape[0] == 21
    copy = pydicom.dcmread(middle)
    copy.SOPInstanceUID = generate_uid()
    copy.save_as(tmp_path / "echo2.dcm")
    with pytest.raises(MedsightError, match="share a position"):
        read_series([*files, tmp_path / "echo2.dcm"])


def test_metatensor_carries_the_affine_monai_expects(study: Path) -> None:
    folder = study / BRAIN_SERIES[0]
    volume = read_series(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    ras = to_metatensor(volume)
    lps = to_metatensor(volume, space="LPS")
    assert tuple(ras.shape) == (1, 280, 320, 22)  # (channel, column, row, slice)
    assert ras.meta["space"] == "RAS" and lps.meta["space"] == "LPS"
    for i, j, k in [(0, 0, 0), (250, 30, 20), (140, 160, 11)]:
        # the same voxel value as SimpleITK at index (i, j, k) ...
        assert float(ras[0, i, j, k]) == pytest.approx(float(image[i, j, k]))
        # ... and the affine maps that index to SimpleITK's point (flipped to RAS for the default)
        x, y, z = image.TransformIndexToPhysicalPoint((i, j, k))
        np.testing.assert_allclose((ras.affine.numpy() @ [i, j, k, 1])[:3], [-x, -y, z], atol=1e-4)
        np.testing.assert_allclose((lps.affine.numpy() @ [i, j, k, 1])[:3], [x, y, z], atol=1e-4)
    # MONAI's own orientation transform accepts it and keeps voxels at their world positions
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    reoriented = Orientation(axcodes="RAS")(ras)
    assert isinstance(reoriented, MetaTensor)
    value = float(ras[0, 140, 160, 11])
    world = ras.affine.numpy() @ [140, 160, 11, 1]
    index = np.rint(np.linalg.inv(reoriented.affine.numpy()) @ world).astype(int)[:3]
    assert float(reoriented[0, index[0], index[1], index[2]]) == pytest.approx(value)


# ---------------------------------------------------------------------------------------------------------
# Modality LUT, enhanced multi-frame, photometric interpretation
# ---------------------------------------------------------------------------------------------------------


def test_ct_rescaled_to_hounsfield_units(samples: Path) -> None:
    path = samples / "pydicom_test_files" / "CT_small.dcm"
    ds = pydicom.dcmread(path)
    raw = ds.pixel_array.astype(np.float64)
    expected = raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    image = read_dicom_image(path)
    volume = read_series(path)
    np.testing.assert_allclose(image, expected)
    np.testing.assert_allclose(volume.array[0], expected)
    assert float(ds.RescaleIntercept) == -1024 and raw.min() > 0 > image.min()  # HU, not stored values
    assert volume.geometry is not None and volume.geometry.spacing[2] == 5.0  # single slice: header spacing


@pytest.mark.parametrize("drop", ["RescaleIntercept", "RescaleSlope"])
def test_half_a_rescale_is_applied_with_the_other_half_as_identity(
    samples: Path, tmp_path: Path, drop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A Rescale Slope without its Intercept (or the reverse) was ignored whole (pydicom applies neither), so a slope
    of 2 halved every value without a word; it is applied now, as SimpleITK reads it, and said once."""
    ds = pydicom.dcmread(samples / "pydicom_test_files" / "CT_small.dcm")
    raw = ds.pixel_array.astype(np.float64)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1024
    delattr(ds, drop)
    ds.save_as(tmp_path / "half.dcm")
    expected = raw * 2 if drop == "RescaleIntercept" else raw - 1024
    with caplog.at_level("WARNING", logger="medsight"):
        np.testing.assert_allclose(read_dicom_image(tmp_path / "half.dcm"), expected)
        np.testing.assert_allclose(read_series(tmp_path / "half.dcm").array[0], expected)
    said = [r.getMessage() for r in caplog.records if "without Rescale" in r.getMessage()]
    assert len(said) == 1 and "half.dcm" in said[0]


def test_enhanced_mr_without_functional_groups_has_no_geometry(samples: Path) -> None:
    path = samples / "pydicom_data" / "emri_small.dcm"
    volume = read_series(path)
    assert volume.array.shape == (10, 64, 64)
    np.testing.assert_array_equal(volume.array, pydicom.dcmread(path).pixel_array)
    assert volume.geometry is None  # emri_small carries no plane positions: say so, never invent one


def test_enhanced_mr_geometry_from_functional_groups(samples: Path, tmp_path: Path) -> None:
    """emri_small given per-frame positions (stored in reverse, oblique plane) and a rescale."""
    ds = pydicom.dcmread(samples / "pydicom_data" / "emri_small.dcm")
    raw = ds.pixel_array.astype(np.float64)
    iop = [1.0, 0.0, 0.0, 0.0, float(np.cos(0.3)), float(-np.sin(0.3))]
    normal = np.cross(iop[:3], iop[3:])
    origin = np.array([-30.0, -20.0, 10.0])
    shared = Dataset()
    shared.PlaneOrientationSequence = DicomSequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = iop
    shared.PixelMeasuresSequence = DicomSequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = [0.9, 0.8]
    shared.PixelMeasuresSequence[0].SliceThickness = 1.0
    shared.PixelValueTransformationSequence = DicomSequence([Dataset()])
    pvt = shared.PixelValueTransformationSequence[0]
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = 2, -100, "US"
    per_frame = []
    for i in range(10):
        item = Dataset()
        item.PlanePositionSequence = DicomSequence([Dataset()])
        item.PlanePositionSequence[0].ImagePositionPatient = [float(v) for v in origin + (9 - i) * 1.2 * normal]
        per_frame.append(item)
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.save_as(tmp_path / "emri_geometry.dcm")

    volume = read_series(tmp_path / "emri_geometry.dcm")
    g = volume.geometry
    assert g is not None
    np.testing.assert_allclose(volume.array, raw[::-1] * 2 - 100)  # sorted along the normal, rescaled
    np.testing.assert_allclose(g.origin, origin, atol=1e-6)
    np.testing.assert_allclose(g.spacing, (0.8, 0.9, 1.2), atol=1e-6)
    np.testing.assert_allclose(g.direction_matrix[:, 2], normal, atol=1e-6)


def test_enhanced_multiframe_equals_its_single_frame_series(study: Path, tmp_path: Path) -> None:
    """A real series converted to one Legacy Converted Enhanced MR object (highdicom) reads identically."""
    files = sorted((study / BRAIN_SERIES[0]).glob("*.dcm"))
    datasets = [pydicom.dcmread(f) for f in files]
    random.Random(1).shuffle(datasets)
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(
        datasets, series_instance_uid=hd.UID(), series_number=99, sop_instance_uid=hd.UID(), instance_number=1
    )
    enhanced.save_as(tmp_path / "enhanced.dcm")
    multi = read_series(tmp_path / "enhanced.dcm")
    single = read_series(files)
    assert multi.geometry is not None and single.geometry is not None
    np.testing.assert_array_equal(multi.array, single.array)
    np.testing.assert_allclose(multi.geometry.affine_lps, single.geometry.affine_lps, atol=1e-6)


def test_monochrome1_radiograph_is_inverted_so_high_is_bright(samples: Path) -> None:
    path = samples / "pydicom_data" / "RG3_J2KR.dcm"  # CR chest, MONOCHROME1, JPEG 2000
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    raw = ds.pixel_array.astype(np.float64)
    image = read_dicom_image(path)
    assert image.shape == (1760, 1760) and image.dtype == np.float32
    np.testing.assert_allclose(image, (2**ds.BitsStored - 1) - raw)  # inverted within the stored range
    shown = read_dicom_image(path, voi=True)
    windowed = apply_voi_lut(raw, ds)
    np.testing.assert_allclose(shown, 1.0 - windowed / (2**ds.BitsStored - 1), atol=1e-6)
    assert shown.min() >= 0.0 and shown.max() <= 1.0
    custom = read_dicom_image(path, voi=(500.0, 200.0))
    assert custom.min() == 0.0 and custom.max() == 1.0


def test_monochrome1_and_monochrome2_encodings_read_the_same(samples: Path, tmp_path: Path) -> None:
    """A MONOCHROME1 twin of CT_small (stored values inverted) must give the same HU image."""
    ds = pydicom.dcmread(samples / "pydicom_test_files" / "CT_small.dcm")
    twin = pydicom.dcmread(samples / "pydicom_test_files" / "CT_small.dcm")
    lo, hi = -(2 ** (ds.BitsStored - 1)), 2 ** (ds.BitsStored - 1) - 1
    twin.PixelData = ((lo + hi) - ds.pixel_array.astype(np.int32)).astype(np.int16).tobytes()
    twin.PhotometricInterpretation = "MONOCHROME1"
    twin.save_as(tmp_path / "mono1.dcm")
    np.testing.assert_allclose(
        read_dicom_image(tmp_path / "mono1.dcm"),
        read_dicom_image(samples / "pydicom_test_files" / "CT_small.dcm"),
    )


# ---------------------------------------------------------------------------------------------------------
# Compressed transfer syntaxes (pydicom's pixel-data plugins)
# ---------------------------------------------------------------------------------------------------------


def test_jpeg2000_lossless_equals_uncompressed(samples: Path) -> None:
    j2k = read_dicom_image(samples / "pydicom_data" / "693_J2KR.dcm")
    raw = read_dicom_image(samples / "pydicom_data" / "693_UNCR.dcm")
    assert j2k.shape == (512, 512)
    np.testing.assert_array_equal(j2k, raw)
    # both files hold the same SOP instance: a scan keeps one and reports the other as a duplicate
    series = [s for s in scan(samples / "pydicom_data").series if s.duplicates]
    assert len(series) == 1 and len(series[0].instances) == 1


def test_deflated_and_big_endian_read_like_the_original(samples: Path, tmp_path: Path) -> None:
    """Deflated Explicit VR Little Endian compresses the whole dataset, so element offsets are offsets in the inflated
    stream, not in the file: the truncation check must not call a valid deflated file truncated. Explicit VR Big
    Endian (retired, still met in old archives) reads too."""
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

    source = samples / "pydicom_test_files" / "CT_small.dcm"
    original = read_series(source)
    ds = pydicom.dcmread(source)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm")
    assert (tmp_path / "deflated.dcm").stat().st_size < source.stat().st_size  # really deflated
    ds = pydicom.dcmread(source)
    ds.PixelData = ds.pixel_array.astype(ds.pixel_array.dtype.newbyteorder(">")).tobytes()  # words stored big endian
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    dcmwrite(tmp_path / "big_endian.dcm", ds, little_endian=False, implicit_vr=False)
    for name in ("deflated.dcm", "big_endian.dcm"):
        volume = read_series(tmp_path / name)
        np.testing.assert_array_equal(volume.array, original.array)
        assert volume.geometry == original.geometry
        np.testing.assert_array_equal(read_dicom_image(tmp_path / name), read_dicom_image(source))
    assert scan(tmp_path).n_instances == 1  # one SOP instance, the other file its duplicate
    cut = tmp_path / "cut" / "deflated.dcm"
    cut.parent.mkdir()
    cut.write_bytes((tmp_path / "deflated.dcm").read_bytes()[:-4000])
    with pytest.raises(MedsightError, match=r"deflated\.dcm"):
        read_series(cut)  # a truncated deflated file is still named


def test_rle_palette_ultrasound(samples: Path, tmp_path: Path) -> None:
    path = samples / "pydicom_data" / "OBXXXX1A_rle.dcm"
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == RLELossless
    rgb = read_dicom_image(path)
    assert rgb.shape == (600, 800, 3)
    np.testing.assert_allclose(rgb, apply_color_lut(ds.pixel_array, ds) / 257.0, atol=1e-3)
    # RLE is lossless: compressing an uncompressed palette image and reading it back changes nothing
    plain = pydicom.dcmread(samples / "pydicom_test_files" / "examples_palette.dcm")
    plain.compress(RLELossless)
    plain.save_as(tmp_path / "rle.dcm")
    np.testing.assert_array_equal(
        read_dicom_image(tmp_path / "rle.dcm"),
        read_dicom_image(samples / "pydicom_test_files" / "examples_palette.dcm"),
    )


def test_jpeg_lossless_decodes(samples: Path) -> None:
    image = read_dicom_image(samples / "pydicom_data" / "JPGLosslessP14SV1_1s_1f_8b.dcm")
    assert image.shape == (768, 1024)
    assert image.min() >= 0 and image.max() <= 255 and image.std() > 1


def test_jpeg_baseline_colour_cine(samples: Path) -> None:
    path = samples / "pydicom_test_files" / "examples_ybr_color.dcm"
    volume = read_series(path)
    assert volume.array.shape == (30, 240, 320, 3)
    assert volume.geometry is None  # ultrasound: no patient geometry
    frame = read_dicom_image(path, frame=3)
    np.testing.assert_array_equal(frame, volume.array[3])
    assert np.abs(frame[..., 0] - frame[..., 2]).max() > 10  # YCbCr became real colour, not grey
    with pytest.raises(MedsightError, match="multi-frame"):
        read_dicom_image(path)


# ---------------------------------------------------------------------------------------------------------
# Broken and non-DICOM input
# ---------------------------------------------------------------------------------------------------------


def test_truncated_pixel_data_names_the_file(samples: Path, tmp_path: Path) -> None:
    data = (samples / "pydicom_test_files" / "CT_small.dcm").read_bytes()
    broken = tmp_path / "cut.dcm"
    broken.write_bytes(data[:20000])
    for call in (scan, read_series, read_dicom_image):
        with pytest.raises(MedsightError, match="truncated") as info:
            call(broken)
        assert info.value.path == str(broken)


def test_truncated_header_and_garbage_after_preamble_name_the_file(samples: Path, tmp_path: Path) -> None:
    data = (samples / "pydicom_test_files" / "CT_small.dcm").read_bytes()
    (tmp_path / "head.dcm").write_bytes(data[:1000])
    with pytest.raises(MedsightError) as info:
        scan(tmp_path / "head.dcm")
    assert "head.dcm" in str(info.value)
    (tmp_path / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4)
    with pytest.raises(MedsightError) as info:
        scan(tmp_path / "garbage.dcm")
    assert "garbage.dcm" in str(info.value)


def _element_ends(data: bytes) -> list[int]:
    """Where each top-level element of a Part 10 file ends (offsets in the file)."""
    import io

    from pydicom.filereader import _read_file_meta_info, data_element_generator, read_preamble

    fp = io.BytesIO(data)
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    ends = []
    for _ in data_element_generator(fp, False, True, defer_size=256):
        ends.append(fp.tell())
    return ends


@pytest.mark.parametrize("name", ["reportsi.dcm", "rtplan.dcm", "CT_small.dcm"])
def test_a_cut_anywhere_but_an_element_boundary_is_refused(samples: Path, tmp_path: Path, name: str) -> None:
    """pydicom stops quietly at an element header cut short (the last 1-11 bytes of a file), so such a file read
    as a whole, shorter object. Every cut that does not fall exactly on a top-level element boundary is refused by
    name; a cut on a boundary leaves a well-formed shorter data set, which no reader can tell from an original."""
    data = (samples / "pydicom_test_files" / name).read_bytes()
    ends = _element_ends(data)
    accepted = []
    for end in ends[:-1]:
        for extra in (1, 4, 7, 8, 11):
            if end + extra >= ends[ends.index(end) + 1]:
                continue
            broken = tmp_path / f"cut_{end}_{extra}.dcm"
            broken.write_bytes(data[: end + extra])
            try:
                scan(broken)
            except MedsightError as exc:
                assert exc.path == str(broken) and ("truncated" in exc.problem or "corrupt" in exc.problem)
            else:
                accepted.append(end + extra)
            broken.unlink()
    assert accepted == []
    whole = tmp_path / name
    whole.write_bytes(data)
    assert scan(whole).n_instances == 1


def test_non_dicom_files_are_skipped_quietly_and_counted(study: Path, tmp_path: Path) -> None:
    folder = tmp_path / "export"
    shutil.copytree(study / BRAIN_SERIES[0], folder / "a" / "b")
    (folder / "README.txt").write_text("not DICOM")
    (folder / "a" / "thumbs.db").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 300)
    found = scan(folder)
    assert found.n_instances == 22 and len(found.skipped) == 2
    (folder / "a" / "bad.dcm").write_bytes((study / BRAIN_SERIES[0] / "000000.dcm").read_bytes()[:5000])
    with pytest.raises(MedsightError, match=r"bad\.dcm"):
        scan(folder)
    lenient = scan(folder, strict=False)
    assert lenient.n_instances == 22 and len(lenient.skipped) == 2  # not DICOM
    assert [(p.name, problem.split(":")[0]) for p, problem in lenient.unreadable] == [
        ("bad.dcm", "truncated DICOM file")
    ]


def test_read_image_takes_a_multiframe_file_as_a_volume(samples: Path, tmp_path: Path) -> None:
    """``medsight predict``/manifests read images with ``read_image``: a multi-frame object (enhanced MR, a cine) is
    one volume, as its frames are one series, not an error asking a command-line user to pick a frame."""
    from medsight.io.images import read_image

    path = samples / "pydicom_data" / "emri_small.dcm"
    volume = read_image(path)
    assert volume.shape == (1, *read_series(path).array.shape)  # channel, frames, rows, columns
    assert volume.shape[1] == 10
    np.testing.assert_array_equal(volume[0], read_series(path).array)


def test_a_segmentation_object_given_as_an_image_is_refused_by_name(shared_data: Path) -> None:
    """A SEG carries pixels, but they are a mask of other images: a model must not be run on it as an image (before,
    predict crashed in highdicom when it tried to reference the SEG from its results)."""
    from medsight.io.images import read_image

    seg = shared_data / "dicom_samples" / "pydicom_test_files" / "liver_1frame.dcm"
    with pytest.raises(MedsightError, match="Segmentation object, not an image") as info:
        read_image(seg)
    assert str(seg) in str(info.value)


@pytest.mark.parametrize(("name", "shape"), [("RG3_J2KR.dcm", (1, 1760, 1760)), ("US1_J2KR.dcm", (3, 480, 640))])
def test_a_series_folder_of_one_image_reads_as_that_2d_image(
    shared_data: Path, tmp_path: Path, name: str, shape: tuple[int, ...]
) -> None:
    """A PACS export puts even a single radiograph or ultrasound image in a series folder: it is a 2D image (before,
    a volume of one slice, so a 2D classifier said "a 3D image"), exactly as the file itself reads."""
    from medsight.io.images import read_image

    source = shared_data / "dicom_samples" / "pydicom_data" / name
    folder = tmp_path / "series"
    folder.mkdir()
    shutil.copy(source, folder / "IM0001")
    (folder / "README.txt").write_text("exported")
    image = read_image(folder)
    assert image.shape == shape
    np.testing.assert_array_equal(image, read_image(source))
