"""DICOM series as scanners and PACS send them, through reading and segmentation: copies of a real brain MR series
(oblique, 22 slices) edited with pydicom. Each case was once read silently wrong (a slice without a position turned
the whole series into one without geometry, a negative pixel spacing flipped the affine, a slice shifted in its plane
or a second frame of reference was stacked as if it were on the line, two slices sharing one SOP Instance UID lost
one of them) or failed with a traceback; a 2D model saw the slices of a series transposed. A series that cannot be
assembled honestly is now refused in one line naming the file and the problem."""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from medsight.cli import main
from medsight.errors import MedsightError
from medsight.io.dicom import read_series
from medsight.tasks.segmentation.predict import SegmentationModel
from tiny_bundle import train_tiny_hippocampus

SERIES = ("udacity_brain_mr_dicom", "Study3", "11-T1post-18670")
PATIENT = ("Albus", "Dumbledore")  # the name in the sample's header: never in an error
Edit = Callable[[list[Dataset]], list[Dataset] | None]


@pytest.fixture(scope="module")
def source(shared_data: Path) -> Path:
    return shared_data.joinpath(*SERIES)


def _along_normal(datasets: list[Dataset]) -> list[Dataset]:
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(datasets, key=lambda d: float(normal @ np.asarray(d.ImagePositionPatient, dtype=float)))


def _series(source: Path, out: Path, edit: Edit | None = None) -> list[Path]:
    """The series copied to ``out`` in slice order (file k = slice k along the normal) after ``edit``."""
    datasets = _along_normal([pydicom.dcmread(f) for f in sorted(source.glob("*.dcm"))])
    if edit is not None:
        datasets = edit(datasets) or datasets
    out.mkdir(parents=True)
    paths = []
    for k, ds in enumerate(datasets):
        ds.save_as(out / f"{k:03d}.dcm")
        paths.append(out / f"{k:03d}.dcm")
    return paths


def _raw(ds: Dataset, tag: int, vr: str, text: str) -> None:
    """Store ``text`` as the element's bytes, as a faulty exporter writes it (pydicom refuses to set such a value)."""
    value = text.encode() + (b" " if len(text) % 2 else b"")
    ds._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def _refused(target: Path | list[Path], match: str) -> MedsightError:
    with pytest.raises(MedsightError, match=match) as caught:
        read_series(target)
    assert not any(part in str(caught.value) for part in PATIENT)
    return caught.value


# ---------------------------------------------------------------------------------------------------------------
# 1. Geometry that one slice lacks, or that is no number: named, not a whole series read without geometry
# ---------------------------------------------------------------------------------------------------------------


def _drop(keyword: str) -> Edit:
    def edit(datasets: list[Dataset]) -> None:
        delattr(datasets[7], keyword)

    return edit


def _not_numbers(tag: int, text: str) -> Edit:
    def edit(datasets: list[Dataset]) -> None:
        _raw(datasets[7], tag, "DS", text)

    return edit


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (_drop("ImagePositionPatient"), "Image Position"),
        (_drop("ImageOrientationPatient"), "Image Orientation"),
        (_drop("PixelSpacing"), "Pixel Spacing"),
        (_not_numbers(0x00200032, "a\\b\\c"), "Image Position"),
        (_not_numbers(0x00200032, "nan\\0\\0"), "Image Position"),
        (_not_numbers(0x00280030, "inf\\inf"), "Pixel Spacing"),
    ],
    ids=["no-position", "no-orientation", "no-spacing", "position-text", "position-nan", "spacing-inf"],
)
def test_a_slice_without_usable_geometry_is_named(source: Path, tmp_path: Path, edit: Edit, named: str) -> None:
    paths = _series(source, tmp_path / "s", edit)
    error = _refused(tmp_path / "s", named)
    assert error.path == str(paths[7])


def test_a_frame_without_position_in_an_enhanced_object_is_named(source: Path, tmp_path: Path) -> None:
    import highdicom as hd

    datasets = [pydicom.dcmread(f) for f in sorted(source.glob("*.dcm"))]
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(
        datasets, series_instance_uid=hd.UID(), series_number=9, sop_instance_uid=hd.UID(), instance_number=1
    )
    del enhanced.PerFrameFunctionalGroupsSequence[3].PlanePositionSequence
    enhanced.save_as(tmp_path / "enhanced.dcm")
    error = _refused(tmp_path / "enhanced.dcm", "frame 4 has no usable Image Position")
    assert error.path == str(tmp_path / "enhanced.dcm")


@pytest.mark.parametrize("value", [-0.6875, 0.0])
def test_a_pixel_spacing_that_is_not_positive_is_refused(source: Path, tmp_path: Path, value: float) -> None:
    def edit(datasets: list[Dataset]) -> None:
        for ds in datasets:
            ds.PixelSpacing = [value, value]

    _series(source, tmp_path / "s", edit)
    _refused(tmp_path / "s", "Pixel Spacing .* is not positive")


def test_a_single_slice_with_a_negative_spacing_between_slices_keeps_a_positive_spacing(
    source: Path, tmp_path: Path
) -> None:
    def edit(datasets: list[Dataset]) -> list[Dataset]:
        datasets[0].SpacingBetweenSlices = -6.5  # older MR and NM write the direction into its sign
        return datasets[:1]

    (path,) = _series(source, tmp_path / "s", edit)
    geometry = read_series([path]).geometry
    assert geometry is not None and geometry.spacing[2] == pytest.approx(6.5)
    assert np.linalg.det(geometry.affine_lps[:3, :3]) > 0  # the slice axis along the normal, not flipped


# ---------------------------------------------------------------------------------------------------------------
# 2. Slices that are not one volume: off the line, another frame of reference, colour among greyscale, reused UIDs
# ---------------------------------------------------------------------------------------------------------------


def test_a_slice_shifted_in_its_plane_is_refused(source: Path, tmp_path: Path) -> None:
    def edit(datasets: list[Dataset]) -> None:
        position = [float(v) for v in datasets[10].ImagePositionPatient]
        position[0] += 20.0  # another field of view: 20 mm to the left, same distance along the normal
        datasets[10].ImagePositionPatient = position

    paths = _series(source, tmp_path / "s", edit)
    error = _refused(tmp_path / "s", "20 mm off the line")
    assert error.path == str(paths[10])


def test_two_frames_of_reference_in_one_series_are_refused(source: Path, tmp_path: Path) -> None:
    def edit(datasets: list[Dataset]) -> None:
        other = generate_uid()
        for ds in datasets[11:]:
            ds.FrameOfReferenceUID = other

    _series(source, tmp_path / "s", edit)
    _refused(tmp_path / "s", "2 frames of reference")


def test_a_palette_image_among_greyscale_slices_is_refused(source: Path, tmp_path: Path) -> None:
    def edit(datasets: list[Dataset]) -> None:
        ds = datasets[4]
        pixels = ds.pixel_array
        ds.PhotometricInterpretation = "PALETTE COLOR"
        table = (np.arange(256) * 257).astype("<u2").tobytes()
        for colour in ("Red", "Green", "Blue"):
            setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
            setattr(ds, f"{colour}PaletteColorLookupTableData", table)
        for tag in (0x00281101, 0x00281102, 0x00281103):
            ds[tag].VR = "US"
        ds.PixelData = (pixels % 256).astype(np.uint16).tobytes()

    _series(source, tmp_path / "s", edit)
    _refused(tmp_path / "s", "mixes colour and greyscale")


def test_two_slices_sharing_one_sop_instance_uid_are_refused_not_one_dropped(source: Path, tmp_path: Path) -> None:
    def edit(datasets: list[Dataset]) -> None:
        last, before = datasets[-1], datasets[-2]
        last.SOPInstanceUID = last.file_meta.MediaStorageSOPInstanceUID = before.SOPInstanceUID

    paths = _series(source, tmp_path / "s", edit)
    error = _refused(tmp_path / "s", "SOP Instance UID of another file")
    assert error.path == str(paths[-1])
    # a true copy of an instance (another file, same image) is still read once
    (tmp_path / "copies").mkdir()
    for path in _series(source, tmp_path / "plain"):
        (tmp_path / "copies" / path.name).write_bytes(path.read_bytes())
    (tmp_path / "copies" / "copy_of_000.dcm").write_bytes(paths[0].read_bytes())
    assert read_series(tmp_path / "copies").array.shape == (22, 320, 280)


# ---------------------------------------------------------------------------------------------------------------
# 3. Header numbers: a malformed one that only orders or hints is harmless; a rescale that is no number is named
# ---------------------------------------------------------------------------------------------------------------


def test_a_malformed_instance_number_or_slice_thickness_does_not_lose_the_series(source: Path, tmp_path: Path) -> None:
    def edit(datasets: list[Dataset]) -> None:
        _raw(datasets[3], 0x00200013, "IS", "x")  # Instance Number
        _raw(datasets[5], 0x00180050, "DS", "thin")  # Slice Thickness
        _raw(datasets[5], 0x00180088, "DS", "?")  # Spacing Between Slices

    _series(source, tmp_path / "s", edit)
    volume, reference = read_series(tmp_path / "s"), read_series(source)
    np.testing.assert_array_equal(volume.array, reference.array)
    assert volume.geometry == reference.geometry


def test_a_rescale_that_is_no_number_is_named(source: Path, tmp_path: Path) -> None:
    def edit(datasets: list[Dataset]) -> None:
        datasets[6].RescaleIntercept = 0
        _raw(datasets[6], 0x00281053, "DS", "x")

    paths = _series(source, tmp_path / "s", edit)
    error = _refused(tmp_path / "s", "Rescale Slope is empty or not a number")
    assert error.path == str(paths[6])


# ---------------------------------------------------------------------------------------------------------------
# 4. Segmentation: what the model sees, and the one line the CLI prints
# ---------------------------------------------------------------------------------------------------------------


def _stub_model(dims: int, seen: list[np.ndarray]) -> SegmentationModel:
    """A SegmentationModel whose network is a threshold: it records the image it is given (no bundle needed)."""
    model = SegmentationModel.__new__(SegmentationModel)
    network = types.SimpleNamespace(in_channels=1)
    model.plan = types.SimpleNamespace(spatial_dims=dims, network=network)  # type: ignore[assignment]
    model.labels, model.uncertainty, model.review_threshold = ["background", "bright"], False, None
    model.engine = "stub"

    def case(loaded: object, mirrors: object = None) -> tuple[np.ndarray, np.ndarray]:
        image = np.asarray(loaded.image)  # type: ignore[attr-defined]
        seen.append(image)
        mask = (image[0] > 300).astype(np.uint8)
        return mask, np.stack([mask == 0, mask == 1]).astype(np.float32)

    model.case = case  # type: ignore[method-assign]
    return model


def test_a_2d_model_sees_a_slice_of_a_series_as_it_sees_the_image_alone(source: Path, tmp_path: Path) -> None:
    """The same slice with patient geometry (a series of one, read as a volume) and without (a 2D image): a 2D model,
    trained on rows x columns, was given the first transposed."""
    (placed,) = _series(source, tmp_path / "placed", lambda d: d[9:10])
    (flat,) = _series(source, tmp_path / "flat", lambda d: d[9:10])
    ds = pydicom.dcmread(flat)
    del ds.ImagePositionPatient, ds.ImageOrientationPatient
    ds.save_as(flat)
    seen: list[np.ndarray] = []
    model = _stub_model(2, seen)
    with_geometry, without = model.predict([placed])[0], model.predict([flat])[0]
    assert seen[0].shape == seen[1].shape == (1, 320, 280)  # rows x columns, as the file stores them
    np.testing.assert_array_equal(seen[0], seen[1])
    # and the mask comes back on the volume's own grid (column, row, slice)
    assert with_geometry.mask.shape == (280, 320, 1)
    np.testing.assert_array_equal(with_geometry.mask[..., 0].T, without.mask)


def test_a_2d_image_given_to_a_3d_model_names_the_input(shared_data: Path) -> None:
    image = shared_data / "dicom_samples" / "pydicom_data" / "RG3_J2KR.dcm"
    with pytest.raises(MedsightError, match="a 2D image, but the model segments 3D images") as caught:
        _stub_model(3, []).predict([image])
    assert caught.value.path == str(image)


@pytest.fixture(scope="module")
def bundle_3d(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3D segmentation bundle of one epoch of 2 iterations on 4 Hippocampus cases (seconds)."""
    return train_tiny_hippocampus(shared_data, tmp_path_factory.mktemp("seg3d"), spacing=2.0)


def test_predict_refuses_a_series_with_a_shifted_slice_in_one_line(
    bundle_3d: Path, source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def edit(datasets: list[Dataset]) -> None:
        position = [float(v) for v in datasets[12].ImagePositionPatient]
        position[1] -= 8.0
        datasets[12].ImagePositionPatient = position

    paths = _series(source, tmp_path / "s", edit)
    capsys.readouterr()
    assert main(["predict", str(bundle_3d), str(tmp_path / "s"), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(paths[12]) in lines[0] and "off the line" in lines[0]
    assert not any(part in lines[0] for part in PATIENT) and "Traceback" not in lines[0]
    assert not (tmp_path / "out").exists()


def test_predict_reads_the_series_asked_for_from_a_folder_of_several(
    bundle_3d: Path, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A study folder of four MR series was refused with "choose one with series_uid", an argument the command line
    did not have; ``--series`` now chooses by Series Number (or UID), and the refusal lists the series."""
    import pydicom

    study = shared_data / "udacity_brain_mr_dicom" / "Study3"
    capsys.readouterr()
    assert main(["predict", str(bundle_3d), str(study), "--out", str(tmp_path / "none")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "4 image series found" in lines[0] and "Series 26401 [MR] T1pre_reg" in lines[0]
    assert "--series" in lines[0] and not any(part in lines[0] for part in PATIENT)
    out = tmp_path / "out"
    assert main(["-q", "predict", str(bundle_3d), str(study), "--series", "26401", "--out", str(out)]) == 0
    chosen = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID)
        for p in (study / "26401-T1prereg-52906").iterdir()
    }
    segs = [
        pydicom.dcmread(p) for p in out.rglob("*.dcm") if pydicom.dcmread(p, stop_before_pixels=True).Modality == "SEG"
    ]
    assert segs and all(str(s.ReferencedSeriesSequence[0].SeriesInstanceUID) in chosen for s in segs)
    capsys.readouterr()
    assert main(["predict", str(bundle_3d), str(study), "--series", "5", "--out", str(tmp_path / "x")]) == 2
    assert "no image series with Series Number 5; found: Series 11" in capsys.readouterr().err
