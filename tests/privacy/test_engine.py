"""Every row of Table E.1-1, in a test object with recognisable values, complies with its action.

The object holds each attribute at the top level, again nested in a sequence item, the repeating groups
(50xx curves, 60xx overlays) and private tags; it is de-identified under the Basic Profile and under each
option, and every element is checked against the code the table gives it.
"""

from __future__ import annotations

import re
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from medsight.privacy.engine import Deidentifier
from medsight.privacy.profile import (
    COMPOUND_CODES,
    OPTIONS,
    Profile,
    Rule,
    attribute_type,
    keyword,
    resolve_compound,
)
from medsight.privacy.pseudonyms import Pseudonymizer

KEY = bytes(range(32))
NAME, DATE, DATETIME, TIME = "Doe^Johnathan", "19710203", "19710203040506", "040506"
TEXT = "Doe 19710203"
NESTING = "ReferencedSeriesSequence"  # not in the table: its items are walked with the table
SAFE_PRIVATE, UNSAFE_PRIVATE = 0x0019100C, 0x00091001


def recognisable(rule: Rule) -> Any:
    """A value that a scan can find again, valid for the VR."""
    vr, n = rule.vr, int(rule.id, 16)
    if vr == "PN":
        return NAME
    if vr == "DA":
        return DATE
    if vr == "DT":
        return DATETIME
    if vr == "TM":
        return TIME
    if vr == "AS":
        return "041Y"
    if vr == "UI":
        return f"1.2.826.0.1.3680043.9.7777.{n}"
    if vr in ("DS", "IS"):
        return "7"
    if vr in ("US", "SS", "UL", "SL", "FL", "FD"):
        return 7
    if vr in ("OB", "OW", "UN"):
        return b"PHI!"
    if vr == "UR":
        return f"http://doe.example/{n}"
    if vr in ("CS", "AE"):
        return f"DOE{n:08X}"[:16]
    if vr == "SH":
        return TEXT
    return f"{TEXT} {rule.id}"


def leaf_item() -> Dataset:
    """What a sequence of the table holds: free text, a nested UID reference and a patient ID."""
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.9.7777.1"
    item.TextValue = TEXT
    item.OtherPatientIDs = "DOE-NESTED-ID"
    return item


def fill(ds: Dataset, rows: list[Rule], with_sequences: bool = True) -> None:
    for rule in rows:
        if rule.vr == "SQ":
            if with_sequences:
                ds.add_new(int(rule.id, 16), "SQ", Sequence([leaf_item()]))
        else:
            ds.add_new(int(rule.id, 16), rule.vr, recognisable(rule))


def make_object() -> Dataset:
    """An MR object holding every attribute of the table, nested, repeating and private."""
    profile = Profile.load()
    rows = list(profile.by_tag.values())
    ds = Dataset()
    fill(ds, rows)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.9.7777.99"
    ds.PatientName = NAME
    ds.PatientID = "DOE-12345"
    nested = Dataset()
    fill(nested, rows, with_sequences=False)
    ds.add_new(0x00081115, "SQ", Sequence([nested]))
    # repeating groups: two overlays and a curve
    for group in (0x6000, 0x6002):
        ds.add_new((group << 16) | 0x0010, "US", 4)
        ds.add_new((group << 16) | 0x0011, "US", 4)
        ds.add_new((group << 16) | 0x0040, "CS", "G")
        ds.add_new((group << 16) | 0x0050, "SS", [1, 1])
        ds.add_new((group << 16) | 0x0100, "US", 1)
        ds.add_new((group << 16) | 0x0102, "US", 0)
        ds.add_new((group << 16) | 0x3000, "OW", b"\xff\x00")
        ds.add_new((group << 16) | 0x4000, "LT", f"{TEXT} overlay")
    ds.add_new(0x50000005, "US", 1)
    ds.add_new(0x50003000, "OB", b"PHI!")
    # private: one unsafe, one on the safe list
    ds.add_new(0x00090010, "LO", "ACME DOE")
    ds.add_new(UNSAFE_PRIVATE, "LO", "Doe private")
    ds.add_new(0x00190010, "LO", "SIEMENS MR HEADER")
    ds.add_new(SAFE_PRIVATE, "IS", "1000")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def expected_code(deid: Deidentifier, rule: Rule, path: tuple[str, ...]) -> str:
    code = rule.action(deid.options)
    if code in COMPOUND_CODES:
        code = resolve_compound(code, attribute_type("mr-image", ">".join((*path, keyword(int(rule.id, 16))))))
    return code


def check(deid: Deidentifier, original: Dataset, out: Dataset, rule: Rule, path: tuple[str, ...]) -> None:
    """Assert the element for ``rule`` complies with its code."""
    tag = int(rule.id, 16)
    code = expected_code(deid, rule, path)
    where = f"{rule.tag} {rule.name} at {'>'.join(path) or 'top'} ({code})"
    if tag not in original:
        return
    before = original[tag].value
    if code == "X":
        assert tag not in out, where
        return
    assert tag in out, where
    after = out[tag].value
    vr = original[tag].VR
    if code == "K" and vr == "SQ":
        # the sequence is kept; its contents still follow their own rows
        assert len(after) == 1 and after[0].TextValue == TEXT and "OtherPatientIDs" not in after[0], where
        uid = after[0].ReferencedSOPInstanceUID
        assert (uid == "1.2.826.0.1.3680043.9.7777.1") == ("retain_uids" in deid.options), where
    elif code == "K":
        assert after == before, where
    elif code == "Z":
        assert after in ("", None, b"") or len(after) == 0 or "Doe" not in str(after), where
        if vr == "SQ":
            assert len(after) == 0, where
    elif code == "D":
        if vr == "SQ":
            assert len(after) == 1 and after[0].TextValue != TEXT, where
            assert "OtherPatientIDs" not in after[0], where
        else:
            assert after not in ("", None, b"") and after != before, where
            assert "Doe" not in str(after) and "DOE" not in str(after), where
    elif code == "U":
        assert str(after).startswith("2.25.") and after != before, where
    elif code == "U*":
        item = after[0]
        assert item.ReferencedSOPInstanceUID == Pseudonymizer(KEY).uid("1.2.826.0.1.3680043.9.7777.1"), where
        assert "OtherPatientIDs" not in item, where
    elif code == "C":
        if vr == "SQ":
            assert "Doe" not in after[0].TextValue and DATE not in after[0].TextValue, where
        elif vr in ("DA", "DT"):
            assert after != before and re.fullmatch(r"\d{8}(\d{6})?", str(after)), where
        elif vr == "TM":
            assert after == before or after == "000000", where  # whole-day shifts keep the time
        elif vr == "AE":
            assert after != before and len(after) <= 16, where
        else:
            assert "Doe" not in str(after) and DATE not in str(after), where
    else:  # pragma: no cover
        raise AssertionError(f"unexpected code {code}")


OPTION_SETS = [(), *[(name,) for name in OPTIONS],
               ("retain_modified_dates", "retain_patient_characteristics", "clean_descriptors",
                "clean_structured_content", "clean_graphics", "retain_safe_private")]


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: "+".join(o) or "basic")
def test_every_row_complies(options: tuple[str, ...]) -> None:
    profile = Profile.load()
    original = make_object()
    out = make_object()
    deid = Deidentifier(KEY, options)
    outcome = deid.apply(out)
    nested_original, nested_out = original[0x00081115][0], out[0x00081115][0]
    for rule in profile.by_tag.values():
        if int(rule.id, 16) in (0x00081115,):
            continue
        check(deid, original, out, rule, ())
        if rule.vr != "SQ":
            check(deid, nested_original, nested_out, rule, (NESTING,))
    # the 4 special rows: overlays, curves, private
    if "clean_graphics" in options:
        assert out[0x60003000].value == b"\xff\x00" and 0x50003000 in out
        assert "Doe" not in out[0x60024000].value
        assert any("Clean Graphics" in r for r in outcome.review)
    else:
        assert not [t for t in out.keys() if 0x6000 <= t.group <= 0x601E or 0x5000 <= t.group <= 0x501E]  # noqa: SIM118
    assert UNSAFE_PRIVATE not in out and 0x00090010 not in out
    if "retain_safe_private" in options:
        assert out[SAFE_PRIVATE].value == 1000 and out[0x00190010].value == "SIEMENS MR HEADER"
    else:
        assert not [t for t in out.keys() if t.group & 1]  # noqa: SIM118
    # every one of the 621 rows was met
    met = {row for row, _ in outcome.actions}
    assert len(met) == 621
    # the marks PS3.15 asks for
    assert out.PatientIdentityRemoved == "YES"
    codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert codes[0] == "113100"
    assert sorted(codes[1:]) == sorted(OPTIONS[o].code for o in options)
    assert out.PatientName != NAME and out.PatientID != "DOE-12345"


def test_patient_characteristics_are_kept_for_subgroup_audits() -> None:
    ds = make_object()
    ds.PatientSex, ds.PatientAge, ds.PatientWeight, ds.PatientSize = "F", "041Y", "70", "1.7"
    Deidentifier(KEY, ["retain_patient_characteristics"]).apply(ds)
    assert (ds.PatientSex, ds.PatientAge, ds.PatientWeight, ds.PatientSize) == ("F", "041Y", 70, 1.7)


def test_uid_mapping_is_keyed_and_consistent_across_objects() -> None:
    a, b = make_object(), make_object()
    Deidentifier(KEY).apply(a)
    Deidentifier(KEY).apply(b)
    assert a.SOPInstanceUID == b.SOPInstanceUID
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
    c = make_object()
    Deidentifier(bytes(32)).apply(c)
    assert c.SOPInstanceUID != a.SOPInstanceUID
    assert len(a.SOPInstanceUID) <= 64 and pydicom.uid.UID(a.SOPInstanceUID).is_valid


def test_date_shift_is_one_per_patient() -> None:
    deid = Deidentifier(KEY, ["retain_modified_dates"])
    first, second = make_object(), make_object()
    first.StudyDate, second.StudyDate = "20200101", "20200111"
    deid.apply(first)
    deid.apply(second)
    import datetime as dt

    d1 = dt.datetime.strptime(first.StudyDate, "%Y%m%d")
    d2 = dt.datetime.strptime(second.StudyDate, "%Y%m%d")
    assert (d2 - d1).days == 10 and first.StudyDate != "20200101"
    assert first.LongitudinalTemporalInformationModified == "MODIFIED"


def test_seg_still_points_at_its_source_images(shared_data: Any) -> None:
    path = shared_data / "dicom_samples" / "pydicom_test_files" / "liver_1frame.dcm"
    ds = pydicom.dcmread(path)
    refs = [i.ReferencedSOPInstanceUID for s in ds.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence]
    Deidentifier(KEY).apply(ds)
    pseudo = Pseudonymizer(KEY)
    new_refs = [i.ReferencedSOPInstanceUID for s in ds.ReferencedSeriesSequence
                for i in s.ReferencedInstanceSequence]
    assert new_refs == [pseudo.uid(u) for u in refs]
    frame_refs = [s.ReferencedSOPInstanceUID for f in ds.PerFrameFunctionalGroupsSequence
                  for d in f.DerivationImageSequence for s in d.SourceImageSequence]
    assert frame_refs and set(frame_refs) <= set(new_refs)
