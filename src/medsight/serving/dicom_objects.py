"""Results as DICOM objects a PACS accepts: SEG (masks), SR (findings), Secondary Capture (overlays).

Every object is built by highdicom, so it is valid by construction and references its source images (same
patient, study and frame of reference); every file is written atomically through :mod:`medsight.io.atomic`.
Readers mirror the writers (``read_seg``, ``read_sr``), so a round trip can be checked.

Findings and segments are coded through :mod:`medsight.serving.codes` (SNOMED CT / RadLex where a code exists,
the bundle's own map first, the local scheme last and declared as such) and carry the algorithm's identity
(:class:`medsight.serving.provenance.AlgorithmIdentity`: name, version, bundle checksum) as IHE AI Results asks.
Sources that lack Type 2 attributes (PatientBirthDate, PatientSex, ...) are completed with empty values on a copy,
so exported series with stripped headers still give valid objects.

Masks are in *volume order*: ``mask[k]`` is slice ``k`` of ``medsight.io.dicom.read_series`` on the same
source, i.e. sorted along the slice normal. The writer sorts the source datasets the same way, so the caller
never has to track file order.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import logging
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ParamSpec, TypeVar

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes as dicom_codes
from pydicom.sr.coding import Code

from medsight import __version__
from medsight.errors import MedsightError
from medsight.io import geometry as geo
from medsight.io.atomic import atomic_path
from medsight.io.dicom import Instance, Series, series_layout
from medsight.io.geometry import Geometry
from medsight.serving import codes as label_codes
from medsight.serving.codes import LOCAL_SCHEME as LOCAL_SCHEME  # re-exported: writers' local scheme
from medsight.serving.provenance import AlgorithmIdentity, identity_from_sr_parameters

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")
#: highdicom's check of a person name without a caret: its warning quotes the name (e.g. "LIDC-IDRI-0001")
_PERSON_NAME_WARNING = r'The string ".*" is unlikely to represent the intended person name'


def silence_person_name_warnings() -> None:
    """Drop highdicom's person-name warning, process-wide (idempotent).

    Why: it quotes the patient's name and goes to stderr, the service's log; many real exports have one-word names.
    The name itself is copied into the object unchanged, as the standard asks.
    """
    warnings.filterwarnings("ignore", message=_PERSON_NAME_WARNING, category=UserWarning)


def names_stay_out_of_warnings(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorator for writers that build highdicom objects from a source's header: see
    :func:`silence_person_name_warnings` (re-applied per call: a caller's ``catch_warnings`` may have reset it)."""

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        silence_person_name_warnings()
        return func(*args, **kwargs)

    return wrapper


MANUFACTURER = "medsight"

PathLike = str | Path


@dataclass(frozen=True)
class Label:
    """A segment or finding class: its name, and optionally standard codes (SNOMED CT, ...) for it.

    Without codes the label is looked up in :mod:`medsight.serving.codes` (a bundle's map, then SNOMED CT /
    RadLex); a label with no standard code gets a local code (scheme ``99MEDSIGHT``) whose meaning is the name:
    valid DICOM that says honestly that the concept is the model's own.
    """

    name: str
    code: Code | None = None
    category: Code | None = None

    def concept(self) -> hd.sr.CodedConcept:
        """The coded concept for this label."""
        code = self.code or label_codes.local_code(self.name)
        return hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning)


def resolve_label(value: str | Label, overrides: Mapping[str, Code] | None = None) -> Label:
    """The label with its code and category: given codes are kept, else the bundle map, defaults, local."""
    label = value if isinstance(value, Label) else Label(str(value))
    if label.code is not None:
        return label
    coded = label_codes.code_for(label.name, overrides)
    return Label(label.name, coded.code, label.category or coded.category)


#: Type 2 attributes of the Patient and General Study modules: required, empty when unknown (PS3.5 7.4.5).
TYPE2_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


@contextmanager
def for_input(source: PathLike) -> Iterator[None]:
    """DICOM results written for the input ``source``: a failure names the input and the reason, not the (temporary)
    output file the user never named. An error that already names the source is passed on as it is."""
    try:
        yield
    except MedsightError as exc:
        if exc.path == str(source):
            raise
        raise MedsightError(f"cannot write its DICOM results: {exc.problem}", source) from exc


#: What every object written from a source copies or references: without them no result can point at the source.
REFERENCE_ATTRIBUTES = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def require_references(datasets: Sequence[Dataset]) -> None:
    """Refuse sources that lack a Type 1 UID the results must copy or reference, naming the source file (not the
    output, which the user never named) and what it lacks."""
    for i, ds in enumerate(datasets):
        missing = [k for k in REFERENCE_ATTRIBUTES if not str(ds.get(k, "") or "").strip()]
        if missing:
            filename = getattr(ds, "filename", None)  # a dataset built in memory (highdicom) has none
            name = filename if isinstance(filename, str) and filename else f"source image {i + 1}"
            raise MedsightError(
                f"not valid DICOM: {', '.join(missing)} (Type 1) missing or empty, so no result can reference it",
                name,
            )


#: Patient and study attributes a result copies, whose values are checked against their VR: dates, times, sex.
_DATES = ("PatientBirthDate", "StudyDate")
_TIMES = ("StudyTime",)
_SEX = {"M": "M", "F": "F", "O": "O", "MALE": "M", "FEMALE": "F", "OTHER": "O"}
#: What a failure message from highdicom or pydicom must never quote: every attribute a result copies from the
#: Patient and General Study modules, and the other identifying patient attributes.
_PATIENT_VALUES = (*TYPE2_ATTRIBUTES, "PatientBirthTime", "PatientAge", "OtherPatientIDs", "IssuerOfPatientID")


def _standard_date(text: str) -> str:
    """``text`` as DA (YYYYMMDD): kept when it is one, read from year-first forms (1970-03-15, 1970/3/15), else ""
    (a day-first form such as 15.03.1970 is ambiguous: a guess would be wrong for some countries' exports)."""
    text = text.strip()
    found = re.fullmatch(r"(\d{4})(?:[-/.]?)(\d{1,2})(?:[-/.]?)(\d{1,2})", text)
    if found is None:
        return ""
    try:
        return dt.date(*(int(g) for g in found.groups())).strftime("%Y%m%d")
    except ValueError:
        return ""


def _standard_time(text: str) -> str:
    """``text`` as TM (HHMMSS.FFFFFF or a prefix): kept when it is one, read from 12:30:05, else ""."""
    text = text.strip()
    if re.fullmatch(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?", text):
        return text
    found = re.fullmatch(r"(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?", text)
    return "".join(g for g in found.groups() if g) if found else ""


def conformant_patient_attributes(datasets: Sequence[Dataset]) -> list[Dataset]:
    """``datasets``, with shallow copies where a date, time or sex the results copy is not in its VR's form: put in
    it where that form can be read without a guess (1970-03-15 -> 19700315, Male -> M), else left empty (Type 2).

    Exporters write such values; highdicom refuses to copy them, and the whole result (SEG, SR, SC) was lost. The
    callers' datasets are left untouched; conformant ones are returned as they are (no copy)."""
    out = []
    for ds in datasets:
        changes: dict[str, str] = {}
        for keyword in (*_DATES, *_TIMES):
            value = ds.get(keyword)
            if value in (None, ""):
                continue
            fixed = (_standard_date if keyword in _DATES else _standard_time)(str(value))
            if fixed != str(value):
                changes[keyword] = fixed
        sex = ds.get("PatientSex")
        if sex not in (None, "") and str(sex) not in ("M", "F", "O"):
            changes["PatientSex"] = _SEX.get(str(sex).strip().upper(), "")
        if not changes:
            out.append(ds)
            continue
        fixed_ds = _shallow_copy(ds)
        for keyword, value in changes.items():
            delattr(fixed_ds, keyword)  # the element is shared with ``ds``: replaced, never changed in place
            setattr(fixed_ds, keyword, value)
        log.warning("%s of a source not in DICOM's form: written in it, or empty", ", ".join(sorted(changes)))
        out.append(fixed_ds)
    return out


def _shallow_copy(ds: Dataset) -> Dataset:
    """A copy of ``ds`` with its own element table (values shared): ``copy.copy`` of a pydicom Dataset shares the
    table itself, so adding an element to the copy added it to the caller's dataset too."""
    out = copy.copy(ds)
    out._dict = dict(ds._dict)
    return out


def scrub_source_values(text: str, sources: Sequence[Dataset]) -> str:
    """``text`` (a library's error message) without any patient or study attribute value of ``sources``: highdicom
    and pydicom quote the value they could not take, and a one-line error must name no patient."""
    values: set[str] = set()
    for ds in sources:
        for keyword in _PATIENT_VALUES:
            value = ds.get(keyword)
            items = value if isinstance(value, list | tuple | MultiValue) else [value]
            values.update(str(v).strip() for v in items if v not in (None, ""))
    for value in sorted((v for v in values if len(v) >= 2), key=len, reverse=True):
        text = text.replace(value, "<removed>")
    # the name also by its parts, as whole words in any case: a message may give the family name alone
    parts = {p for ds in sources for p in re.split(r"[\^=\s]+", str(ds.get("PatientName", "") or "")) if len(p) >= 2}
    for part in sorted(parts, key=len, reverse=True):
        text = re.sub(rf"(?<!\w){re.escape(part)}(?!\w)", "<removed>", text, flags=re.IGNORECASE)
    return text


def with_type2(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Shallow copies of ``datasets`` where every missing Type 2 attribute is present and empty, and dates, times
    and sex are in their VR's form (:func:`conformant_patient_attributes`).

    Many exported series drop PatientBirthDate/PatientSex or leave StudyID empty; highdicom reads them from the
    sources and would fail. The copies share pixel data with the originals, which are left untouched."""
    out = []
    for ds in conformant_patient_attributes(datasets):
        missing = [k for k in TYPE2_ATTRIBUTES if k not in ds]
        if not missing:
            out.append(ds)
            continue
        completed = _shallow_copy(ds)
        for keyword in missing:
            setattr(completed, keyword, None)
        out.append(completed)
    return out


def character_set(source: Dataset) -> str | list[str] | None:
    """The Specific Character Set a derived object (SR, SEG, SC) is written in: the source's, which highdicom copies,
    when highdicom accepts it; otherwise UTF-8 (``ISO_IR 192``), which holds any text the source's patient module
    carries. highdicom 0.28 refuses valid forms: the code extensions with the default repertoire first, written
    empty (``\\ISO 2022 IR 87``, PS3.5 Annex H), and Korean ``ISO 2022 IR 149``, which its list lacks."""
    from highdicom.enum import SpecificCharacterSetValues

    given = source.get("SpecificCharacterSet")
    if given is None:
        return None
    values = [given] if isinstance(given, str) else list(given)
    known = {v.value for v in SpecificCharacterSetValues}
    if all(v in known for v in values):
        return values[0] if len(values) == 1 else values
    return "ISO_IR 192"


# --------------------------------------------------------------------------------------------------------
# Ordering source datasets like read_series does
# --------------------------------------------------------------------------------------------------------


def volume_order(source_datasets: Sequence[Dataset]) -> list[tuple[int, int]]:
    """``(dataset index, frame index)`` of each volume slice, in the order ``read_series`` gives.

    Uses the same layout code as the reader, so a mask predicted on ``read_series(...).array`` lines up with
    the sources whatever order the files were listed in.
    """
    from medsight.io.dicom import _instance  # the reader's own header parsing, so both sides agree

    if not source_datasets:
        raise MedsightError("no source datasets given")
    # Each source under its file name, so that a refusal names the file (as read_series does); "#i" without one.
    names = [getattr(ds, "filename", None) or "" for ds in source_datasets]
    names = [n if isinstance(n, str) else "" for n in names]
    unique = all(names) and len(set(names)) == len(names)
    paths = [Path(n) if unique else Path(f"#{i}") for i, n in enumerate(names)]
    index = {path: i for i, path in enumerate(paths)}
    instances: list[Instance] = []
    for path, ds in zip(paths, source_datasets, strict=True):
        try:
            instances.append(_instance(ds, path))
        except (ValueError, TypeError, AttributeError) as exc:
            raise MedsightError(f"source dataset {index[path]} has an unreadable header ({exc})") from exc
    first = source_datasets[0]
    series = Series(
        series_instance_uid=str(first.get("SeriesInstanceUID", "")),
        series_number=None,
        modality=str(first.get("Modality", "")),
        description="",
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        instances=instances,
    )
    layout = series_layout(series)
    if layout.geometry is None:
        raise MedsightError("source images have no patient geometry; a SEG needs it")
    return [(index[f.path], f.index) for f in layout.frames]


# --------------------------------------------------------------------------------------------------------
# SEG
# --------------------------------------------------------------------------------------------------------


@names_stay_out_of_warnings
def write_seg(
    mask: np.ndarray,
    source_datasets: Sequence[Dataset],
    labels: Sequence[str | Label],
    out_path: PathLike,
    *,
    model_name: str = "medsight",
    model_version: str = __version__,
    series_number: int = 9001,
    series_description: str = "medsight segmentation",
    omit_empty_frames: bool = False,
    identity: AlgorithmIdentity | None = None,
    codes: Mapping[str, Code] | None = None,
) -> Path:
    """Write a binary DICOM SEG of ``mask`` over its source series; returns the path.

    ``mask`` is ``[slice, row, column]`` in volume order (as ``read_series`` returns the source): bool for
    one label, or integers ``0..len(labels)`` where ``k`` means ``labels[k-1]``. Each label becomes a
    segment identified by the model's name and version. By default every source frame is encoded (also
    empty ones) so that the SEG alone carries the source geometry. ``identity`` (name, version, bundle checksum)
    overrides ``model_name``/``model_version``; ``codes`` is the bundle's label map (see :mod:`.codes`).
    """
    arr = np.asarray(mask)
    names = [resolve_label(v, codes) for v in labels]
    if not names:
        raise MedsightError("at least one label is needed")
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3:
        raise MedsightError(f"mask must be [slice, row, column], got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise MedsightError(f"mask must hold integer labels or booleans, got {arr.dtype}")
    if arr.min(initial=0) < 0 or arr.max(initial=0) > len(names):
        raise MedsightError(f"mask values must lie in 0..{len(names)} (one per label)")
    require_references(source_datasets)
    order = [(0, 0)] if _one_plane_without_geometry(source_datasets) else volume_order(source_datasets)
    sources, pixels = _source_aligned(arr, with_type2(source_datasets), order)
    identity = identity or AlgorithmIdentity(model_name, model_version)
    model_name = identity.name
    algorithm = identity.seg_identification()
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=label.name[:64],
            segmented_property_category=label.category or dicom_codes.SCT.Tissue,
            segmented_property_type=label.concept(),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for n, label in enumerate(names, start=1)
    ]
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=pixels.astype(np.uint8 if len(names) < 256 else np.uint16),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=model_name[:64],
            software_versions=f"medsight {__version__}",
            device_serial_number="0",
            series_description=series_description[:64],
            content_label="SEGMENTATION",
            omit_empty_frames=omit_empty_frames,
            specific_character_set=character_set(sources[0]),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise MedsightError(f"cannot build DICOM SEG: {scrub_source_values(str(exc), sources)}", out_path) from exc
    if "PatientOrientation" not in seg and _one_plane_without_geometry(sources):
        # General Image, type 2C when there is no patient geometry: the source's, else present and empty
        seg.PatientOrientation = sources[0].get("PatientOrientation", "")
    return _save(seg, out_path)


def _one_plane_without_geometry(source_datasets: Sequence[Dataset]) -> bool:
    """One single-frame image without patient geometry (an ultrasound image, a radiograph): its SEG is one plane in
    the image's own pixels, which highdicom writes without a coordinate system."""
    if len(source_datasets) != 1:
        return False
    ds = source_datasets[0]
    one_frame = int(ds.get("NumberOfFrames", 1) or 1) == 1
    return one_frame and not ("ImagePositionPatient" in ds and "ImageOrientationPatient" in ds)


def _source_aligned(
    mask: np.ndarray, source_datasets: Sequence[Dataset], order: list[tuple[int, int]]
) -> tuple[list[Dataset], np.ndarray]:
    """Sources and mask in the order highdicom pairs them (its frames follow the source frame order)."""
    if mask.shape[0] != len(order):
        raise MedsightError(f"mask has {mask.shape[0]} slices but the source series has {len(order)}")
    first = source_datasets[0]
    if mask.shape[1:] != (int(first.Rows), int(first.Columns)):
        raise MedsightError(
            f"mask slices are {mask.shape[1:]} but source images are {(int(first.Rows), int(first.Columns))}"
        )
    if len(source_datasets) == 1 and len(order) > 1:  # one multi-frame source: put slices back in frame order
        pixels = np.empty_like(mask)
        for k, (_, frame) in enumerate(order):
            pixels[frame] = mask[k]
        return [source_datasets[0]], pixels
    if len({d for d, _ in order}) != len(order):
        raise MedsightError("several multi-frame sources are not supported for SEG; convert to one object")
    return [source_datasets[d] for d, _ in order], mask


@dataclass
class SegmentationResult:
    """A SEG read back: an integer mask ``[slice, row, column]`` (0 = background, k = ``labels[k-1]``); ``geometry``
    is None for a SEG of one image without patient geometry (an ultrasound image, a radiograph)."""

    mask: np.ndarray
    geometry: Geometry | None
    labels: list[str]
    model: list[str] = field(default_factory=list)


def read_seg(path: PathLike, reference: Geometry | None = None) -> SegmentationResult:
    """Read a DICOM SEG as a label mask with geometry in medsight's convention (sorted along the normal).

    With ``reference`` (e.g. ``read_series(source).geometry``) the mask is placed on that grid, slice for
    slice, so it lines up with the source volume even when the SEG omits empty frames.
    """
    path = Path(path)
    try:
        seg = hd.seg.segread(path)
        if "FrameOfReferenceUID" not in seg:  # one plane in its source image's pixels (write_seg's 2D case)
            return _read_plane_seg(seg, path, reference)
        volume = seg.get_volume(combine_segments=True, relabel=False, dtype=np.uint16)
    except MedsightError:
        raise
    except Exception as exc:  # highdicom raises many types for objects it cannot interpret
        raise MedsightError(f"cannot read DICOM SEG ({type(exc).__name__}: {exc})", path) from exc
    if volume is None or volume.array.ndim != 3:
        raise MedsightError("DICOM SEG has no single volume", path)
    mask, geometry = _canonical(np.asarray(volume.array), np.asarray(volume.affine))
    labels = [str(item.SegmentLabel) for item in seg.SegmentSequence]
    models = [
        f"{a.AlgorithmName} {a.AlgorithmVersion}"
        for item in seg.SegmentSequence
        for a in item.get("SegmentationAlgorithmIdentificationSequence", [])
    ]
    if reference is not None:
        mask = _place(mask, geometry, reference, path)
        geometry = reference
    return SegmentationResult(mask=mask, geometry=geometry, labels=labels, model=list(dict.fromkeys(models)))


def _read_plane_seg(seg: hd.seg.Segmentation, path: Path, reference: Geometry | None) -> SegmentationResult:
    """A SEG without a frame of reference: one plane ``[1, row, column]`` on its single source image, no geometry."""
    if reference is not None:
        raise MedsightError("the SEG has no patient geometry to place on a reference series", path)
    sources = [i for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence]
    if len(sources) != 1:
        raise MedsightError(f"a SEG without patient geometry must reference one image, not {len(sources)}", path)
    # highdicom 0.28's get_pixels_by_source_frame fails on a single-frame source without a frame of reference
    # (TypeError inside it), so the frames are combined here: each frame is one segment's binary plane
    frames = np.asarray(seg.pixel_array).reshape(-1, int(seg.Rows), int(seg.Columns))
    mask = np.zeros((1, int(seg.Rows), int(seg.Columns)), np.uint16)
    shared = seg.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        ident = item.get("SegmentIdentificationSequence") or shared.get("SegmentIdentificationSequence")
        mask[0][frame > 0] = int(ident[0].ReferencedSegmentNumber)
    labels = [str(item.SegmentLabel) for item in seg.SegmentSequence]
    models = [
        f"{a.AlgorithmName} {a.AlgorithmVersion}"
        for item in seg.SegmentSequence
        for a in item.get("SegmentationAlgorithmIdentificationSequence", [])
    ]
    return SegmentationResult(
        mask=np.ascontiguousarray(mask), geometry=None, labels=labels, model=list(dict.fromkeys(models))
    )


def _canonical(array: np.ndarray, hd_affine: np.ndarray) -> tuple[np.ndarray, Geometry]:
    """highdicom volume (index ``slice, row, column``) to medsight's: slices increasing along the normal."""
    affine = np.eye(4)
    affine[:3, :3] = hd_affine[:3, [2, 1, 0]]
    affine[:3, 3] = hd_affine[:3, 3]
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    if float(affine[:3, 2] @ normal) < 0:
        array = array[::-1]
        affine[:3, 3] = affine[:3, 3] + (array.shape[0] - 1) * affine[:3, 2]
        affine[:3, 2] = -affine[:3, 2]
    return np.ascontiguousarray(array), geo.geometry_from_affine(affine, array.shape)


def _place(mask: np.ndarray, geometry: Geometry, reference: Geometry, path: Path) -> np.ndarray:
    """Put ``mask`` on the ``reference`` grid; both must share orientation and in-plane grid."""
    same_plane = np.allclose(geometry.direction_matrix[:, :2], reference.direction_matrix[:, :2], atol=1e-4)
    same_pixels = np.allclose(geometry.spacing[:2], reference.spacing[:2], rtol=1e-4)
    if not (same_plane and same_pixels and mask.shape[1:] == tuple(reference.shape[1:])):
        raise MedsightError("SEG grid does not match the reference series (orientation or pixels)", path)
    inverse = np.linalg.inv(reference.affine_lps)
    out = np.zeros(reference.shape, dtype=mask.dtype)
    for k in range(mask.shape[0]):
        world = geometry.index_to_lps([0.0, 0.0, float(k)])
        index = inverse[:3, :3] @ world + inverse[:3, 3]
        slot = round(float(index[2]))
        if not np.allclose(index, [0.0, 0.0, slot], atol=1e-2) or not 0 <= slot < reference.shape[0]:
            if mask[k].any():
                raise MedsightError(f"SEG slice {k} does not lie on a slice of the reference series", path)
            continue
        out[slot] = mask[k]
    return out


# --------------------------------------------------------------------------------------------------------
# SR
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One model finding: a class and its probability, about the given source images (default: all).

    A finding may carry a region on one source image: ``box = (x1, y1, x2, y2)`` (its top-left and
    bottom-right corners) or ``point = (x, y)`` (e.g. a lesion centre). Coordinates are continuous pixel
    coordinates of that image as DICOM 2D image coordinates define them (PS3.3 C.18.6.1.2): ``x`` is the
    column, ``y`` the row, ``(0, 0)`` is the top-left corner of the top-left pixel, so pixel ``(row r,
    column c)`` covers ``[c, c+1) x [r, r+1)`` and ``(Columns, Rows)`` is the bottom-right corner of the
    image. This is medsight's box convention (e.g. detection's ``predictions.json``). A region finding must
    name exactly one image in ``image_indices`` (``None`` is accepted when there is only one source image).

    ``identifier`` names one of several findings of a class (e.g. "nodule 2"; default: the label) as the group's
    Tracking Identifier; ``size`` is its volume in mm³ (``"mm3"``) or area in mm² (``"mm2"``), reported as an SCT
    Volume or Area measurement beside the probability.
    """

    label: str | Label
    probability: float
    image_indices: tuple[int, ...] | None = None
    box: tuple[float, float, float, float] | None = None
    point: tuple[float, float] | None = None
    identifier: str | None = None
    size: tuple[float, str] | None = None


@names_stay_out_of_warnings
def write_sr(
    findings: Sequence[Finding],
    source_datasets: Sequence[Dataset],
    out_path: PathLike,
    model_name: str = "medsight",
    model_version: str = __version__,
    *,
    series_number: int = 9002,
    series_description: str = "medsight findings",
    identity: AlgorithmIdentity | None = None,
    codes: Mapping[str, Code] | None = None,
) -> Path:
    """Write a Comprehensive 3D SR holding a TID 1500 Measurement Report of ``findings``; returns the path.

    Each finding is a measurement group (TID 1501) with the class as its Finding (finding type), the
    probability as a NUM "Probability" (DCM 122157, unit 1), the model as Algorithm Name and
    Version, and references to its source images. The device observer is the model.

    ``identity`` (IHE AIR provenance) overrides ``model_name``/``model_version`` and adds the bundle checksum as
    TID 4019 Algorithm Parameters. Labels are coded through ``codes`` (the bundle's map) and
    :mod:`medsight.serving.codes`; the model's own label text is kept as the group's Tracking Identifier, and the
    coding schemes used (the local one described as medsight's own) are listed in Coding Scheme Identification.
    """
    if not source_datasets:
        raise MedsightError("an SR needs at least one source image to reference", out_path)
    require_references(source_datasets)
    source_datasets = with_type2(source_datasets)
    identity = identity or AlgorithmIdentity(model_name, model_version)
    model_name, model_version = identity.name, identity.version
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]
    groups = []
    algorithm = identity.sr_identification()
    used: list[Code] = [dicom_codes.DCM.Probability, dicom_codes.UCUM.NoUnits, dicom_codes.SCT.ImagingProcedure]
    for n, finding in enumerate(findings, start=1):
        p = float(finding.probability)
        if not 0.0 <= p <= 1.0:
            raise MedsightError(f"finding {n}: probability {p} is outside [0, 1]", out_path)
        label = resolve_label(finding.label, codes)
        concept = label.concept()
        used.append(Code(concept.value, concept.scheme_designator, concept.meaning))
        name = finding.identifier or label.name
        tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=name[:64] or f"finding {n}")
        probability = hd.sr.Measurement(
            name=dicom_codes.DCM.Probability, value=p, unit=dicom_codes.UCUM.NoUnits, algorithm_id=algorithm
        )
        measurements = [probability, *_size_measurement(finding, n, algorithm, out_path, used)]
        if finding.box is not None or finding.point is not None:
            groups.append(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=tracking,
                    referenced_region=_image_region(finding, n, source_datasets, out_path),
                    finding_type=concept,
                    algorithm_id=algorithm,
                    measurements=measurements,
                )
            )
            continue
        indices = finding.image_indices if finding.image_indices is not None else range(len(source_datasets))
        try:
            images = [hd.sr.SourceImageForMeasurementGroup.from_source_image(source_datasets[i]) for i in indices]
        except IndexError as exc:
            raise MedsightError(f"finding {n}: image index out of range", out_path) from exc
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                finding_type=concept,
                algorithm_id=algorithm,
                source_images=images,
                measurements=measurements,
            )
        )
    observer = hd.sr.ObserverContext(
        observer_type=dicom_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=model_name[:64], manufacturer_name=MANUFACTURER, model_name=model_version[:64]
        ),
    )

    def measurement_report(library: list[Dataset] | None) -> hd.sr.MeasurementReport:
        return hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=dicom_codes.SCT.ImagingProcedure,
            imaging_measurements=groups,
            referenced_images=library,
        )

    try:
        report = measurement_report(list(source_datasets))
    except (AttributeError, TypeError, ValueError):
        # The optional Image Library (TID 1600) needs descriptors some real files lack (e.g. a CR without
        # Imager Pixel Spacing) or hold in a form highdicom cannot use (attributes stored with VR UN); each finding
        # still references its source images.
        report = measurement_report(None)
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=list(source_datasets),
            content=report,
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,
            series_description=series_description[:64],
            specific_character_set=character_set(source_datasets[0]),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise MedsightError(
            f"cannot build DICOM SR: {scrub_source_values(str(exc), source_datasets)}", out_path
        ) from exc
    sr.CodingSchemeIdentificationSequence = [
        _scheme_item(item) for item in label_codes.coding_scheme_identification(used)
    ]
    return _save(sr, out_path)


#: a finding's size unit → (SR concept, UCUM unit)
_SIZES: dict[str, tuple[Code, Code]] = {
    "mm3": (dicom_codes.SCT.Volume, dicom_codes.UCUM.CubicMillimeter),
    "mm2": (dicom_codes.SCT.Area, dicom_codes.UCUM.SquareMillimeter),
}


def _size_measurement(
    finding: Finding, n: int, algorithm: hd.sr.AlgorithmIdentification, out_path: PathLike, used: list[Code]
) -> list[hd.sr.Measurement]:
    """The finding's volume or area as a measurement (none without a size)."""
    if finding.size is None:
        return []
    value, unit = finding.size
    if unit not in _SIZES:
        raise MedsightError(f"finding {n}: size unit {unit!r} is not one of {sorted(_SIZES)}", out_path)
    if not np.isfinite(value) or value < 0:
        raise MedsightError(f"finding {n}: size {value} is not a finite, non-negative number", out_path)
    concept, ucum = _SIZES[unit]
    used.extend([concept, ucum])
    return [hd.sr.Measurement(name=concept, value=float(value), unit=ucum, algorithm_id=algorithm)]


def _scheme_item(values: Mapping[str, str]) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _image_region(
    finding: Finding, n: int, source_datasets: Sequence[Dataset], out_path: PathLike
) -> hd.sr.ImageRegion:
    """The finding's box (closed POLYLINE through its four corners) or point (POINT) on its one source image."""
    if finding.box is not None and finding.point is not None:
        raise MedsightError(f"finding {n}: give a box or a point, not both", out_path)
    indices = tuple(finding.image_indices) if finding.image_indices is not None else tuple(range(len(source_datasets)))
    if len(indices) != 1:
        raise MedsightError(
            f"finding {n}: a finding with a box or point must name exactly one source image "
            f"(image_indices), got {len(indices)}",
            out_path,
        )
    index = indices[0]
    if not 0 <= index < len(source_datasets):
        raise MedsightError(f"finding {n}: image index {index} out of range", out_path)
    ds = source_datasets[index]
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise MedsightError(f"finding {n}: regions on multi-frame images are not supported", out_path)
    columns, rows = float(ds.get("Columns", 0) or 0), float(ds.get("Rows", 0) or 0)
    if finding.box is not None:
        x1, y1, x2, y2 = (float(v) for v in finding.box)
        if not (0.0 <= x1 <= x2 <= columns and 0.0 <= y1 <= y2 <= rows):
            raise MedsightError(
                f"finding {n}: box {finding.box} is not (x1, y1, x2, y2) with 0 <= x1 <= x2 <= {columns:g} "
                f"(columns) and 0 <= y1 <= y2 <= {rows:g} (rows)",
                out_path,
            )
        graphic_type = hd.sr.GraphicTypeValues.POLYLINE
        data = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float64)
    else:
        x, y = (float(v) for v in finding.point or (0.0, 0.0))
        if not (0.0 <= x <= columns and 0.0 <= y <= rows):
            raise MedsightError(
                f"finding {n}: point {finding.point} lies outside the image ({columns:g} x {rows:g})", out_path
            )
        graphic_type = hd.sr.GraphicTypeValues.POINT
        data = np.array([[x, y]], dtype=np.float64)
    try:
        return hd.sr.ImageRegion(
            graphic_type=graphic_type,
            graphic_data=data,
            source_image=hd.sr.SourceImageForRegion.from_source_image(ds),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise MedsightError(
            f"finding {n}: cannot build the image region ({scrub_source_values(str(exc), [ds])})", out_path
        ) from exc


@dataclass(frozen=True)
class ReportedFinding:
    """A finding read back from an SR written by :func:`write_sr`.

    ``box`` / ``point`` are the finding's region in the convention of :class:`Finding` (None when it has none).
    ``label`` is the model's label text (the Tracking Identifier), ``code`` the coded finding
    ``(value, scheme, meaning)`` and ``model_checksum`` the bundle checksum from the Algorithm Parameters.
    ``size`` is the finding's volume or area as :class:`Finding` gives it (``(value, "mm3" | "mm2")``), if any.
    """

    label: str
    probability: float
    model_name: str
    model_version: str
    referenced_sop_instance_uids: tuple[str, ...] = field(repr=False)
    box: tuple[float, float, float, float] | None = None
    point: tuple[float, float] | None = None
    code: tuple[str, str, str] = ("", "", "")
    model_checksum: str = ""
    size: tuple[float, str] | None = None


def read_sr(path: PathLike) -> list[ReportedFinding]:
    """The findings of a TID 1500 SR (as :func:`write_sr` writes them), in document order."""
    path = Path(path)
    try:
        sr = hd.sr.srread(path)
        report = hd.sr.MeasurementReport.from_sequence([sr])  # the document root is the report container
        image_groups = report.get_image_measurement_groups()
        roi_groups = report.get_planar_roi_measurement_groups()
    except Exception as exc:  # highdicom raises many types for reports it cannot interpret
        raise MedsightError(f"cannot read DICOM SR measurement report ({type(exc).__name__}: {exc})", path) from exc
    order = {uid: k for k, uid in enumerate(_tracking_uids(sr))}
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]
    groups = [*image_groups, *roi_groups]
    groups.sort(key=lambda g: order.get(str(g.tracking_uid), len(order)))
    found = []
    for group in groups:
        finding_type = group.finding_type
        probability = float("nan")
        for m in group.get_measurements(name=dicom_codes.DCM.Probability):
            probability = float(m.value)
        size: tuple[float, str] | None = None
        for unit, (concept, _ucum) in _SIZES.items():
            for m in group.get_measurements(name=concept):
                size = (float(m.value), unit)
        box: tuple[float, float, float, float] | None = None
        point: tuple[float, float] | None = None
        if isinstance(group, hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations):
            box, point, uids = _region_of(group, path)
        else:
            uids = tuple(str(img.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for img in group.source_images)
        meaning = str(finding_type.meaning) if finding_type is not None else ""
        identifier = str(group.tracking_identifier or "")
        found.append(
            ReportedFinding(
                label=meaning if not identifier or re.fullmatch(r"finding \d+", identifier) else identifier,
                probability=probability,
                model_name=_text_item(group, dicom_codes.DCM.AlgorithmName),
                model_version=_text_item(group, dicom_codes.DCM.AlgorithmVersion),
                referenced_sop_instance_uids=uids,
                box=box,
                point=point,
                code=(
                    (str(finding_type.value), str(finding_type.scheme_designator), meaning)
                    if finding_type is not None
                    else ("", "", "")
                ),
                model_checksum=identity_from_sr_parameters(_text_items(group, dicom_codes.DCM.AlgorithmParameters)),
                size=size,
            )
        )
    return found


def _tracking_uids(dataset: Dataset) -> list[str]:
    """Tracking Unique Identifiers (DCM 112040) of the content tree, depth first (document order)."""
    out: list[str] = []
    for item in dataset.get("ContentSequence", []):
        concept = item.get("ConceptNameCodeSequence")
        if concept and concept[0].CodeValue == "112040" and concept[0].CodingSchemeDesignator == "DCM":
            out.append(str(item.get("UID", "")))
        out.extend(_tracking_uids(item))
    return out


def _region_of(
    group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations, path: Path
) -> tuple[tuple[float, float, float, float] | None, tuple[float, float] | None, tuple[str, ...]]:
    """(box, point, referenced SOP Instance UIDs) of a planar ROI group with a 2D image region."""
    roi = group.roi
    if not isinstance(roi, hd.sr.ImageRegion):
        raise MedsightError("SR finding has a region that is not a 2D image region (SCOORD)", path)
    data = np.asarray(roi.value, dtype=np.float64).reshape(-1, 2)
    uids = tuple(
        str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for item in roi.get("ContentSequence", [])
        if "ReferencedSOPSequence" in item
    )
    if roi.graphic_type == hd.sr.GraphicTypeValues.POINT:
        return None, (float(data[0, 0]), float(data[0, 1])), uids
    if roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE:  # write_sr's box: the outline's bounding corners
        lo, hi = data.min(axis=0), data.max(axis=0)
        return (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])), None, uids
    return None, None, uids  # CIRCLE / ELLIPSE / ... from other writers: not a box or point


def _text_items(group: Sequence[Dataset], name: Code) -> list[str]:
    """Values of every TEXT content item called ``name`` under the group (any depth: TID 4019 nests them)."""

    def walk(items: Sequence[Dataset]) -> list[str]:
        out: list[str] = []
        for item in items:
            concept = item.get("ConceptNameCodeSequence")
            if concept and (concept[0].CodeValue, concept[0].CodingSchemeDesignator) == (
                name.value,
                name.scheme_designator,
            ):
                out.append(str(item.get("TextValue", "")))
            out.extend(walk(item.get("ContentSequence", [])))
        return out

    return walk(group[0].get("ContentSequence", []) if len(group) else [])


def _text_item(group: Sequence[Dataset], name: Code) -> str:
    """Value of the first TEXT content item called ``name`` directly under the group's container."""
    children = group[0].get("ContentSequence", []) if len(group) else []
    for item in children:
        concept = item.get("ConceptNameCodeSequence")
        if (
            concept
            and concept[0].CodeValue == name.value
            and concept[0].CodingSchemeDesignator == name.scheme_designator
        ):
            return str(item.get("TextValue", ""))
    return ""


# --------------------------------------------------------------------------------------------------------
# Secondary Capture
# --------------------------------------------------------------------------------------------------------


@names_stay_out_of_warnings
def write_secondary_capture(
    rgb_image: np.ndarray,
    source_dataset: Dataset,
    out_path: PathLike,
    *,
    series_number: int = 9003,
    series_description: str = "medsight heatmap overlay",
    instance_number: int = 1,
    series_instance_uid: str | None = None,
) -> Path:
    """Write an RGB image (e.g. a heatmap over its source slice) as a Secondary Capture; returns the path.

    ``rgb_image`` is ``rows x columns x 3``, uint8 or float in [0, 1]. It joins the source's patient and
    study; when it has the source's size it also keeps its pixel spacing and patient orientation. Pass the
    same ``series_instance_uid`` to put several overlays in one series.
    """
    require_references([source_dataset])
    image = np.asarray(rgb_image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise MedsightError(f"expected rows x columns x 3 RGB, got shape {image.shape}", out_path)
    if image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.floating) or image.min() < 0 or image.max() > 1:
            raise MedsightError("RGB image must be uint8, or float in [0, 1]", out_path)
        image = np.round(image * 255).astype(np.uint8)
    source_dataset = with_type2([source_dataset])[0]
    same_size = image.shape[:2] == (int(source_dataset.get("Rows", 0)), int(source_dataset.get("Columns", 0)))
    spacing = source_dataset.get("PixelSpacing") if same_size else None
    orientation = _patient_orientation(source_dataset) if same_size else None
    try:
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source_dataset,
            pixel_array=np.ascontiguousarray(image),
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=series_instance_uid or hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=instance_number,
            manufacturer=MANUFACTURER,
            pixel_spacing=tuple(float(v) for v in spacing) if spacing else None,  # type: ignore[arg-type]
            patient_orientation=orientation or ("L", "P"),
            series_description=series_description[:64],
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            specific_character_set=character_set(source_dataset),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise MedsightError(
            f"cannot build Secondary Capture: {scrub_source_values(str(exc), [source_dataset])}", out_path
        ) from exc
    if orientation is None and "PatientOrientation" in sc:
        sc.PatientOrientation = ["", ""]  # unknown: empty rather than a guess
    if "Laterality" not in sc:  # General Series, type 2C: copy the source's, else present and empty
        sc.Laterality = source_dataset.get("Laterality", "")
    return _save(sc, out_path)


def _patient_orientation(ds: Dataset) -> tuple[str, str] | None:
    """Patient Orientation of rows and columns from the source (or derived from its orientation cosines)."""
    value = ds.get("PatientOrientation")
    if value and len(value) == 2 and all(value):
        return str(value[0]), str(value[1])
    iop = ds.get("ImageOrientationPatient")
    if not iop:
        return None
    try:
        row, col = geo.cosines(iop)
    except ValueError:
        return None
    code = geo.orientation_code(np.column_stack([row, col]))
    return code[0].replace("S", "H").replace("I", "F"), code[1].replace("S", "H").replace("I", "F")


def _save(obj: Dataset, out_path: PathLike) -> Path:
    target = Path(out_path)
    with atomic_path(target) as tmp:
        obj.save_as(tmp, enforce_file_format=True)
    return target
