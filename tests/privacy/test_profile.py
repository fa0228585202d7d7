"""The rules are the standard's table, shipped verbatim, and compound codes resolve by IOD type."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from medsight.privacy.profile import (
    COMPOUND_CODES,
    OPTIONS,
    Profile,
    attribute_type,
    iod_for_sop_class,
    load_rows,
    resolve_compound,
)

PACKAGE_COPY = Path(__file__).resolve().parents[2] / "src/medsight/privacy/confidentiality_profile_attributes.json"


def test_shipped_table_is_the_standards_621_rows(shared_data: Path) -> None:
    source = shared_data / "dicom_standard" / "confidentiality_profile_attributes.json"
    assert hashlib.md5(PACKAGE_COPY.read_bytes()).hexdigest() == hashlib.md5(source.read_bytes()).hexdigest()
    assert len(load_rows()) == 621
    assert len(Profile.load().rules) == 621


def test_repeating_groups_and_private_tags_match_their_rows() -> None:
    p = Profile.load()
    assert p.match(0x50000010) is p.curve and p.match(0x501E3000) is p.curve
    assert p.match(0x60003000) is p.overlay_data and p.match(0x601E3000) is p.overlay_data
    assert p.match(0x60024000) is p.overlay_comments
    assert p.match(0x60000010) is None  # overlay rows: removed together with its Overlay Data
    assert p.match(0x00091001) is p.private and p.match(0x00290010) is p.private
    assert p.match(0x00100010) is not None and p.match(0x00100010).name == "Patient's Name"  # type: ignore[union-attr]


def test_every_option_has_its_column_and_cid_7050_code() -> None:
    columns = {k for row in load_rows() for k in row if k.endswith("Opt")}
    assert {o.column for o in OPTIONS.values()} == columns
    assert sorted(o.code for o in OPTIONS.values()) == [str(c) for c in range(113103, 113113)]


@pytest.mark.parametrize(
    ("tag", "options", "expected"),
    [
        (0x00101010, (), "X"),  # Patient's Age
        (0x00101010, ("retain_patient_characteristics",), "K"),
        (0x00080020, ("retain_modified_dates",), "C"),  # Study Date
        (0x00080020, ("retain_full_dates",), "K"),
        (0x0018700C, ("retain_device_identity", "retain_modified_dates"), "C"),  # calibration date: shifted
        (0x0018700C, ("retain_device_identity",), "K"),
        (0x00080018, ("retain_uids",), "K"),
        (0x00080018, (), "U"),
        (0x0008103E, ("clean_descriptors",), "C"),
        (0x00080080, ("retain_institution_identity",), "K"),
    ],
)
def test_options_change_the_action(tag: int, options: tuple[str, ...], expected: str) -> None:
    assert Profile.load().by_tag[tag].action(options) == expected


@pytest.mark.parametrize(
    ("code", "kind", "expected"),
    [
        ("X/Z", "3", "X"), ("X/Z", "2", "Z"), ("X/Z", "2C", "Z"),
        ("X/D", "3", "X"), ("X/D", "1", "D"), ("X/D", "2", "D"),
        ("Z/D", "2", "Z"), ("Z/D", "1", "D"), ("Z/D", "1C", "D"),
        ("X/Z/D", "3", "X"), ("X/Z/D", "2", "Z"), ("X/Z/D", "1", "D"),
        ("X/Z/U*", "3", "X"), ("X/Z/U*", "2", "U*"), ("X/Z/U*", "1", "U*"),
    ],
)
def test_compound_codes_resolve_by_type(code: str, kind: str, expected: str) -> None:
    assert code in COMPOUND_CODES
    assert resolve_compound(code, kind) == expected


def test_types_come_from_the_objects_iod() -> None:
    assert iod_for_sop_class("1.2.840.10008.5.1.4.1.1.4") == "mr-image"
    assert iod_for_sop_class("1.2.840.10008.5.1.4.1.1.66.4") == "segmentation"
    assert attribute_type("mr-image", "ContentDate") == "2C"  # Z/D -> Z
    assert attribute_type("segmentation", "ContentDate") == "1"  # Z/D -> D
    assert attribute_type("segmentation", "DeviceSerialNumber") == "1"
    assert attribute_type("mr-image", "DeviceSerialNumber") == "3"
    assert attribute_type("ct-image", "AcquisitionDate") == "3"
    # unknown IOD: the strictest type that path has anywhere, so the object stays valid
    assert attribute_type(None, "ContentDate") == "1"
    assert attribute_type(None, "NoSuchAttribute") == "3"
