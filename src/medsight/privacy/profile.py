"""The PS3.15 Annex E profile as data: Table E.1-1 rows, the options, and compound-code resolution.

The rules live in JSON shipped with the package (a verbatim copy of the standard's table, from
innolitics/dicom-standard), so a privacy officer can review them apart from the engine that applies them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag

PROFILE_FILE = "confidentiality_profile_attributes.json"
IOD_TYPES_FILE = "iod_types.json"

COMPOUND_CODES = frozenset({"X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"})


@dataclass(frozen=True)
class Option:
    """One PS3.15 option: its column in the table and its CID 7050 code."""

    name: str
    column: str
    code: str
    meaning: str


#: The standard's options, in the order of CID 7050. ``clean_pixel_data`` has no column: pixels.py does it.
OPTIONS: dict[str, Option] = {
    o.name: o
    for o in (
        Option("clean_graphics", "cleanGraphOpt", "113103", "Clean Graphics Option"),
        Option("clean_structured_content", "cleanStructContOpt", "113104", "Clean Structured Content Option"),
        Option("clean_descriptors", "cleanDescOpt", "113105", "Clean Descriptors Option"),
        Option(
            "retain_full_dates",
            "rtnLongFullDatesOpt",
            "113106",
            "Retain Longitudinal Temporal Information Full Dates Option",
        ),
        Option(
            "retain_modified_dates",
            "rtnLongModifDatesOpt",
            "113107",
            "Retain Longitudinal Temporal Information Modified Dates Option",
        ),
        Option("retain_patient_characteristics", "rtnPatCharsOpt", "113108", "Retain Patient Characteristics Option"),
        Option("retain_device_identity", "rtnDevIdOpt", "113109", "Retain Device Identity Option"),
        Option("retain_uids", "rtnUIDsOpt", "113110", "Retain UIDs Option"),
        Option("retain_safe_private", "rtnSafePrivOpt", "113111", "Retain Safe Private Option"),
        Option("retain_institution_identity", "rtnInstIdOpt", "113112", "Retain Institution Identity Option"),
    )
}
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
CLEAN_PIXEL_CODE = ("113101", "Clean Pixel Data Option")

DATE_VRS = frozenset({"DA", "DT", "TM"})


@dataclass(frozen=True)
class Rule:
    """One row of Table E.1-1."""

    id: str
    tag: str
    name: str
    basic: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def vr(self) -> str:
        """Dictionary VR, or '' for the repeating-group and private rows."""
        if not self.id.isalnum() or "x" in self.id:
            return ""
        return str(dictionary_VR(int(self.id, 16)))

    def action(self, selected: Iterable[str]) -> str:
        """The code for this row under the selected options.

        The most retaining option wins (K over C over the basic code), except that a date or time is
        shifted (C) rather than kept whenever Modified Dates is selected, so that no true date survives.
        """
        codes = {name: self.options[OPTIONS[name].column] for name in selected if OPTIONS[name].column in self.options}
        if not codes:
            return self.basic
        if self.vr in DATE_VRS and codes.get("retain_modified_dates") == "C":
            return "C"
        if "K" in codes.values():
            return "K"
        return "C"


@lru_cache(maxsize=1)
def load_rows() -> list[dict[str, str]]:
    """The 621 rows as shipped (verbatim JSON)."""
    text = resources.files("medsight.privacy").joinpath(PROFILE_FILE).read_text(encoding="utf-8")
    rows: list[dict[str, str]] = json.loads(text)
    return rows


def _rule(row: dict[str, str]) -> Rule:
    opts = {k: v for k, v in row.items() if k.endswith("Opt")}
    return Rule(id=row["id"], tag=row["tag"], name=row["name"], basic=row["basicProfile"], options=opts)


@dataclass(frozen=True)
class Profile:
    """Table E.1-1 indexed for the engine: by tag, plus the repeating-group and private rows."""

    by_tag: dict[int, Rule]
    curve: Rule
    overlay_data: Rule
    overlay_comments: Rule
    private: Rule

    @classmethod
    @lru_cache(maxsize=1)
    def load(cls) -> Profile:
        """Load the shipped table once per process."""
        by_tag: dict[int, Rule] = {}
        special: dict[str, Rule] = {}
        for row in load_rows():
            rule = _rule(row)
            if all(c in "0123456789abcdef" for c in rule.id) and len(rule.id) == 8:
                by_tag[int(rule.id, 16)] = rule
            else:
                special[rule.id] = rule
        return cls(
            by_tag=by_tag,
            curve=special["50xxxxxx"],
            overlay_data=special["60xx3000"],
            overlay_comments=special["60xx4000"],
            private=special["ggggeeee-where-gggg-is-odd"],
        )

    @property
    def rules(self) -> list[Rule]:
        """Every row, special rows included (621)."""
        return [*self.by_tag.values(), self.curve, self.overlay_data, self.overlay_comments, self.private]

    def match(self, tag: int) -> Rule | None:
        """The row for ``tag``, including repeating groups (50xx curves, 60xx overlays) and private tags."""
        rule = self.by_tag.get(tag)
        if rule is not None:
            return rule
        group, elem = tag >> 16, tag & 0xFFFF
        if group & 1:
            return self.private
        if 0x5000 <= group <= 0x501E:
            return self.curve
        if 0x6000 <= group <= 0x601E:
            if elem == 0x3000:
                return self.overlay_data
            if elem == 0x4000:
                return self.overlay_comments
        return None


def in_repeating_overlay(tag: int) -> bool:
    """True for any element of an overlay plane group (60xx), which goes with its Overlay Data."""
    group = tag >> 16
    return 0x6000 <= group <= 0x601E and not group & 1


# --- compound codes -------------------------------------------------------------------------------

TYPE_RANK = {"1": 4, "1C": 3, "2": 2, "2C": 1, "3": 0}


@lru_cache(maxsize=1)
def iod_types() -> dict[str, Any]:
    """The shipped table of attribute types per IOD (see derive_iod_types.py)."""
    text = resources.files("medsight.privacy").joinpath(IOD_TYPES_FILE).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    merged: dict[str, str] = {}
    for table in data["iods"].values():
        for path, kind in table.items():
            if path not in merged or TYPE_RANK[kind] > TYPE_RANK[merged[path]]:
                merged[path] = kind
    data["any"] = merged
    return data


def iod_for_sop_class(sop_class_uid: str | None) -> str | None:
    """The IOD name for a SOP Class UID (None when unknown)."""
    if not sop_class_uid:
        return None
    iod: str | None = iod_types()["sop_class_iod"].get(str(sop_class_uid))
    return iod


def attribute_type(iod: str | None, path: str) -> str:
    """The attribute's type at ``path`` (keywords joined by '>') in ``iod``.

    Fallback when the IOD or the path is unknown: the strictest type that path has in any IOD (keeps the
    object valid), else '3'.
    """
    data = iod_types()
    if iod is not None:
        kind = data["iods"].get(iod, {}).get(path)
        if kind is not None:
            return str(kind)
    return str(data["any"].get(path, "3"))


def resolve_compound(code: str, kind: str) -> str:
    """Resolve X/Z, X/D, Z/D, X/Z/D, X/Z/U* by attribute type, as PS3.15 E.1.1 says.

    Type 1 needs a value (D, or U* for a sequence of references), type 2 needs presence (Z), type 3 allows
    removal (X). When the wanted code is not among the alternatives, the next stricter one is used.
    X/Z/U* keeps a type 1 or 2 reference sequence with its UIDs replaced (U*).
    """
    alternatives = code.split("/")
    if code == "X/Z/U*" and kind != "3":
        # An emptied type 2 reference (Z) breaks the cross-reference rules of derived objects (a SEG must
        # reference the instances its Referenced Series Sequence lists); keyed UIDs keep them linked.
        return "U*"
    if kind in ("1", "1C"):
        wanted = ["D", "U*", "Z", "X"]
    elif kind in ("2", "2C"):
        wanted = ["Z", "D", "U*", "X"]
    else:
        wanted = ["X", "Z", "D", "U*"]
    for w in wanted:
        if w in alternatives:
            return w
    return alternatives[0]  # pragma: no cover


def keyword(tag: int) -> str:
    """The keyword of a tag ('' for private or unknown)."""
    return keyword_for_tag(tag) or ""
