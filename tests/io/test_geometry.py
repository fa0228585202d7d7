"""Geometry helpers, checked against highdicom's implementation of the DICOM equations (PS3.3 C.7.6.2.1.1)."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest

from medsight.io import geometry as geo

# An oblique plane (about 11 degrees about x), like the brain MR study's.
IOP = [1.0, 0.0, 0.0, 0.0, float(np.cos(0.19)), float(-np.sin(0.19))]
SPACING = (0.7, 0.6)  # DICOM Pixel Spacing: between rows, between columns
IPP0 = np.array([-100.0, -80.0, 20.0])


def _positions(n: int, gap: float) -> np.ndarray:
    return IPP0 + np.outer(np.arange(n) * gap, geo.slice_normal(IOP))


def test_affine_matches_highdicom() -> None:
    pos = _positions(5, 2.5)
    g = geo.stack_geometry(pos, IOP, SPACING, rows=32, columns=48)
    expected = hd.spatial.create_affine_matrix_from_attributes(
        image_position=pos[0],
        image_orientation=IOP,
        pixel_spacing=SPACING,
        spacing_between_slices=2.5,
        index_convention="RD",
        slices_first=False,
    )
    np.testing.assert_allclose(g.affine_lps, expected, atol=1e-9)
    assert g.shape == (5, 32, 48)
    assert g.spacing == pytest.approx((0.6, 0.7, 2.5))
    # the last slice's first pixel lands on its Image Position (Patient)
    np.testing.assert_allclose(g.index_to_lps([0, 0, 4]), pos[4], atol=1e-9)


def test_ras_is_lps_with_x_and_y_flipped_as_highdicom_says() -> None:
    g = geo.stack_geometry(_positions(3, 1.0), IOP, SPACING, rows=4, columns=4)
    lps, ras = geo.affines(g)
    np.testing.assert_allclose(ras, hd.spatial.convert_affine_to_convention(lps, "LPS", "RAS"), atol=1e-12)
    np.testing.assert_allclose(g.affine("ras"), ras)
    np.testing.assert_allclose(geo.lps_to_ras(ras), lps)
    with pytest.raises(ValueError):
        g.affine("XYZ")


def test_sort_along_normal_ignores_input_order_and_measures_spacing_from_positions() -> None:
    pos = _positions(6, 6.5)
    shuffled = [3, 0, 5, 1, 4, 2]
    order, distances = geo.sort_along_normal(pos[shuffled], IOP)
    assert [shuffled[i] for i in order] == [0, 1, 2, 3, 4, 5]
    # highdicom's sort agrees (its "RD" convention uses the same right-handed normal)
    assert hd.spatial.get_plane_sort_index(pos[shuffled].tolist(), IOP, index_convention="RD") == order
    spacing = geo.stack_spacing(distances)
    assert spacing.regular and spacing.spacing == pytest.approx(6.5)


def test_uneven_gaps_and_duplicates_are_reported() -> None:
    pos = np.delete(_positions(6, 2.0), 3, axis=0)  # a missing slice
    _, distances = geo.sort_along_normal(pos, IOP)
    assert not geo.stack_spacing(distances).regular
    dup = np.vstack([_positions(3, 2.0), _positions(1, 2.0)])
    _, distances = geo.sort_along_normal(dup, IOP)
    with pytest.raises(ValueError, match="share a position"):
        geo.stack_spacing(distances)


def test_single_slice_uses_the_fallback_spacing() -> None:
    g = geo.stack_geometry(_positions(1, 0), IOP, SPACING, rows=4, columns=4, fallback_slice_spacing=5.0)
    assert g.spacing[2] == 5.0
    np.testing.assert_allclose(g.direction_matrix[:, 2], geo.slice_normal(IOP))


def test_tilted_stack_keeps_its_true_direction() -> None:
    axial = [1, 0, 0, 0, 1, 0]
    pos = np.array([[0.0, 0.5 * k, 2.0 * k] for k in range(4)])  # y drifts: gantry tilt
    g = geo.stack_geometry(pos, axial, (1.0, 1.0), rows=8, columns=8)
    np.testing.assert_allclose(g.index_to_lps([0, 0, 3]), pos[3], atol=1e-9)
    assert g.spacing[2] == pytest.approx(np.hypot(0.5, 2.0))


def test_orientation_names() -> None:
    axial = geo.stack_geometry([[0, 0, 0], [0, 0, 1]], [1, 0, 0, 0, 1, 0], (1, 1), 2, 2)
    sagittal = geo.stack_geometry([[0, 0, 0], [1, 0, 0]], [0, 1, 0, 0, 0, -1], (1, 1), 2, 2)
    coronal = geo.stack_geometry([[0, 0, 0], [0, -1, 0]], [1, 0, 0, 0, 0, -1], (1, 1), 2, 2)
    oblique = geo.stack_geometry(_positions(2, 1), IOP, (1, 1), 2, 2)
    assert (axial.orientation_code(), axial.plane()) == ("LPS", "axial")
    assert (sagittal.orientation_code(), sagittal.plane()) == ("PIL", "sagittal")
    assert (coronal.orientation_code(), coronal.plane()) == ("LIA", "coronal")
    assert oblique.plane() == "oblique axial"


def test_bad_orientation_is_refused() -> None:
    with pytest.raises(ValueError, match="orthogonal"):
        geo.cosines([1, 0, 0, 0.5, 0.5, 0])
    with pytest.raises(ValueError, match="6 values"):
        geo.cosines([1, 0, 0])


def test_geometry_from_affine_round_trip() -> None:
    g = geo.stack_geometry(_positions(4, 3.0), IOP, SPACING, rows=10, columns=12)
    back = geo.geometry_from_affine(g.affine_lps, g.shape)
    np.testing.assert_allclose(back.affine_lps, g.affine_lps, atol=1e-12)
