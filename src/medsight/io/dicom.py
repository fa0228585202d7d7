"""Reading DICOM: scan files, folders or trees; group into studies and series; assemble volumes.

Pixel decoding (JPEG baseline/lossless, JPEG 2000, RLE, ...) is pydicom's, through its pixel-data plugins
(pylibjpeg, openjpeg, rle); the Modality LUT, VOI LUT and palette lookups are pydicom's too. What this module
adds is the part PACS data get wrong most often: geometry. Slices are sorted along the slice normal and the
slice spacing comes from Image Position (Patient), never from Slice Thickness; enhanced multi-frame objects
take positions from their functional groups. Conventions are those of :mod:`medsight.io.geometry` (volume
indexed ``[slice, row, column]``, LPS world, ITK-compatible spacing/origin/direction).

Identifiers (patient name/ID, birth date, UIDs) are kept on the dataclasses for callers that need them, but
left out of their ``repr`` and of every error message, so they do not leak into logs.
"""

from __future__ import annotations

import copy
import io
import logging
import sys
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, data_element_generator, read_preamble
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from medsight.errors import MedsightError
from medsight.io import geometry as geo
from medsight.io.geometry import Geometry

if TYPE_CHECKING:
    from monai.data import MetaTensor

log = logging.getLogger(__name__)

#: Media Storage Directory (DICOMDIR): an index, not an object to read.
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
#: Objects that carry pixels but are not images to stack into a volume (read SEG with ``read_seg``).
NOT_VOLUME_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation",
    "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation",
}

#: (7FE0,0010) Pixel Data, (7FE0,0008) Float Pixel Data, (7FE0,0009) Double Float Pixel Data.
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)

PathLike = str | Path


# --------------------------------------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One 2-D image plane: a single-frame file, or one frame of a multi-frame file.

    ``position``/``orientation``/``pixel_spacing`` are Image Position (Patient), Image Orientation (Patient)
    and Pixel Spacing (between rows, between columns); ``None`` when the object has no patient geometry.
    ``rescale`` (slope, intercept) comes from a multi-frame object's Pixel Value Transformation functional
    group; ``None`` means "use the dataset's own Modality LUT".
    """

    path: Path
    index: int
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    rescale: tuple[float, float] | None = None
    window: tuple[float, float] | None = None


@dataclass(frozen=True)
class Instance:
    """One DICOM file (an SOP instance), described by its header alone."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str = field(repr=False)
    instance_number: int | None
    rows: int | None
    columns: int | None
    samples_per_pixel: int
    photometric: str
    transfer_syntax_uid: str
    frames: tuple[Frame, ...]
    slice_spacing_hint: float | None = None
    #: Frame of Reference UID: positions of two instances compare only within one frame of reference.
    frame_of_reference_uid: str = field(default="", repr=False)

    @property
    def is_image(self) -> bool:
        """Whether it holds pixel data (rows and columns)."""
        return bool(self.rows and self.columns)

    @property
    def sop_class_name(self) -> str:
        """Human name of the SOP class, e.g. ``MR Image Storage``."""
        return str(UID(self.sop_class_uid).name)

    @property
    def transfer_syntax_name(self) -> str:
        """Human name of the transfer syntax, e.g. ``JPEG 2000 Image Compression (Lossless Only)``."""
        return str(UID(self.transfer_syntax_uid).name) if self.transfer_syntax_uid else "unknown"


@dataclass
class Series:
    """The instances of one Series Instance UID."""

    series_instance_uid: str = field(repr=False)
    series_number: int | None
    modality: str
    description: str
    frame_of_reference_uid: str = field(repr=False)
    instances: list[Instance] = field(default_factory=list)
    #: Further files holding an SOP instance already seen (e.g. a compressed and an uncompressed copy).
    duplicates: list[Path] = field(default_factory=list)
    #: Files whose SOP Instance UID another file of the series holds with another image (another position or size):
    #: UIDs reused (a faulty de-identification), so no result could say which image it means.
    clashes: list[Path] = field(default_factory=list)

    @property
    def frames(self) -> list[Frame]:
        """Every image plane of every instance."""
        return [f for inst in self.instances for f in inst.frames]

    @property
    def is_image(self) -> bool:
        """Whether every instance holds image pixels that can be stacked into a volume."""
        return bool(self.instances) and all(
            i.is_image and i.sop_class_uid not in NOT_VOLUME_SOP_CLASSES for i in self.instances
        )

    @property
    def sop_class_names(self) -> list[str]:
        """Distinct SOP class names, in first-seen order."""
        return list(dict.fromkeys(i.sop_class_name for i in self.instances))

    @property
    def transfer_syntax_names(self) -> list[str]:
        """Distinct transfer syntax names, in first-seen order."""
        return list(dict.fromkeys(i.transfer_syntax_name for i in self.instances))


@dataclass
class Study:
    """The series of one Study Instance UID, with the patient/study identifiers (never printed by default)."""

    study_instance_uid: str = field(repr=False)
    description: str
    study_date: str = field(repr=False)
    accession_number: str = field(repr=False)
    patient_name: str = field(repr=False)
    patient_id: str = field(repr=False)
    patient_birth_date: str = field(repr=False)
    series: list[Series] = field(default_factory=list)


@dataclass
class ScanResult:
    """What a scan found: studies of DICOM objects, the files skipped as not DICOM, and (in a scan that is not
    strict) the DICOM files that could not be read, each with its problem."""

    root: Path
    studies: list[Study]
    skipped: list[Path]
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def series(self) -> list[Series]:
        """Every series of every study."""
        return [s for study in self.studies for s in study.series]

    @property
    def n_instances(self) -> int:
        """Number of DICOM objects found."""
        return sum(len(s.instances) for s in self.series)


@dataclass
class Volume:
    """A series assembled into an array plus where it lies in the patient.

    ``array`` is float32 after the Modality LUT (CT in HU), indexed ``[slice, row, column]`` (an extra last
    axis of 3 for colour). ``geometry`` is ``None`` for objects without patient geometry (e.g. ultrasound,
    secondary capture). ``frames[k]`` is the source frame of slice ``k``. ``window`` is the first VOI window
    (centre, width) of the header, for display. MONOCHROME1 data are inverted (within their value range) so
    that high values are bright, as in MONOCHROME2.
    """

    array: np.ndarray
    geometry: Geometry | None
    frames: tuple[Frame, ...]
    modality: str
    series_instance_uid: str = field(repr=False)
    frame_of_reference_uid: str = field(repr=False)
    window: tuple[float, float] | None = None

    @property
    def files(self) -> list[Path]:
        """Distinct source files in slice order (what ``write_seg`` and friends reference)."""
        return list(dict.fromkeys(f.path for f in self.frames))


# --------------------------------------------------------------------------------------------------------
# Scanning
# --------------------------------------------------------------------------------------------------------


def scan(path: PathLike, *, strict: bool = True) -> ScanResult:
    """Find every DICOM object in a file, folder or tree, and group them into studies and series.

    Files that are not DICOM are skipped quietly and listed in ``skipped`` (so a caller can say how many).
    A file that claims to be DICOM but cannot be read (corrupt, truncated) raises ``MedsightError`` naming it;
    with ``strict=False`` it is listed in ``unreadable`` with its problem instead, and the scan goes on.
    """
    root = Path(path)
    if not root.exists():
        raise MedsightError("no such file or folder", root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    instances: list[tuple[Instance, Dataset]] = []
    skipped: list[Path] = []
    unreadable: list[tuple[Path, str]] = []
    for file in _progress(files, "scanning DICOM"):
        try:
            found = read_header(file)
        except MedsightError as exc:
            if strict:
                raise
            unreadable.append((file, exc.problem))
            continue
        if found is None:
            skipped.append(file)
        else:
            instances.append(found)
    return ScanResult(root=root, studies=_group(instances), skipped=skipped, unreadable=unreadable)


def is_dicom_file(path: PathLike) -> bool:
    """Cheap test on the first bytes: the ``DICM`` preamble, or a bare (preamble-less) dataset start.

    The one notion of "is this a DICOM file" for every command (``medsight deid`` included): a file that
    fails it is not DICOM, whatever its name; one that passes it is read with :func:`open_dicom`.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return _has_preamble(head) or _looks_like_bare_dataset(head)


def open_dicom(path: PathLike, **kwargs: Any) -> Dataset:
    """Read a file that :func:`is_dicom_file` accepts: forced only when it has no preamble."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    return pydicom.dcmread(path, force=not _has_preamble(head), **kwargs)


#: VRs whose raw bytes ``peek`` decodes itself: ASCII strings and single 16/32-bit integers.
_PEEK_TEXT = frozenset({"UI", "CS", "AE", "DA", "TM", "DT", "AS"})
_PEEK_INT = {"US": ("<H", ">H", 2), "UL": ("<L", ">L", 4), "SS": ("<h", ">h", 2), "SL": ("<l", ">l", 4)}


def peek(ds: Dataset, tag: int, default: Any = None) -> Any:
    """An element's value as ``ds[tag].value`` gives it, without pydicom converting the element in place.

    Reading a value through pydicom decodes the stored element and keeps it decoded, which costs time now
    and again when the file is written back. A raw single-valued UID, code string, date or time (ASCII) or
    a raw single integer is decoded here and the element stays as read; anything else goes to pydicom.
    """
    elem: Any = ds._dict.get(tag)  # type: ignore[call-overload]  # an int finds its BaseTag key
    if elem is None:
        return default
    if not elem.is_raw:
        return elem.value
    vr, raw = elem.VR, elem.value
    if raw is not None and vr in _PEEK_TEXT and b"\\" not in raw and b"\x1b" not in raw and raw.isascii():
        text = raw.decode("ascii").rstrip("\x00 ")
        return text.strip() if vr == "UI" else text
    if raw is not None and vr in _PEEK_INT and len(raw) == _PEEK_INT[vr][2]:
        fmt = _PEEK_INT[vr][0] if elem.is_little_endian else _PEEK_INT[vr][1]
        return int.from_bytes(raw, "little" if elem.is_little_endian else "big", signed=fmt[1].islower())
    return ds[tag].value


def is_dicomdir(ds: Dataset) -> bool:
    """True for a media directory (DICOMDIR): it indexes files and is not an image or document object."""
    sop_class = str(peek(ds, 0x00080016, "") or getattr(ds.get("file_meta", {}), "MediaStorageSOPClassUID", ""))
    return sop_class == DICOMDIR_SOP_CLASS or 0x00041220 in ds._dict  # Directory Record Sequence


def read_header(path: PathLike) -> tuple[Instance, Dataset] | None:
    """Read one file's header: ``(Instance, dataset without pixel values)``, or ``None`` if it is not DICOM.

    Truncation is checked here (pydicom itself returns a partial dataset silently), so a broken file is
    reported by name rather than producing a wrong volume later.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise MedsightError(f"cannot read file: {exc.strerror}", path) from exc
    preamble = _has_preamble(head)
    if not preamble and not _looks_like_bare_dataset(head):
        return None
    try:
        ds = pydicom.dcmread(path, force=not preamble, defer_size="4 KB")
        deflated = _transfer_syntax(ds) == DeflatedExplicitVRLittleEndian
        if deflated:  # offsets are in the inflated stream: a deferred value could not be found again in the file
            ds = pydicom.dcmread(path, force=not preamble)
    except Exception as exc:  # pydicom raises many types on malformed input; all mean "corrupt"
        raise MedsightError(f"corrupt DICOM file ({type(exc).__name__}: {exc})", path) from exc
    if is_dicomdir(ds):
        return None
    if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
        raise MedsightError("corrupt or truncated DICOM file: no SOP Class/Instance UID", path)
    check_complete(ds, path, deflated)
    try:
        instance = _instance(ds, path)
    except (ValueError, TypeError, AttributeError, IndexError) as exc:
        raise MedsightError(f"corrupt DICOM header ({exc})", path) from exc
    return instance, ds


def _has_preamble(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def _looks_like_bare_dataset(head: bytes) -> bool:
    """A dataset written without preamble starts with a group 0002 or 0008 tag of small element number."""
    if len(head) < 8:
        return False
    group = int.from_bytes(head[0:2], "little")
    element = int.from_bytes(head[2:4], "little")
    return group in (0x0002, 0x0008) and element < 0x0100


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""


def check_complete(ds: Dataset, path: Path, deflated: bool = False) -> None:
    """Raise if the file was cut short: an element runs past the end, or an image lacks its pixel data. In a
    deflated file (read whole) an element is short when fewer bytes were read than its length says."""
    size = path.stat().st_size
    for tag in list(ds.keys()):  # the tags only: iterating the dataset would load deferred values
        raw = ds.get_item(tag, keep_deferred=True)
        tell = getattr(raw, "value_tell", None)
        length = getattr(raw, "length", None)
        if deflated:
            value = getattr(raw, "value", None)
            if isinstance(value, bytes) and length not in (None, 0xFFFFFFFF) and len(value) < length:
                what = "pixel data" if int(tag) in PIXEL_TAGS else f"element {tag}"
                raise MedsightError(
                    f"truncated DICOM file: {what} needs {length} bytes, {len(value)} present (deflated)", path
                )
        elif tell is not None and length not in (None, 0xFFFFFFFF) and tell + length > size:
            what = "pixel data" if int(tag) in PIXEL_TAGS else f"element {tag}"
            raise MedsightError(
                f"truncated DICOM file: {what} needs {length} bytes, {max(size - tell, 0)} present", path
            )
    if "Rows" in ds and "Columns" in ds and not any(t in ds for t in PIXEL_TAGS):
        raise MedsightError("truncated DICOM file: the header describes an image but has no pixel data", path)
    if not deflated:
        _check_file_ends_whole(ds, path, size)


def _check_file_ends_whole(ds: Dataset, path: Path, size: int) -> None:
    """Refuse a file whose last element header was cut short: pydicom stops there without a word. The data set is
    walked again from where pydicom's own reader starts it (large values skipped), so a cut exactly on an element
    boundary, which leaves a well-formed shorter data set, is the one cut no reader can see."""
    tags = list(ds.keys())
    if tags:  # the common case costs nothing: a last value of known length that ends exactly at the end of the file
        last = ds.get_item(max(tags), keep_deferred=True)
        tell, length = getattr(last, "value_tell", None), getattr(last, "length", None)
        if tell is not None and length not in (None, 0xFFFFFFFF) and tell + length == size:
            return
    syntax = _transfer_syntax(ds)
    if not syntax:
        return  # a bare data set without file meta: pydicom guessed its encoding, and so would this walk
    uid = UID(syntax)
    with open(path, "rb") as fh:
        try:
            read_preamble(fh, force=True)
            _read_file_meta_info(fh)
            walk_to_end(fh, uid.is_implicit_VR, uid.is_little_endian, size)
        except EOFError:
            raise MedsightError("truncated DICOM file: the last element is cut short", path) from None


def check_part10_complete(data: bytes) -> None:
    """Raise EOFError when a Part 10 file held in memory (a STOW-RS part) was cut short anywhere a reader can see:
    pydicom keeps a value cut short, or stops at a header cut short, without a word."""
    fp = io.BytesIO(data)
    read_preamble(fp, force=True)
    syntax = str(_read_file_meta_info(fp).get("TransferSyntaxUID", ""))
    if not syntax:
        return  # no file meta to say how the data set is encoded: pydicom guessed, and so would this walk
    uid = UID(syntax)
    if uid.is_deflated:  # a cut deflate stream fails to inflate (zlib.error)
        fp = io.BytesIO(zlib.decompress(data[fp.tell() :], -zlib.MAX_WBITS))
    walk_to_end(fp, uid.is_implicit_VR, uid.is_little_endian, len(fp.getbuffer()))


def walk_to_end(fp: BinaryIO, implicit_vr: bool, little_endian: bool, size: int) -> None:
    """Walk a data set's top-level elements from ``fp``'s position (values over 256 bytes skipped) and raise
    EOFError unless the last one ends exactly at ``size``. A value or an undefined-length item cut short raises
    EOFError from pydicom itself; a header cut short is what pydicom passes over silently."""
    end = fp.tell()
    for element in data_element_generator(fp, implicit_vr, little_endian, defer_size=256):
        if (
            isinstance(element, RawDataElement)
            and isinstance(element.value, bytes)
            and element.length != 0xFFFFFFFF
            and len(element.value) < element.length
        ):
            raise EOFError("data set truncated")
        end = fp.tell()
    if end != size:
        raise EOFError("data set truncated")


def _instance(ds: Dataset, path: Path) -> Instance:
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    rows = int(ds.Rows) if "Rows" in ds else None
    columns = int(ds.Columns) if "Columns" in ds else None
    number = _number(ds.get("InstanceNumber"))
    hint = _number(ds.get("SpacingBetweenSlices")) or _number(ds.get("SliceThickness"))
    return Instance(
        path=path,
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        instance_number=int(number) if number is not None else None,
        rows=rows,
        columns=columns,
        samples_per_pixel=int(ds.get("SamplesPerPixel", 1) or 1),
        photometric=str(ds.get("PhotometricInterpretation", "") or ""),
        transfer_syntax_uid=ts,
        frames=_frames(ds, path) if rows and columns else (),
        slice_spacing_hint=hint,
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID").strip(),
    )


def _number(value: Any) -> float | None:
    """A header number that only orders or hints (Instance Number, Slice Thickness): ``None`` when it is missing or
    not a finite number, so that a malformed one does not make its whole file unreadable."""
    try:
        number = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return number if number is not None and np.isfinite(number) else None


def _frames(ds: Dataset, path: Path) -> tuple[Frame, ...]:
    """Per-frame geometry: from functional groups (enhanced objects) or the classic attributes."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    per_seq = ds.get("PerFrameFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    if shared is None and not per_seq:
        if n == 1:
            return (
                Frame(
                    path=path,
                    index=0,
                    position=_triple(ds.get("ImagePositionPatient")),
                    orientation=_floats(ds.get("ImageOrientationPatient"), 6),
                    pixel_spacing=_pair(ds.get("PixelSpacing")),
                    window=_window(ds),
                ),
            )
        # A multi-frame object without functional groups (cine, ultrasound, ...): no per-frame geometry.
        return tuple(
            Frame(path=path, index=i, position=None, orientation=None, pixel_spacing=None, window=_window(ds))
            for i in range(n)
        )
    frames = []
    for i in range(n):
        item = per_seq[i] if per_seq and i < len(per_seq) else None

        def group(name: str, _item: Dataset | None = item) -> Dataset | None:
            for source in (_item, shared):
                if source is not None and source.get(name):
                    return source.get(name)[0]
            return None

        pos = group("PlanePositionSequence")
        ori = group("PlaneOrientationSequence")
        meas = group("PixelMeasuresSequence")
        pvt = group("PixelValueTransformationSequence")
        voi = group("FrameVOILUTSequence")
        rescale = None
        if pvt is not None and "RescaleSlope" in pvt and "RescaleIntercept" in pvt:
            rescale = (float(pvt.RescaleSlope), float(pvt.RescaleIntercept))
        frames.append(
            Frame(
                path=path,
                index=i,
                position=_triple(pos.get("ImagePositionPatient")) if pos is not None else None,
                orientation=_floats(ori.get("ImageOrientationPatient"), 6) if ori is not None else None,
                pixel_spacing=_pair(meas.get("PixelSpacing")) if meas is not None else None,
                rescale=rescale,
                window=_window(voi) if voi is not None else _window(ds),
            )
        )
    return tuple(frames)


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    # NaN or infinity is no position: kept, it sorted anywhere and the error named the wrong problem
    return values if len(values) == count and all(np.isfinite(values)) else None


def _triple(value: Any) -> tuple[float, float, float] | None:
    v = _floats(value, 3)
    return (v[0], v[1], v[2]) if v else None


def _pair(value: Any) -> tuple[float, float] | None:
    v = _floats(value, 2)
    return (v[0], v[1]) if v else None


def _window(ds: Dataset) -> tuple[float, float] | None:
    """First (centre, width) of a VOI window, if the dataset has one."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center in (None, "") or width in (None, ""):
        return None
    c = center[0] if isinstance(center, Sequence) and not isinstance(center, str) else center
    w = width[0] if isinstance(width, Sequence) and not isinstance(width, str) else width
    return float(c), float(w)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value)


def _group(found: Iterable[tuple[Instance, Dataset]]) -> list[Study]:
    studies: dict[str, Study] = {}
    series: dict[tuple[str, str], Series] = {}
    seen: dict[tuple[str, str], dict[str, Instance]] = {}
    for instance, ds in found:
        study_uid = _text(ds, "StudyInstanceUID")
        series_uid = _text(ds, "SeriesInstanceUID")
        study = studies.get(study_uid)
        if study is None:
            study = studies[study_uid] = Study(
                study_instance_uid=study_uid,
                description=_text(ds, "StudyDescription"),
                study_date=_text(ds, "StudyDate"),
                accession_number=_text(ds, "AccessionNumber"),
                patient_name=_text(ds, "PatientName"),
                patient_id=_text(ds, "PatientID"),
                patient_birth_date=_text(ds, "PatientBirthDate"),
            )
        key = (study_uid, series_uid)
        s = series.get(key)
        if s is None:
            number = ds.get("SeriesNumber")
            s = series[key] = Series(
                series_instance_uid=series_uid,
                series_number=int(number) if number not in (None, "") else None,
                modality=_text(ds, "Modality"),
                description=_text(ds, "SeriesDescription"),
                frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"),
            )
            study.series.append(s)
        kept = seen.setdefault(key, {}).get(instance.sop_instance_uid)
        if kept is not None:
            (s.duplicates if _same_image(kept, instance) else s.clashes).append(instance.path)
            continue
        seen[key][instance.sop_instance_uid] = instance
        s.instances.append(instance)
    for study in studies.values():
        study.series.sort(key=lambda s: (s.series_number is None, s.series_number or 0, s.description))
        for s in study.series:
            s.instances.sort(key=lambda i: (i.instance_number is None, i.instance_number or 0, str(i.path)))
    return list(studies.values())


def _same_image(a: Instance, b: Instance) -> bool:
    """Whether two files of one SOP Instance UID describe the same image (a copy, perhaps in another transfer
    syntax): same size and frames at the same places."""

    def shape(i: Instance) -> tuple[Any, ...]:
        return i.rows, i.columns, i.samples_per_pixel, len(i.frames)

    if shape(a) != shape(b):
        return False
    for fa, fb in zip(a.frames, b.frames, strict=True):
        for va, vb in ((fa.position, fb.position), (fa.orientation, fb.orientation)):
            if (va is None) != (vb is None) or (va is not None and vb is not None and not _close(va, vb)):
                return False
    return True


def _progress(items: Sequence[Path], desc: str) -> Iterable[Path]:
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="file", file=sys.stderr, disable=None if len(items) > 200 else True)


# --------------------------------------------------------------------------------------------------------
# Layout: the order and geometry of a series' frames
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Frames in volume order, their geometry (or ``None``), and notes about anything unusual."""

    frames: tuple[Frame, ...]
    geometry: Geometry | None
    notes: tuple[str, ...] = ()


def series_layout(series: Series, *, allow_irregular: bool = False) -> Layout:
    """Sort a series' frames along the slice normal and measure its geometry, from headers alone.

    Raises ``MedsightError`` when the frames do not form one volume: different sizes, colour and greyscale, or
    orientations (a localizer mixed in), two frames of reference, several frames at one position (echoes, phases),
    a slice off the line of the others, uneven gaps between slices (missing slices) unless ``allow_irregular``
    (then the mean gap is used and a note says so). Geometry that some frames have and others lack, or a pixel
    spacing that is not positive, is refused too, naming the file: either would place voxels where they are not.
    """
    where = _series_where(series)
    if not series.is_image:
        kinds = ", ".join(series.sop_class_names)
        raise MedsightError(f"series is not an image stack ({kinds})", where)
    if series.clashes:
        raise MedsightError(
            "holds the SOP Instance UID of another file of its series but another image (UIDs reused, e.g. by a "
            "de-identification): no result could say which of the two it means",
            series.clashes[0],
        )
    sizes = {(i.rows, i.columns, i.samples_per_pixel) for i in series.instances}
    if len(sizes) > 1:
        raise MedsightError(f"series mixes {len(sizes)} image sizes; it is not one volume", where)
    if len({_is_colour(i) for i in series.instances}) > 1:  # a palette image among greyscale ones
        raise MedsightError("series mixes colour and greyscale images; it is not one volume", where)
    frames = series.frames
    rows, columns = series.instances[0].rows or 0, series.instances[0].columns or 0
    placed = [bool(f.position and f.orientation and f.pixel_spacing) for f in frames]
    multi = {i.path for i in series.instances if len(i.frames) > 1}
    # Without any position (or one image) the series has no geometry; with some, each frame needs all of it.
    if not all(placed) and (len(frames) == 1 or not any(f.position for f in frames)):
        ordered = sorted(
            frames,
            key=lambda f: (_instance_number(series, f.path), str(f.path), f.index),
        )
        return Layout(frames=tuple(ordered), geometry=None, notes=("no patient geometry in the headers",))
    if not all(placed):
        odd = frames[placed.index(False)]
        raise MedsightError(f"{_lacks(odd, multi)}, in a series with positions: it cannot be placed", odd.path)
    for f in frames:
        assert f.pixel_spacing is not None
        if min(f.pixel_spacing) <= 0:
            row, column = f.pixel_spacing
            raise MedsightError(f"{_frame_name(f, multi)}Pixel Spacing {row:g}\\{column:g} is not positive", f.path)
    references = {i.frame_of_reference_uid for i in series.instances if i.frame_of_reference_uid}
    if len(references) > 1:
        raise MedsightError(
            f"series mixes {len(references)} frames of reference (the patient moved, or series were joined); its "
            "positions do not compare, it is not one volume",
            where,
        )
    first = frames[0]
    assert first.orientation is not None and first.pixel_spacing is not None
    orientations = _distinct([f.orientation for f in frames if f.orientation], geo.same_orientation)
    if len(orientations) > 1:
        raise MedsightError(
            f"series mixes {len(orientations)} slice orientations (a localizer?); it is not one volume", where
        )
    spacings = _distinct([f.pixel_spacing for f in frames if f.pixel_spacing], _close)
    if len(spacings) > 1:
        raise MedsightError(f"series mixes {len(spacings)} pixel spacings; it is not one volume", where)
    try:
        order, distances = geo.sort_along_normal([f.position for f in frames], first.orientation)  # type: ignore[misc]
        spacing = geo.stack_spacing(distances)
        sorted_frames = tuple(frames[i] for i in order)
        positions = [f.position for f in sorted_frames]
        off = geo.off_line(positions, first.pixel_spacing)  # type: ignore[arg-type]
        if off is not None:
            odd, distance = sorted_frames[off[0]], off[1]
            raise MedsightError(
                f"{_frame_name(odd, multi)}lies {distance:.3g} mm off the line of the other slices' positions (shifted "
                "in its plane: another field of view, or stacks joined); the series is not one volume",
                odd.path,
            )
        geometry = geo.stack_geometry(
            positions,  # type: ignore[arg-type]
            first.orientation,
            first.pixel_spacing,
            rows,
            columns,
            fallback_slice_spacing=series.instances[0].slice_spacing_hint,
        )
    except ValueError as exc:
        raise MedsightError(str(exc), where) from exc
    notes: list[str] = []
    if not spacing.regular:
        detail = f"uneven gaps between slices ({min(spacing.gaps):.4g} to {max(spacing.gaps):.4g} mm)"
        if not allow_irregular:
            raise MedsightError(f"{detail}: missing slices? (allow_irregular=True uses the mean gap)", where)
        notes.append(f"{detail}; mean gap {spacing.spacing:.4g} mm used")
    z_dir = geometry.direction_matrix[:, 2]
    if abs(float(z_dir @ geo.slice_normal(first.orientation)) - 1.0) > 1e-6:
        notes.append("tilted stack (gantry tilt): the affine is sheared")
    return Layout(frames=sorted_frames, geometry=geometry, notes=tuple(notes))


def _is_colour(instance: Instance) -> bool:
    return instance.samples_per_pixel == 3 or instance.photometric == "PALETTE COLOR"


def _frame_name(frame: Frame, multi: set[Path]) -> str:
    """``frame 4 `` for a frame of a multi-frame object (1-based, as DICOM counts), nothing for a single image."""
    return f"frame {frame.index + 1} " if frame.path in multi else ""


def _lacks(frame: Frame, multi: set[Path]) -> str:
    """What a frame lacks of its patient geometry, in DICOM's names (missing, or not numbers)."""
    missing = [
        name
        for name, value in (
            ("Image Position (Patient)", frame.position),
            ("Image Orientation (Patient)", frame.orientation),
            ("Pixel Spacing", frame.pixel_spacing),
        )
        if not value
    ]
    return f"{_frame_name(frame, multi)}has no usable {' or '.join(missing)} (missing, or not finite numbers)"


def _instance_number(series: Series, path: Path) -> int:
    for inst in series.instances:
        if inst.path == path:
            return inst.instance_number or 0
    return 0


def _distinct(values: list[Any], same: Any) -> list[Any]:
    kept: list[Any] = []
    for v in values:
        if not any(same(v, k) for k in kept):
            kept.append(v)
    return kept


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    return bool(np.allclose(a, b, rtol=1e-4, atol=1e-5))


def _series_where(series: Series) -> str:
    """Where to point an error: the series' folder (never its UID, which is an identifier)."""
    if not series.instances:
        return "series"
    parents = {i.path.parent for i in series.instances}
    return str(parents.pop()) if len(parents) == 1 else str(series.instances[0].path)


# --------------------------------------------------------------------------------------------------------
# Pixels
# --------------------------------------------------------------------------------------------------------


def read_series(
    source: Series | PathLike | Sequence[PathLike],
    series_uid: str | None = None,
    *,
    allow_irregular: bool = False,
) -> Volume:
    """Assemble one series into a :class:`Volume` (float32 after the Modality LUT, with geometry).

    ``source`` is a scanned :class:`Series`, a folder/tree/file, or a list of files. When it holds several
    image series, pick one with ``series_uid``.
    """
    series = image_series(source, series_uid)
    layout = series_layout(series, allow_irregular=allow_irregular)
    for note in layout.notes:
        log.info("%s: %s", _series_where(series), note)
    first = series.instances[0]
    rows, columns = first.rows or 0, first.columns or 0
    colour = first.samples_per_pixel == 3 or first.photometric == "PALETTE COLOR"
    shape: tuple[int, ...] = (len(layout.frames), rows, columns) + ((3,) if colour else ())
    out = np.empty(shape, dtype=np.float32)
    slots: dict[Path, list[tuple[int, Frame]]] = {}
    for k, frame in enumerate(layout.frames):
        slots.setdefault(frame.path, []).append((k, frame))
    for path, wanted in slots.items():
        ds = _read_full(path)
        pixels = _decode(ds, path)
        if int(ds.get("NumberOfFrames", 1) or 1) == 1:
            pixels = pixels[np.newaxis]
        for k, frame in wanted:
            out[k] = displayed_values(pixels[frame.index], ds, frame)
    return Volume(
        array=out,
        geometry=layout.geometry,
        frames=layout.frames,
        modality=series.modality,
        series_instance_uid=series.series_instance_uid,
        frame_of_reference_uid=series.frame_of_reference_uid,
        window=layout.frames[0].window if layout.frames else None,
    )


#: The series a command was asked to read from a folder holding several (``medsight predict --series``): a Series
#: Number or a Series Instance UID. Set with :func:`choose_series`; every reader of a folder honours it, so the
#: modality check and the prediction judge the same series.
CHOSEN_SERIES: ContextVar[str | None] = ContextVar("medsight_chosen_series", default=None)
#: Series listed in the message that asks for a choice.
LISTED_SERIES = 8


@contextmanager
def choose_series(choice: str | None) -> Iterator[None]:
    """Within the block, folders are read as their series ``choice`` (a Series Number or Series Instance UID)."""
    token = CHOSEN_SERIES.set(str(choice).strip() if choice is not None else None)
    try:
        yield
    finally:
        CHOSEN_SERIES.reset(token)


def _series_matches(series: Series, choice: str) -> bool:
    if "." in choice:  # a UID; Series Numbers are integers
        return series.series_instance_uid == choice
    try:
        return series.series_number is not None and series.series_number == int(choice)
    except ValueError:
        return False


def _series_listing(candidates: Sequence[Series]) -> str:
    """The candidates as a user picks among them (no identifiers: number, modality, description, size)."""
    shown = [
        f"Series {s.series_number if s.series_number is not None else '?'} [{s.modality or '?'}] "
        f"{s.description or '(no description)'}: {len(s.frames)} image(s)"
        for s in candidates[:LISTED_SERIES]
    ]
    more = f"; and {len(candidates) - LISTED_SERIES} more" if len(candidates) > LISTED_SERIES else ""
    return "; ".join(shown) + more


def image_series(source: Series | PathLike | Sequence[PathLike], series_uid: str | None = None) -> Series:
    """The one image series :func:`read_series` reads from ``source``: DICOMDIR, SR, SEG and other objects without
    an image to stack are left out, so every check of "what will be read" (the modality check) judges the same files.
    ``series_uid`` (else :data:`CHOSEN_SERIES`) chooses among several: a Series Instance UID, or a Series Number.
    Raises :class:`MedsightError` when there is no such series, or several and nothing chooses one (the message
    lists them)."""
    if isinstance(source, Series):
        return source
    if isinstance(source, (str, Path)):
        found = scan(source)
        where: Path = Path(source)
    else:
        paths = [Path(p) for p in source]
        if not paths:
            raise MedsightError("no files given")
        instances = []
        for p in paths:
            header = read_header(p)
            if header is None:
                raise MedsightError("not a DICOM file", p)
            instances.append(header)
        found = ScanResult(root=paths[0].parent, studies=_group(instances), skipped=[])
        where = paths[0].parent
    candidates = [s for s in found.series if s.is_image]
    if not candidates:
        raise MedsightError("no DICOM image series found", where)
    choice = series_uid if series_uid is not None else CHOSEN_SERIES.get()
    if choice is not None and not (len(candidates) == 1 and _series_matches(candidates[0], choice)):
        picked = [s for s in candidates if _series_matches(s, choice)]
        asked = "the requested Series Instance UID" if "." in choice else f"Series Number {choice}"
        if not picked:
            raise MedsightError(f"no image series with {asked}; found: {_series_listing(candidates)}", where)
        if len(picked) > 1:
            raise MedsightError(
                f"{len(picked)} image series have {asked} (several studies in one folder?): choose by Series "
                "Instance UID (`medsight info --show-phi` lists them)",
                where,
            )
        candidates = picked
    if len(candidates) > 1:
        raise MedsightError(
            f"{len(candidates)} image series found ({_series_listing(candidates)}); choose one with --series "
            "NUMBER (or its Series Instance UID), or give the folder of one series",
            where,
        )
    return candidates[0]


def _read_full(path: Path) -> Dataset:
    try:
        with open(path, "rb") as fh:
            preamble = _has_preamble(fh.read(132))
        return pydicom.dcmread(path, force=not preamble)
    except Exception as exc:  # any parse failure of a file already accepted as DICOM means it is corrupt
        raise MedsightError(f"corrupt DICOM file ({type(exc).__name__}: {exc})", path) from exc


def _decode(ds: Dataset, path: Path) -> np.ndarray:
    """Decoded stored values (pydicom plugins; YCbCr made RGB): ``[frames,] rows, columns[, 3]``."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise MedsightError("no pixel data", path)
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom raises many types for broken or undecodable pixel data
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax = UID(ts).name if ts else "unknown transfer syntax"
        hint = " (install pylibjpeg with its libjpeg/openjpeg/rle plugins)" if "plugin" in str(exc) else ""
        raise MedsightError(f"cannot decode pixel data ({syntax}): {exc}{hint}", path) from exc


def _stored_range(ds: Dataset) -> tuple[int, int]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _modality(pixels: np.ndarray, ds: Dataset, frame: Frame | None) -> np.ndarray:
    """Modality LUT: functional-group rescale for multi-frame objects, else pydicom's (rescale or LUT)."""
    if frame is not None and frame.rescale is not None:
        slope, intercept = frame.rescale
        return np.asarray(pixels, dtype=np.float64) * slope + intercept
    if ("RescaleSlope" in ds) != ("RescaleIntercept" in ds) and "ModalityLUTSequence" not in ds:
        return _half_rescale(pixels, ds, frame)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:  # pydicom rescales with both; a non-number fails in numpy
        for keyword, name in (("RescaleSlope", "Rescale Slope"), ("RescaleIntercept", "Rescale Intercept")):
            if _number(ds.get(keyword)) is None:
                where = frame.path if frame is not None else Path(str(getattr(ds, "filename", None) or "dataset"))
                raise MedsightError(f"{name} is empty or not a number: its stored values cannot be rescaled", where)
    return np.asarray(apply_modality_lut(pixels, _word_sized_modality_lut(ds)), dtype=np.float64)


#: Files already said to carry half a rescale (a series says it once, not once per slice).
_HALF_RESCALE_SAID: set[str] = set()


def _half_rescale(pixels: np.ndarray, ds: Dataset, frame: Frame | None) -> np.ndarray:
    """A Rescale Slope without its Intercept, or the reverse (both are Type 1 together): pydicom then applies
    neither, and a slope of 2 halves every value. The one given is applied with the other's identity value (slope
    1, intercept 0), as SimpleITK/GDCM read it, and said once per file."""
    where = frame.path if frame is not None else Path(str(getattr(ds, "filename", None) or "dataset"))
    slope = _number(ds.get("RescaleSlope")) if "RescaleSlope" in ds else 1.0
    intercept = _number(ds.get("RescaleIntercept")) if "RescaleIntercept" in ds else 0.0
    if slope is None or intercept is None:
        name = "Rescale Slope" if slope is None else "Rescale Intercept"
        raise MedsightError(f"{name} is empty or not a number: its stored values cannot be rescaled", where)
    if str(where) not in _HALF_RESCALE_SAID:
        _HALF_RESCALE_SAID.add(str(where))
        given, missing = ("Slope", "Intercept") if "RescaleSlope" in ds else ("Intercept", "Slope")
        log.warning("%s: Rescale %s without Rescale %s (DICOM requires both); read with the %s as %s", where, given,
                    missing, missing.lower(), "0" if missing == "Intercept" else "1")  # fmt: skip
    return np.asarray(pixels, dtype=np.float64) * slope + intercept


def _word_sized_modality_lut(ds: Dataset) -> Dataset:
    """``ds``, or a view of it whose Modality LUT Descriptor says 8 or 16 bits per entry: pydicom 3.0.2 makes the
    table's dtype ``uint<bits>``, so 12-bit entries (stored in 16-bit words, as its own VOI LUT code knows) fail."""
    sequence = ds.get("ModalityLUTSequence")
    if not sequence:
        return ds
    descriptor = list(sequence[0].get("LUTDescriptor") or ())
    if len(descriptor) != 3 or not 8 < int(descriptor[2]) < 16:
        return ds  # pydicom reads it, or names the problem itself
    item = copy.deepcopy(sequence[0])  # the file's dataset is left as read
    item.LUTDescriptor = [descriptor[0], descriptor[1], 16]
    view = Dataset()
    view.ModalityLUTSequence = [item]
    if hasattr(ds, "file_meta"):  # pydicom takes the byte order of OW table data from here ...
        view.file_meta = ds.file_meta
    view.set_original_encoding(*ds.original_encoding)  # ... or from here
    return view


def displayed_values(pixels: np.ndarray, ds: Dataset, frame: Frame | None = None) -> np.ndarray:
    """One decoded frame as float32, as it is shown: colour as RGB (a palette through its table), greyscale after
    the Modality LUT with MONOCHROME1 inverted (the readers here, and ``medsight stream`` frame by frame)."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric == "PALETTE COLOR":
        rgb = np.asarray(apply_color_lut(pixels, ds), dtype=np.float32)
        return rgb / 257.0 if rgb.max(initial=0) > 255 else rgb
    if pixels.ndim == 3:  # RGB (pydicom has converted YBR_* already)
        return pixels.astype(np.float32)
    values = _modality(pixels, ds, frame)
    if photometric == "MONOCHROME1":
        lo, hi = _modality(np.asarray(_stored_range(ds)), ds, frame)
        values = (lo + hi) - values
    return values.astype(np.float32)


def read_dicom_image(
    path: PathLike,
    *,
    voi: bool | tuple[float, float] = False,
    frame: int | None = None,
) -> np.ndarray:
    """Read one 2-D image (e.g. a radiograph) as float32: ``rows x columns``, or ``rows x columns x 3``.

    Greyscale values are after the Modality LUT, with MONOCHROME1 inverted so that high is bright. With
    ``voi=True`` the header's VOI LUT or first window is applied (pydicom), or ``voi=(centre, width)``
    overrides it; the result is then scaled to [0, 1] (min-max when the header has no VOI). A multi-frame
    file needs ``frame`` (0-based).
    """
    path = Path(path)
    header = read_header(path)
    if header is None:
        raise MedsightError("not a DICOM file", path)
    instance, _ = header
    if not instance.is_image:
        raise MedsightError(f"no image in this DICOM object ({instance.sop_class_name})", path)
    ds = _read_full(path)
    pixels = _decode(ds, path)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if n > 1:
        if frame is None:
            raise MedsightError(f"multi-frame object ({n} frames): choose one with frame=", path)
        if not 0 <= frame < n:
            raise MedsightError(f"frame {frame} out of range (0..{n - 1})", path)
        pixels, meta = pixels[frame], instance.frames[frame]
    else:
        meta = instance.frames[0]
    values = displayed_values(pixels, ds, meta)
    if voi is False or values.ndim == 3:
        return values
    return _apply_voi(pixels, ds, meta, voi, path)


def _apply_voi(
    pixels: np.ndarray, ds: Dataset, frame: Frame, voi: bool | tuple[float, float], path: Path
) -> np.ndarray:
    """VOI LUT or window to [0, 1] (pydicom does the lookup; this only normalises its output range)."""
    modality = _modality(pixels, ds, frame)
    view = Dataset()
    for keyword in ("PhotometricInterpretation", "BitsStored", "PixelRepresentation", "ModalityLUTSequence"):
        if keyword in ds:
            setattr(view, keyword, ds.data_element(keyword).value)  # type: ignore[union-attr]
    if frame.rescale is not None:
        view.RescaleSlope, view.RescaleIntercept = frame.rescale
    else:
        for keyword in ("RescaleSlope", "RescaleIntercept"):
            if keyword in ds:
                setattr(view, keyword, ds.data_element(keyword).value)  # type: ignore[union-attr]
    # Float Pixel Data (a Parametric Map) has no Bits Stored or Pixel Representation. pydicom's windowing needs them
    # only to pick its output range, which _voi_range reads back from this view to scale to [0, 1]: any depth will do.
    if "BitsStored" not in view:
        view.BitsStored = 16
    if "PixelRepresentation" not in view:
        view.PixelRepresentation = 0
    if isinstance(voi, tuple):
        view.WindowCenter, view.WindowWidth = float(voi[0]), float(voi[1])
    elif "VOILUTSequence" in ds:
        view.VOILUTSequence = ds.VOILUTSequence
    elif frame.window is not None:
        view.WindowCenter, view.WindowWidth = frame.window
        if "VOILUTFunction" in ds:
            view.VOILUTFunction = ds.VOILUTFunction
    if "VOILUTSequence" not in view and "WindowCenter" not in view:
        lo, hi = float(modality.min()), float(modality.max())
    else:
        try:
            modality = np.asarray(apply_voi_lut(modality, view), dtype=np.float64)
        except ValueError as exc:
            raise MedsightError(f"invalid VOI window: {exc}", path) from exc
        lo, hi = _voi_range(view)
    scaled = (modality - lo) / (hi - lo) if hi > lo else np.zeros_like(modality)
    scaled = np.clip(scaled, 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        scaled = 1.0 - scaled
    return scaled.astype(np.float32)


def _voi_range(view: Dataset) -> tuple[float, float]:
    """The output range of pydicom's VOI step (PS3.3 C.11.2), to scale it to [0, 1]."""
    if "VOILUTSequence" in view:
        bits = int(view.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if view.get("ModalityLUTSequence"):
        bits = int(view.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    lo, hi = _stored_range(view)
    if "RescaleSlope" in view and "RescaleIntercept" in view:
        slope, intercept = float(view.RescaleSlope), float(view.RescaleIntercept)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))  # type: ignore[assignment]
    return float(lo), float(hi)


# --------------------------------------------------------------------------------------------------------
# MONAI
# --------------------------------------------------------------------------------------------------------


def to_metatensor(volume: Volume, space: str = "RAS") -> MetaTensor:
    """The volume as a channel-first ``MetaTensor`` ``(C, x, y, z)`` with its affine, ready for MONAI.

    Axes are ``(channel, column, row, slice)`` so that the affine maps array index to world directly, the
    layout MONAI's own readers produce. The affine is in RAS by default, as MONAI's ``LoadImage`` gives
    (NIfTI convention; ``Orientation(axcodes="RAS")`` and ``SaveImage`` then behave as for any NIfTI);
    ``space="LPS"`` keeps DICOM's space. ``meta["space"]`` records which, and ``meta["lps_affine"]`` always
    holds the LPS affine. Without geometry the affine is the identity.
    """
    import torch
    from monai.data import MetaTensor
    from monai.utils import MetaKeys, SpaceKeys

    key = space.upper()
    if key not in ("RAS", "LPS"):
        raise ValueError(f"space must be 'RAS' or 'LPS', not {space!r}")
    array = volume.array
    data = np.moveaxis(array, -1, 0) if array.ndim == 4 else array[np.newaxis]  # (C, slice, row, col)
    data = np.ascontiguousarray(np.transpose(data, (0, 3, 2, 1)))  # (C, col, row, slice)
    if volume.geometry is not None:
        lps = volume.geometry.affine_lps
        affine = lps if key == "LPS" else geo.lps_to_ras(lps)
    else:
        lps = affine = np.eye(4)
    meta = {
        MetaKeys.AFFINE: torch.as_tensor(affine, dtype=torch.float64),
        MetaKeys.ORIGINAL_AFFINE: torch.as_tensor(affine, dtype=torch.float64),
        MetaKeys.SPATIAL_SHAPE: np.asarray(data.shape[1:]),
        MetaKeys.SPACE: SpaceKeys.RAS if key == "RAS" else SpaceKeys.LPS,
        MetaKeys.ORIGINAL_CHANNEL_DIM: "no_channel" if array.ndim == 3 else -1,
        "lps_affine": torch.as_tensor(lps, dtype=torch.float64),
        "modality": volume.modality,
        "filename_or_obj": str(volume.files[0]) if volume.frames else "",
    }
    return MetaTensor(torch.from_numpy(data), meta=meta)


def read_datasets(paths: Iterable[PathLike], *, pixels: bool = False) -> list[Dataset]:
    """pydicom datasets of ``paths`` in order (headers only unless ``pixels``), e.g. of ``volume.files``."""
    out: list[Dataset] = []
    for p in paths:
        path = Path(p)
        try:
            out.append(pydicom.dcmread(path, stop_before_pixels=not pixels, force=True))
        except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
            raise MedsightError(f"corrupt DICOM file ({type(exc).__name__}: {exc})", path) from exc
    return out
