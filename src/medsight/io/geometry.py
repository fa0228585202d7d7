"""Patient-space geometry of image stacks: affines from DICOM attributes, slice sorting, LPS/RAS.

Conventions (the same as ITK / SimpleITK, so results compare one to one):

* A volume array is indexed ``[slice, row, column]`` (numpy order, as ``sitk.GetArrayFromImage``).
* Voxel *index* ``(x, y, z)`` = ``(column, row, slice)``; ``spacing``, ``origin`` and ``direction`` are
  given in that order, exactly like ``SimpleITK.Image.GetSpacing/GetOrigin/GetDirection``.
* World coordinates are DICOM patient coordinates, **LPS** (x to the patient's Left, y to Posterior,
  z to Superior), in millimetres, at voxel *centres*.
* ``affine_lps`` maps ``(x, y, z, 1)`` to LPS; ``affine_ras`` = ``diag(-1, -1, 1, 1) @ affine_lps`` maps the
  same index to RAS, the NIfTI / MONAI convention.
* Slices are sorted along the slice normal ``n = row_cosine x column_cosine`` (increasing ``n . IPP``);
  the slice spacing is measured from the Image Position (Patient) values, never from SliceThickness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: An (N, 3) array of points, or anything numpy turns into one.
Points = Sequence[Sequence[float]] | np.ndarray

#: Multiplying an LPS affine by this on the left gives the RAS affine (and back: it is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Positions closer than this (mm) along the normal are "the same slice".
DUPLICATE_TOL_MM = 1e-3
#: Relative variation of the gaps between slices still counted as even spacing.
SPACING_RTOL = 0.01
#: Stacking direction and slice normal count as parallel above this cosine (about 2.6 degrees).
PARALLEL_COS = 0.999
#: A slice whose position lies farther than this fraction of a pixel (at least ``OFF_LINE_MIN_MM``) from the line
#: through the stack's first and last positions is not on the stack: its voxels would be placed off by as much.
OFF_LINE_PIXELS = 0.1
OFF_LINE_MIN_MM = 0.01


@dataclass(frozen=True)
class Geometry:
    """Where every voxel of a ``[slice, row, column]`` array lies in patient space (LPS, mm).

    ``direction`` is row-major 3x3 (as SimpleITK's ``GetDirection``): its columns are the unit vectors of
    the x (along a row), y (down a column) and z (slice stacking) index axes. The third column equals the
    slice normal except for a tilted stack (gantry tilt): it follows the stack and the affine is sheared.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @property
    def direction_matrix(self) -> np.ndarray:
        """The 3x3 direction matrix (columns are the x, y, z axis directions)."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def affine_lps(self) -> np.ndarray:
        """4x4 affine from voxel index ``(column, row, slice)`` to LPS millimetres."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction_matrix * np.asarray(self.spacing, dtype=float)
        affine[:3, 3] = self.origin
        return affine

    @property
    def affine_ras(self) -> np.ndarray:
        """The same mapping into RAS (NIfTI, nibabel and MONAI's default space)."""
        return LPS_TO_RAS @ self.affine_lps

    def affine(self, space: str = "LPS") -> np.ndarray:
        """The affine in ``"LPS"`` (DICOM, ITK) or ``"RAS"`` (NIfTI, MONAI)."""
        key = space.upper()
        if key == "LPS":
            return self.affine_lps
        if key == "RAS":
            return self.affine_ras
        raise ValueError(f"space must be 'LPS' or 'RAS', not {space!r}")

    def index_to_lps(self, index: np.ndarray | Sequence[float]) -> np.ndarray:
        """LPS coordinates of voxel indices ``(column, row, slice)``; accepts one point or an (N, 3) array."""
        points = np.atleast_2d(np.asarray(index, dtype=float))
        world = points @ self.affine_lps[:3, :3].T + self.affine_lps[:3, 3]
        return world[0] if np.ndim(index) == 1 else world

    def orientation_code(self) -> str:
        """Three letters naming where x, y and z point, e.g. ``"LPS"`` for a usual axial stack."""
        return orientation_code(self.direction_matrix)

    def plane(self) -> str:
        """``axial``, ``coronal`` or ``sagittal`` (the closest), prefixed with ``oblique`` when off-axis."""
        normal = self.direction_matrix[:, 2] / np.linalg.norm(self.direction_matrix[:, 2])
        axis = int(np.argmax(np.abs(normal)))
        name = ("sagittal", "coronal", "axial")[axis]
        return name if abs(normal[axis]) > 0.9999 else f"oblique {name}"


def affines(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Both affines: ``(lps, ras)``. LPS is DICOM's and ITK's space, RAS is NIfTI's and MONAI's."""
    return geometry.affine_lps, geometry.affine_ras


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """Convert a 4x4 LPS affine to RAS (or RAS to LPS: the flip is its own inverse)."""
    return LPS_TO_RAS @ np.asarray(affine, dtype=float)


def orientation_code(direction: np.ndarray) -> str:
    """Closest patient axis letter per direction column (positive L, P, S; negative R, A, I)."""
    letters = ("LR", "PA", "SI")
    code = []
    for col in np.asarray(direction, dtype=float).T:
        axis = int(np.argmax(np.abs(col)))
        code.append(letters[axis][0] if col[axis] > 0 else letters[axis][1])
    return "".join(code)


def cosines(image_orientation: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column direction cosines from Image Orientation (Patient), normalised.

    Raises ``ValueError`` when they are not six numbers describing two orthogonal, non-zero vectors, because
    every later geometry step would silently be wrong.
    """
    values = np.asarray([float(v) for v in image_orientation], dtype=float)
    if values.shape != (6,):
        raise ValueError(f"Image Orientation (Patient) needs 6 values, got {values.size}")
    row, col = values[:3], values[3:]
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if nr < 0.5 or nc < 0.5:
        raise ValueError("Image Orientation (Patient) holds a zero-length direction")
    row, col = row / nr, col / nc
    if abs(float(row @ col)) > 1e-3:
        raise ValueError("Image Orientation (Patient) row and column directions are not orthogonal")
    return row, col


def slice_normal(image_orientation: Sequence[float]) -> np.ndarray:
    """Unit normal ``row x column`` of a slice: the direction slices are sorted along (as ITK does)."""
    row, col = cosines(image_orientation)
    normal = np.cross(row, col)
    return normal / np.linalg.norm(normal)


def same_orientation(a: Sequence[float], b: Sequence[float], tol: float = 1e-4) -> bool:
    """Whether two Image Orientation (Patient) values describe the same plane orientation."""
    return bool(np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), atol=tol))


def sort_along_normal(positions: Points, image_orientation: Sequence[float]) -> tuple[list[int], np.ndarray]:
    """Order of slices along the normal, and their sorted distances ``n . IPP`` (mm).

    Sorting on position along the normal works for any orientation (axial, oblique, sagittal) and does not
    trust Instance Number, which scanners and PACS routing often scramble.
    """
    normal = slice_normal(image_orientation)
    pts = np.asarray(positions, dtype=float).reshape(-1, 3)
    distance = pts @ normal
    order = [int(i) for i in np.argsort(distance, kind="stable")]
    return order, distance[order]


@dataclass(frozen=True)
class StackSpacing:
    """Slice spacing measured from positions, with what was found along the way."""

    spacing: float
    regular: bool
    gaps: tuple[float, ...]


def stack_spacing(sorted_distances: np.ndarray, rtol: float = SPACING_RTOL) -> StackSpacing:
    """Spacing between consecutive sorted slices (their mean gap) and whether the gaps are even.

    Raises ``ValueError`` on two slices at the same position: that is two volumes (echoes, phases, repeats)
    mixed in one series, and no single spacing describes it.
    """
    gaps = np.diff(np.asarray(sorted_distances, dtype=float))
    if gaps.size == 0:
        return StackSpacing(spacing=float("nan"), regular=True, gaps=())
    if np.any(gaps < DUPLICATE_TOL_MM):
        count = int(np.sum(gaps < DUPLICATE_TOL_MM))
        raise ValueError(
            f"{count} slice(s) share a position with another: several volumes (echoes, phases, "
            "repeats) are mixed in one stack"
        )
    mean = float((sorted_distances[-1] - sorted_distances[0]) / gaps.size)
    regular = bool(np.all(np.abs(gaps - mean) <= rtol * mean))
    return StackSpacing(spacing=mean, regular=regular, gaps=tuple(float(g) for g in gaps))


def off_line(sorted_positions: Points, pixel_spacing: Sequence[float]) -> tuple[int, float] | None:
    """``(index, distance in mm)`` of the slice farthest from the line through the first and last positions, when it
    lies beyond :data:`OFF_LINE_PIXELS` of a pixel from it; ``None`` when every slice is on the line.

    Why: the affine places slice ``k`` at ``first + k * step``. A slice shifted in its own plane (another field of
    view, a table move, two stacks joined) would be drawn where it is not, and a mask on it would land off its
    anatomy; sorting and gap checks look only along the normal and cannot see it."""
    pts = np.asarray(sorted_positions, dtype=float).reshape(-1, 3)
    if pts.shape[0] < 3:
        return None
    axis = pts[-1] - pts[0]
    length = float(np.linalg.norm(axis))
    if length < DUPLICATE_TOL_MM:
        return None
    axis /= length
    offsets = pts - pts[0]
    distance = np.linalg.norm(offsets - np.outer(offsets @ axis, axis), axis=1)
    worst = int(np.argmax(distance))
    tolerance = max(OFF_LINE_MIN_MM, OFF_LINE_PIXELS * float(min(abs(float(v)) for v in pixel_spacing)))
    return (worst, float(distance[worst])) if distance[worst] > tolerance else None


def stack_geometry(
    sorted_positions: Points,
    image_orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    rows: int,
    columns: int,
    fallback_slice_spacing: float | None = None,
) -> Geometry:
    """Geometry of slices already sorted along the normal.

    ``pixel_spacing`` is DICOM's Pixel Spacing: (between rows, between columns). The slice spacing is
    ``(last - first) / (n - 1)`` measured along the stacking direction; a single slice uses
    ``fallback_slice_spacing`` (Spacing Between Slices or Slice Thickness) or 1 mm.
    """
    row, col = cosines(image_orientation)
    normal = np.cross(row, col)
    pts = np.asarray(sorted_positions, dtype=float).reshape(-1, 3)
    n = pts.shape[0]
    z_axis = normal
    if n > 1:
        step = (pts[-1] - pts[0]) / (n - 1)
        dz = float(np.linalg.norm(step))
        if dz < DUPLICATE_TOL_MM:
            raise ValueError("first and last slice are at the same position")
        stack_dir = step / dz
        if float(stack_dir @ normal) < PARALLEL_COS:
            # Tilted stack (e.g. CT gantry tilt): keep the true stacking direction, the affine is sheared.
            z_axis = stack_dir
    else:  # a negative Spacing Between Slices (older MR, NM) gives the distance all the same; the normal the side
        hint = abs(float(fallback_slice_spacing)) if fallback_slice_spacing else 0.0
        dz = hint if np.isfinite(hint) and hint > 0 else 1.0
    direction = np.column_stack([row, col, z_axis])
    return Geometry(
        shape=(n, int(rows), int(columns)),
        spacing=(float(pixel_spacing[1]), float(pixel_spacing[0]), dz),
        origin=(float(pts[0, 0]), float(pts[0, 1]), float(pts[0, 2])),
        direction=tuple(float(v) for v in direction.ravel()),
    )


def geometry_from_affine(affine_lps: np.ndarray, shape: Sequence[int]) -> Geometry:
    """A :class:`Geometry` from a 4x4 LPS affine over ``(column, row, slice)`` indices and a volume shape."""
    affine = np.asarray(affine_lps, dtype=float)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = affine[:3, :3] / spacing
    s, r, c = (int(v) for v in shape)
    return Geometry(
        shape=(s, r, c),
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        origin=(float(affine[0, 3]), float(affine[1, 3]), float(affine[2, 3])),
        direction=tuple(float(v) for v in direction.ravel()),
    )


#: NIfTI-1 spatial units (``xyzt_units``, as nibabel names them) in millimetres; "unknown" is taken as mm, as
#: nibabel, ITK and nnU-Net take it.
NIFTI_UNIT_MM = {"mm": 1.0, "meter": 1000.0, "micron": 0.001, "unknown": 1.0}


def nifti_affine_mm(img: Any) -> np.ndarray:
    """A nibabel image's affine with its spatial part in millimetres, whatever unit its header names: a volume
    stored in metres (pixdim 0.001, legal NIfTI-1) was read as 0.001 mm voxels and resampled to nothing."""
    affine = np.array(img.affine, dtype=np.float64)
    header = img.header
    unit = header.get_xyzt_units()[0] if hasattr(header, "get_xyzt_units") else "unknown"
    scaled: np.ndarray = affine * np.array([[NIFTI_UNIT_MM.get(str(unit), 1.0)]] * 3 + [[1.0]])
    return scaled
