"""Writing a de-identified dataset: pydicom's bytes, without pydicom's per-element cost where it can be avoided.

De-identification leaves most elements as they were read (raw), changes a few, and reads a few more (which
pydicom then holds decoded). pydicom's writer sends every element through a per-element buffer; here raw
elements are copied, simple decoded values (numbers, ASCII strings) and sequences are encoded directly, and
anything else goes to pydicom. The output is byte for byte what ``save_as(enforce_file_format=True)`` writes:
``tests/privacy/test_writer.py`` compares them on every shared sample.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from pydicom import config
from pydicom.charset import default_encoding
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO, DicomFile, DicomIO
from pydicom.filewriter import write_data_element, write_dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, tag_in_exception
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from medsight.io.dicom import peek


def ensure_file_meta(ds: Dataset) -> None:
    """Give ``ds`` the file meta a written file needs, consistent with its SOP Class and Instance UIDs."""
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit = ds.original_encoding[0] if ds.original_encoding[0] is not None else True
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    for meta_tag, tag in ((0x00020002, 0x00080016), (0x00020003, 0x00080018)):  # SOP Class, SOP Instance
        value = peek(ds, tag)
        current: Any = meta._dict.get(BaseTag(meta_tag))
        if current is None or current.is_raw or current.value != value:
            elem = DataElement(meta_tag, "UI", value, validation_mode=config.IGNORE)
            meta._dict[BaseTag(elem.tag)] = elem


def save(ds: Dataset, path: Path) -> None:
    """What ``ds.save_as(path, enforce_file_format=True)`` writes, without its deep copy of the file meta.

    pydicom copies the meta to leave the caller's untouched; here the dataset is ours and is dropped after
    writing, and the copy cost about a tenth of the writing time. Anything unusual (no or an unknown
    transfer syntax, deflate, a preamble of the wrong size, group 0 or 2 in the dataset) goes to pydicom.
    """
    meta = ds.file_meta
    ts = meta.get("TransferSyntaxUID")
    preamble = getattr(ds, "preamble", None) or b"\x00" * 128
    if (
        ts is None
        or not ts.is_transfer_syntax
        or ts.is_private
        or ts == DeflatedExplicitVRLittleEndian
        or len(preamble) != 128
        or any(t >> 16 in (0, 2) for t in ds._dict)
    ):
        ds.save_as(path, enforce_file_format=True)
        return
    pixels: Any = ds._dict.get(BaseTag(0x7FE00010))
    # the pixel data's length encoding follows the transfer syntax; a raw element already in the right one
    # stays raw (decoding it would copy the whole value and send it through pydicom's writer)
    if pixels is not None and not (pixels.is_raw and (pixels.length == 0xFFFFFFFF) == ts.is_compressed):
        ds["PixelData"].is_undefined_length = ts.is_compressed
    fp = DicomFile(str(path), "wb")
    try:
        fp.write(preamble)
        fp.write(b"DICM")
        write_file_meta(fp, meta)
        fp.is_implicit_VR, fp.is_little_endian = ts.is_implicit_VR, ts.is_little_endian
        _write_dataset(fp, ds)
    finally:
        fp.close()


_HEAD_IMPLICIT = {True: struct.Struct("<HHL"), False: struct.Struct(">HHL")}
_HEAD_16 = {True: struct.Struct("<HH2sH"), False: struct.Struct(">HH2sH")}
_HEAD_32 = {True: struct.Struct("<HH2sHL"), False: struct.Struct(">HH2sHL")}


#: File meta elements that must be present with a value (PS3.10 7.1); with them and an Implementation Version
#: Name, pydicom's validation has nothing to add, so the writer below skips it.
_META_REQUIRED = tuple(BaseTag(t) for t in (0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012))
_IMPLEMENTATION_VERSION_NAME = BaseTag(0x00020013)
#: How each text VR of the file meta is padded to an even length (PS3.5 6.2).
_META_PAD = {"UI": b"\x00", "OB": b"\x00", "SH": b" ", "AE": b" ", "CS": b" ", "LO": b" "}


def _meta_bytes(meta: FileMetaDataset) -> bytes | None:
    """The encoded elements of ``meta`` after its group length (explicit VR little endian), or None where an
    element is not a plain single value of a VR handled here (then pydicom encodes it)."""
    out: list[bytes] = []
    for tag in sorted(meta._dict):
        if tag == 0x00020000:
            continue
        elem: Any = meta._dict[tag]
        vr, value = elem.VR, elem.value
        if tag >> 16 != 2:
            return None
        if elem.is_raw and not elem.is_implicit_VR and elem.is_little_endian and isinstance(value, bytes):
            data = value
        elif vr in _META_PAD and isinstance(value, (str, bytes)):
            data = value if isinstance(value, bytes) else value.encode("ascii")
            if len(data) % 2:
                data += _META_PAD[vr]
        elif vr == "UL" and isinstance(value, int):
            data = struct.pack("<L", value)
        else:
            return None
        group, element = tag >> 16, tag & 0xFFFF
        if vr in EXPLICIT_VR_LENGTH_32:
            out.append(_HEAD_32[True].pack(group, element, vr.encode(), 0, len(data)))
        elif len(data) <= 0xFFFF:
            out.append(_HEAD_16[True].pack(group, element, vr.encode(), len(data)))
        else:
            return None
        out.append(data)
    return b"".join(out)


def write_file_meta(fp: DicomIO | Any, meta: FileMetaDataset) -> None:
    """pydicom's ``write_file_meta_info(fp, meta, enforce_standard=True)``: the elements (explicit VR
    little endian) after a File Meta Information Group Length that counts them, written once.

    The engine sets the implementation and instance elements, so the meta is usually complete: then it is
    encoded here directly (pydicom's validation and per-element writer cost a tenth of a file's time); the
    bytes are pydicom's (a test compares them on every shared sample).
    """
    data = None
    if _IMPLEMENTATION_VERSION_NAME in meta._dict and all(
        t in meta._dict and meta._dict[t].value not in (None, b"", "") for t in _META_REQUIRED
    ):
        data = _meta_bytes(meta)
    if data is None:
        validate_file_meta(meta, enforce_standard=True)
        body = DicomBytesIO()
        body.is_little_endian, body.is_implicit_VR = True, False
        _write_dataset(body, meta, skip=0x00020000)
        data = body.getvalue()
    fp.write(_HEAD_16[True].pack(0x0002, 0x0000, b"UL", 4) + struct.pack("<L", len(data)))
    fp.write(data)


def _write_dataset(fp: DicomIO, ds: Dataset, skip: int | None = None, parent_encoding: Any = None) -> None:
    """pydicom's ``write_dataset`` with short paths for raw elements, simple values and sequences.

    An element still raw (as read, in the encoding it is written in, with a defined length) is written as its
    tag, VR and length followed by its value bytes; a number or an ASCII string is encoded here; a sequence's
    items are written by this function in turn. Everything else (undefined lengths, other values, a change
    of encoding or character set) goes through pydicom.
    """
    implicit, little = fp.is_implicit_VR, fp.is_little_endian
    if skip is None and not _made_here(ds) and (
        (implicit, little) != ds.original_encoding or ds.original_character_set != ds._character_set
    ):
        write_dataset(fp, ds, parent_encoding=parent_encoding or default_encoding)
        return
    encoding = peek(ds, 0x00080005, parent_encoding or default_encoding)  # Specific Character Set
    ascii_text = isinstance(encoding, str) and encoding.strip() in _ASCII_CHARSETS
    head_implicit, head16, head32 = _HEAD_IMPLICIT[little], _HEAD_16[little], _HEAD_32[little]
    write = fp.write
    elements = ds._dict
    # (a set difference: comparing BaseTags one by one runs pydicom's Python-level __eq__ per element)
    for tag in sorted(elements.keys() - {BaseTag(skip)} if skip is not None else elements):
        group, element = tag >> 16, tag & 0xFFFF
        if element == 0 and group > 6:  # retired Group Length: not written (PS3.5 7.2), as pydicom does
            continue
        elem: Any = elements[tag]
        value = elem.value
        vr = elem.VR
        data: bytes | None = None
        if elem.is_raw:
            if (
                value is not None
                and not elem.is_buffered
                and elem.length != 0xFFFFFFFF
                and elem.is_implicit_VR == implicit
                and elem.is_little_endian == little
            ):
                data = value
        elif vr == "SQ" and value is not None and not implicit:
            _write_sequence(fp, tag, elem, encoding)
            continue
        elif value is not None:
            data = _simple_value(vr, value, little, ascii_text)
        if data is not None:
            n = len(data)
            if implicit:
                write(head_implicit.pack(group, element, n))
                write(data)
                continue
            if vr in EXPLICIT_VR_LENGTH_32:
                write(head32.pack(group, element, vr.encode(), 0, n))
                write(data)
                continue
            if vr and len(vr) == 2 and n <= 0xFFFF:
                write(head16.pack(group, element, vr.encode(), n))
                write(data)
                continue
        with tag_in_exception(tag):
            write_data_element(fp, ds.get_item(tag), encoding)


def _made_here(ds: Dataset) -> bool:
    """A dataset medsight built (a code item): no encoding of its own, nothing raw to re-encode, and no
    ambiguous VR for pydicom to settle, so the short paths write it as pydicom would."""
    return ds.original_encoding == (None, None) and all(
        not e.is_raw and e.VR is not None and len(e.VR) == 2 for e in ds._dict.values()
    )


_ITEM = {True: struct.pack("<HH", 0xFFFE, 0xE000), False: struct.pack(">HH", 0xFFFE, 0xE000)}
_ITEM_END = {True: struct.pack("<HHL", 0xFFFE, 0xE00D, 0), False: struct.pack(">HHL", 0xFFFE, 0xE00D, 0)}
_SEQUENCE_END = {True: struct.pack("<HHL", 0xFFFE, 0xE0DD, 0), False: struct.pack(">HHL", 0xFFFE, 0xE0DD, 0)}
_UL = {True: struct.Struct("<L"), False: struct.Struct(">L")}


def _write_sequence(fp: DicomIO, tag: int, elem: Any, encoding: Any) -> None:
    """A sequence (explicit VR) as pydicom's ``write_sequence`` lays it out: each item with its length or
    an item delimiter, the sequence with its length or a sequence delimiter."""
    little = fp.is_little_endian
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = little, fp.is_implicit_VR
    for item in elem.value:
        body.write(_ITEM[little])
        if getattr(item, "is_undefined_length_sequence_item", False):
            body.write(_UL[little].pack(0xFFFFFFFF))
            _write_dataset(body, item, parent_encoding=encoding)
            body.write(_ITEM_END[little])
        else:
            inner = DicomBytesIO()
            inner.is_little_endian, inner.is_implicit_VR = little, fp.is_implicit_VR
            _write_dataset(inner, item, parent_encoding=encoding)
            data = inner.getvalue()
            body.write(_UL[little].pack(len(data)))
            body.write(data)
    data = body.getvalue()
    undefined = bool(elem.is_undefined_length)
    fp.write(_HEAD_32[little].pack(tag >> 16, tag & 0xFFFF, b"SQ", 0, 0xFFFFFFFF if undefined else len(data)))
    fp.write(data)
    if undefined:
        fp.write(_SEQUENCE_END[little])


#: VRs whose values are plain ASCII strings in every character set (PS3.5 6.2), with their padding byte.
_ASCII_VRS = {"UI": b"\x00", "CS": b" ", "DA": b" ", "TM": b" ", "DT": b" ", "AS": b" ", "AE": b" "}
#: Text VRs whose values take the dataset's character set: ASCII values are the same bytes in these sets.
_TEXT_VRS = {"SH", "LO", "ST", "LT", "UC", "UT"}
_ASCII_CHARSETS = {"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 6", "ISO 2022 IR 100", "iso8859"}
#: Integer VRs and their struct codes.
_INT_VRS = {"US": "H", "SS": "h", "UL": "L", "SL": "l"}


def _simple_value(vr: str, value: Any, little: bool, ascii_text: bool) -> bytes | None:
    """The encoded value of a decoded element when it is a plain number or ASCII string; None otherwise.

    ``ascii_text``: the character set encodes ASCII as ASCII, so text VRs (LO, SH...) are handled too.
    """
    if vr in _INT_VRS:
        if type(value) is int:
            return struct.pack(("<" if little else ">") + _INT_VRS[vr], value)
        return None
    pad = _ASCII_VRS.get(vr) or (b" " if ascii_text and vr in _TEXT_VRS else None)
    if pad is None:
        return None
    if isinstance(value, str):
        text = value
    elif isinstance(value, MultiValue) and all(isinstance(v, str) for v in value):
        text = "\\".join(value)
    else:
        return None
    if not text.isascii():
        return None
    data = text.encode("ascii")
    return data + pad if len(data) % 2 else data
