"""Apply the PS3.15 profile to a pydicom Dataset, recursively, and record what was done.

The engine touches only what the table lists (plus private tags and the contents of sequences the table
says to replace or clean); other raw elements are never decoded, which keeps a run close to the speed of a
plain read-and-write loop.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from medsight import __version__
from medsight.io.dicom import peek
from medsight.privacy.profile import (
    BASIC_PROFILE_CODE,
    COMPOUND_CODES,
    DATE_VRS,
    OPTIONS,
    Profile,
    Rule,
    attribute_type,
    iod_for_sop_class,
    keyword,
    resolve_compound,
)
from medsight.privacy.pseudonyms import Pseudonymizer, shift_date
from medsight.privacy.safe_private import SafePrivate

#: medsight's Implementation Class UID (a 2.25 UUID-derived UID), written into every file it makes.
IMPLEMENTATION_UID = "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "medsight/implementation").int)
PATIENT_NAME, PATIENT_ID, ISSUER_OF_PATIENT_ID = 0x00100010, 0x00100020, 0x00100021
STUDY_UID = 0x0020000D
#: a set, not a tuple: membership by hash avoids pydicom's Python-level BaseTag.__eq__ on every element
PATIENT_TAGS = frozenset({PATIENT_NAME, PATIENT_ID})
SOP_INSTANCE_UID = 0x00080018
#: File meta elements that name the sender, receiver or a private implementation: removed.
META_DROP_TAGS = tuple(
    int(tag_for_keyword(name) or 0)
    for name in (
        "SourceApplicationEntityTitle",
        "SendingApplicationEntityTitle",
        "ReceivingApplicationEntityTitle",
        "SourcePresentationAddress",
        "SendingPresentationAddress",
        "ReceivingPresentationAddress",
        "PrivateInformation",
        "PrivateInformationCreatorUID",
    )
)

#: VRs whose values are text that may carry identifiers (CS is left: it holds enumerated terms).
TEXT_VRS = frozenset({"AE", "AS", "DA", "DT", "TM", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
#: VRs whose values are character strings (encoded as text, padded to even length).
STRING_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
BYTES_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "AT"})

#: Dummy values for D, consistent with each VR (lengths within the VR's limit).
DUMMY: dict[str, Any] = {
    "AE": "ANONYMOUS",
    "AS": "000Y",
    "CS": "ANONYMIZED",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "DS": "0",
    "IS": "0",
    "LO": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "PN": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "UC": "ANONYMIZED",
    "UR": "urn:x-anonymized",
    "UT": "ANONYMIZED",
}

_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?"
    r"|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
#: Dates and long numbers in any common form: 20200115, 2020-01-15, 15/01/2020, 15 Jan 2020, 15-Jan-20,
#: March 3rd 1980, Jan. 4, 2019, Jan 2020, and runs of 6+ digits.
_GENERIC_PHI = re.compile(
    r"\d{8}|\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}|\d{6,}"
    rf"|\b{_DAY}[\s\-/.]*(?:of\s+)?{_MONTH}\b\.?,?[\s\-/.]*\d{{2,4}}\b"
    rf"|\b{_MONTH}\b\.?[\s\-/.]*{_DAY},?\s*\d{{2,4}}\b"
    rf"|\b{_MONTH}\b\.?,?\s*\d{{4}}\b",
)
#: Identifier-like tokens: a short letter prefix and 4+ digits (MRN12345, ID:1234), or digit groups joined
#: by - or / (P-12-345, AB-1234-56) holding 4 digits or more.
_ID_LIKE = re.compile(r"\b[A-Za-z]{1,4}[-#:]?\d{4,}\b|\b(?:[A-Za-z]{1,4}[-#])?\d{1,8}(?:[-/]\d{1,8}){1,3}\b")
#: UIDs that name no patient: every UID under the DICOM root, and attributes that hold class, scheme or
#: organisation UIDs (coding schemes, templates, mapping resources).
STANDARD_UID_ROOT = "1.2.840.10008."
UID_KEEP_TAGS = frozenset({0x0008010C, 0x0008010D, 0x00080117, 0x00080118, 0x0040DB0C, 0x0040DB0D})


@dataclass
class Outcome:
    """What happened to one file: per-row action counts and things a person should review.

    ``reid`` maps pseudonyms back to originals (PHI): it only ever goes to the separate re-identification
    table, never to a report or log.
    """

    actions: Counter[tuple[str, str]] = field(default_factory=Counter)
    review: list[str] = field(default_factory=list)
    reid: dict[str, tuple[str, str]] = field(default_factory=dict)
    iod: str | None = None


@dataclass
class _Context:
    iod: str | None
    patient_key: str
    shift: int
    outcome: Outcome
    scrubber: re.Pattern[str] | None = None


class Deidentifier:
    """The profile under one set of options and one key; reusable across many files."""

    def __init__(self, key: bytes, options: Iterable[str] = (), *, patient_key: str = "id+issuer") -> None:
        if patient_key not in PATIENT_KEYS:
            raise ValueError(f"patient_key must be one of {PATIENT_KEYS}")
        self.patient_key_rule = patient_key
        self.options = frozenset(options)
        unknown = self.options - set(OPTIONS)
        if unknown:
            raise ValueError(f"unknown options: {sorted(unknown)}")
        if {"retain_full_dates", "retain_modified_dates"} <= self.options:
            raise ValueError("choose one of retain_full_dates and retain_modified_dates")
        self.profile = Profile.load()
        self.pseudo = Pseudonymizer(key)
        self.safe_private = SafePrivate.load()
        self._codes: dict[int, str] = {t: r.action(self.options) for t, r in self.profile.by_tag.items()}
        self._special = {
            r.id: r.action(self.options)
            for r in (
                self.profile.curve,
                self.profile.overlay_data,
                self.profile.overlay_comments,
                self.profile.private,
            )
        }
        # tag -> (row id, code): one dict lookup per element instead of match + option resolution
        self._plan: dict[int, tuple[str, str]] = {t: (r.id, c) for t, r in self.profile.by_tag.items()
                                                  for c in (self._codes[t],)}
        # (IOD, path, tag, code) -> resolved compound code; the IOD tables are looked up once per path
        self._compound: dict[tuple[str | None, tuple[str, ...], int, str], str] = {}
        self._shift_dates = "retain_modified_dates" in self.options
        self._keep_dates = "retain_full_dates" in self.options
        self._keep_uids = "retain_uids" in self.options
        self._mark_values = self._marks()
        # C (clean) only arises from options; the scrubber is built only when one is selected.
        self._needs_scrub = bool(self.options)

    # --- entry point ---------------------------------------------------------------------------

    def apply(self, ds: Dataset) -> Outcome:
        """De-identify ``ds`` in place (file meta included) and return what was done."""
        outcome = Outcome()
        outcome.iod = iod_for_sop_class(peek(ds, 0x00080016))
        patient_key = self._patient_key(ds)
        ctx = _Context(outcome.iod, patient_key, self.pseudo.date_shift_days(patient_key), outcome)
        if self._needs_scrub:
            ctx.scrubber = self._scrubber(ds)
        self._record_reid(ds, ctx)
        self._walk(ds, (), "normal", ctx)
        self._mark(ds)
        self._file_meta(ds)
        return outcome

    # --- the walk ------------------------------------------------------------------------------

    def _walk(self, ds: Dataset, path: tuple[str, ...], mode: str, ctx: _Context) -> None:
        """Apply the table to every element of ``ds``; ``mode`` is how unlisted leaves are treated.

        normal: kept; dummy (inside a sequence replaced by D): text replaced by dummies;
        clean (inside a sequence cleaned by C): text scrubbed, dates shifted.
        """
        private: list[int] = []
        overlay_groups: set[int] = set()
        elements = ds._dict  # the raw map: no tag conversion, no value decoding while deciding
        plan = self._plan
        actions = ctx.outcome.actions
        normal = mode == "normal"
        for tag in list(elements):
            group = tag >> 16
            if group & 1:
                private.append(tag)
                continue
            if 0x6000 <= group <= 0x601E:  # in_repeating_overlay: decided with its group
                overlay_groups.add(group)
                continue
            planned = plan.get(tag)
            if planned is None:
                rule = self.profile.match(tag)  # the repeating curve rows (50xx)
                if rule is None:
                    vr = elements[tag].VR or _dict_vr(tag)
                    if normal and vr not in _NORMAL_UNLISTED_VRS:
                        continue  # kept: an unlisted attribute that is not a sequence, UID or date
                    self._unlisted(ds, tag, vr, path, mode, ctx)
                    continue
                row, code = rule.id, self._special[rule.id]
            else:
                row, code = planned
                rule = None
            if code in COMPOUND_CODES:
                code = self._resolve(code, tag, path, ctx)
            actions[(row, code)] += 1
            self._act(ds, tag, rule or self.profile.by_tag[tag], code, path, ctx)
        if overlay_groups:
            self._overlays(ds, overlay_groups, ctx)
        if private:
            self._private(ds, private, ctx)

    def _resolve(self, code: str, tag: int, path: tuple[str, ...], ctx: _Context) -> str:
        """A compound code resolved by the attribute's type at ``path`` in the object's IOD (cached)."""
        key = (ctx.iod, path, tag, code)
        resolved = self._compound.get(key)
        if resolved is None:
            resolved = resolve_compound(code, attribute_type(ctx.iod, ">".join((*path, keyword(tag)))))
            self._compound[key] = resolved
        return resolved

    def _overlays(self, ds: Dataset, groups: set[int], ctx: _Context) -> None:
        """Overlay planes (60xx): removed whole under the Basic Profile, with or without Overlay Data.

        Overlay Data (60xx,3000) and Overlay Comments (60xx,4000) are the table's rows; Overlay Description
        (60xx,0022), Overlay Label (60xx,1500) and every other element of the group are free text or
        geometry of the same overlay, so they share its fate. Under Clean Graphics the group is kept, every
        text element in it is scrubbed, and the bitmap is listed for review.
        """
        code = self._special[self.profile.overlay_data.id]
        for group in sorted(groups):
            tags = [int(t) for t in ds.keys() if t.group == group]  # noqa: SIM118 (Dataset: keys are tags)
            for tag in tags:
                rule = self.profile.match(tag)
                if rule is not None:
                    ctx.outcome.actions[(rule.id, self._special[rule.id])] += 1
            if code != "C":
                for tag in tags:
                    del ds[tag]
                continue
            for tag in tags:
                elem = ds[tag]
                if elem.VR in BYTES_VRS:
                    ctx.outcome.review.append("Overlay Data kept under Clean Graphics: check it holds no text")
                elif elem.VR in TEXT_VRS and not _is_empty(elem.value):
                    elem.value = _scrub(elem.value, ctx.scrubber) or DUMMY.get(elem.VR, "")

    def _unlisted(self, ds: Dataset, tag: int, vr: str, path: tuple[str, ...], mode: str, ctx: _Context) -> None:
        """An attribute Table E.1-1 does not name: sequences walked, dates and UIDs treated by their VR."""
        if vr == "SQ":
            name = keyword(tag)
            # Coded concepts come from terminologies, not from the patient: kept even when replacing.
            inner = "normal" if name.endswith("CodeSequence") else mode
            for item in ds[tag].value or ():
                self._walk(item, (*path, name), inner, ctx)
        elif vr == "UI":
            if not self._keep_uids and tag not in UID_KEEP_TAGS and not _is_class_uid(tag):
                self._map_uids(ds, tag, keep_standard=True)
                ctx.outcome.actions[("outside:UI", "U")] += 1
        elif mode == "normal" and vr in DATE_VRS:
            self._unlisted_date(ds, tag, vr, path, ctx)
        elif mode != "normal" and vr in TEXT_VRS:
            elem = ds[tag]
            if elem.value in (None, "", b""):
                return
            if mode == "dummy":
                elem.value = DUMMY[vr]
            else:
                self._clean_leaf(elem, vr, ctx)

    def _act(self, ds: Dataset, tag: int, rule: Rule, code: str, path: tuple[str, ...], ctx: _Context) -> None:
        """Apply one code. Values are decoded only where the new value depends on the old one (names, IDs,
        UIDs, cleaning); a replaced or emptied value is simply set, and a kept one is never touched."""
        if code == "X":
            del ds[tag]
            return
        if code == "C":
            self._clean(ds, tag, rule, (*path, keyword(tag)), ctx)
            return
        elem, vr = _element(ds, tag)
        if vr == "SQ":
            if code == "Z":
                if not _is_empty(elem.value):
                    elem.value = Sequence()
            elif code in ("K", "U*", "D"):
                inner = "dummy" if code == "D" else "normal"
                inner_path = (*path, keyword(tag))
                for item in elem.value or ():
                    self._walk(item, inner_path, inner, ctx)
            else:  # U on a sequence: the table has none; decoded like any other value
                self._map_uids(ds, tag)
            return
        if code in ("K", "U*"):
            return
        if code == "Z":
            if _element_empty(elem):
                return
            if tag in PATIENT_TAGS:
                _set(ds, tag, vr, self._patient_pseudonym(tag, str(ds[tag].value), ctx, path))
            else:
                _set(ds, tag, vr, _empty(vr))
        elif code == "D":
            if vr == "UI":
                self._map_uids(ds, tag)
            elif tag in PATIENT_TAGS and not _element_empty(elem):
                _set(ds, tag, vr, self._patient_pseudonym(tag, str(ds[tag].value), ctx, path))
            else:
                _set(ds, tag, vr, DUMMY.get(vr, _dummy_other(vr)))
        elif code == "U":
            self._map_uids(ds, tag)
        else:  # pragma: no cover - the table has no other codes
            raise ValueError(f"unknown action {code!r} for {rule.tag}")

    def _unlisted_date(self, ds: Dataset, tag: int, vr: str, path: tuple[str, ...], ctx: _Context) -> None:
        """A DA, DT or TM the table does not list: treated like the table's dates (X/Z/D by type, shifted
        with the patient's shift under Modified Dates, kept under Full Dates)."""
        if self._keep_dates:
            ctx.outcome.actions[(f"outside:{vr}", "K")] += 1
            return
        if self._shift_dates:
            elem = ds[tag]
            if vr != "TM" and not _is_empty(elem.value):  # whole-day shifts keep the time of day
                elem.value = self._shift(elem.value, vr, ctx)
            ctx.outcome.actions[(f"outside:{vr}", "C")] += 1
            return
        code = self._resolve("X/Z/D", tag, path, ctx)
        ctx.outcome.actions[(f"outside:{vr}", code)] += 1
        if code == "X":
            del ds[tag]
        else:
            _set(ds, tag, _element(ds, tag)[1], "" if code == "Z" else DUMMY[vr])

    # --- actions -------------------------------------------------------------------------------

    def _map_uids(self, ds: Dataset, tag: int, keep_standard: bool = False) -> None:
        """Every value of a UI element re-mapped with the keyed hash (well-known UIDs kept if asked)."""
        elem, vr = _element(ds, tag)
        if elem.is_raw and vr == "UI":
            # decoded as pydicom does (ASCII, trailing NUL/space padding, backslash-separated), cheaper
            text = (elem.value or b"").decode("latin-1").rstrip("\x00 ")
            if not text:
                return
            values: list[str] = text.split("\\")
        else:
            value = elem.value
            if _is_empty(value):
                return
            values = [str(value)] if isinstance(value, str) else [str(v) for v in value]

        def new(v: str) -> str:
            return v if keep_standard and v.startswith(STANDARD_UID_ROOT) else self.pseudo.uid(v)

        mapped = [new(v) for v in values]
        if vr == "UI":
            _set(ds, tag, vr, mapped[0] if len(mapped) == 1 else mapped)
        else:
            elem.value = mapped[0] if len(mapped) == 1 else mapped

    def _clean(self, ds: Dataset, tag: int, rule: Rule, inner_path: tuple[str, ...], ctx: _Context) -> None:
        """C: replace with values of similar meaning known not to identify (PS3.15 E.1.1)."""
        elem = ds[tag]
        vr = elem.VR
        if vr == "SQ":
            for item in elem.value or ():
                self._walk(item, inner_path, "clean", ctx)
        elif vr in BYTES_VRS or vr in NUMBER_VRS:
            # Overlay or curve data kept under Clean Graphics: bitmaps cannot be read for text here.
            ctx.outcome.review.append(f"{rule.name} kept under Clean Graphics: check it holds no text")
        elif not _is_empty(elem.value):
            self._clean_leaf(elem, vr, ctx)

    def _clean_leaf(self, elem: Any, vr: str, ctx: _Context) -> None:
        if vr in ("DA", "DT"):
            elem.value = self._shift(elem.value, vr, ctx) if self._shift_dates else DUMMY[vr]
        elif vr == "TM":
            if not self._shift_dates:  # whole-day shifts keep the time of day
                elem.value = DUMMY[vr]
        elif vr == "AE":
            values = [elem.value] if isinstance(elem.value, str) else list(elem.value)
            elem.value = (
                [self.pseudo.ae_title(str(v)) for v in values]
                if len(values) > 1
                else self.pseudo.ae_title(str(values[0]))
            )
        elif vr == "PN":
            elem.value = DUMMY["PN"]
        elif vr in ("UR", "AS"):
            elem.value = DUMMY[vr]
        elif vr == "CS":
            elem.value = _scrub(elem.value, ctx.scrubber, "") or DUMMY["CS"]
        else:
            elem.value = _scrub(elem.value, ctx.scrubber)

    def _shift(self, value: Any, vr: str, ctx: _Context) -> Any:
        values = [value] if isinstance(value, str) else [str(v) for v in value]
        out = []
        for v in values:
            shifted = shift_date(str(v), ctx.shift)
            out.append(shifted if shifted is not None else DUMMY[vr])
        return out[0] if len(out) == 1 else out

    def _private(self, ds: Dataset, tags: list[int], ctx: _Context) -> None:
        keep: set[int] = set()
        if self._special[self.profile.private.id] == "C":
            keep = self.safe_private.keep(ds, tags)
        for tag in tags:
            if tag in keep:
                ctx.outcome.actions[(self.profile.private.id, "C")] += 1
            else:
                del ds[tag]
                ctx.outcome.actions[(self.profile.private.id, "X")] += 1

    # --- patient identity ----------------------------------------------------------------------

    def _patient_key(self, ds: Dataset) -> str:
        """Who the patient is, for pseudonyms and the date shift (see PATIENT_KEYS)."""
        pid = str(ds.get("PatientID", "") or "").strip()
        if pid:
            issuer = str(ds.get("IssuerOfPatientID", "") or "").strip() if self.patient_key_rule == "id+issuer" else ""
            return f"id:{pid}|{issuer}"
        name = str(ds.get("PatientName", "") or "").strip()
        if name:
            return f"name:{name}"
        return f"study:{ds.get('StudyInstanceUID', '')}"

    def _patient_pseudonym(self, tag: int, value: str, ctx: _Context, path: tuple[str, ...]) -> str:
        key = ctx.patient_key if not path else f"nested:{value}"
        return self.pseudo.patient_name(key) if tag == PATIENT_NAME else self.pseudo.patient_id(key)

    def _record_reid(self, ds: Dataset, ctx: _Context) -> None:
        """Remember originals of the pseudonyms (for the optional re-identification table only)."""
        reid = ctx.outcome.reid
        for tag, name in ((PATIENT_ID, "PatientID"), (PATIENT_NAME, "PatientName")):
            value = ds.get(name)
            if value:
                reid[name] = (str(value), self._patient_pseudonym(tag, str(value), ctx, ()))
        study = peek(ds, 0x0020000D)
        if study and "retain_uids" not in self.options:
            reid["StudyInstanceUID"] = (str(study), self.pseudo.uid(str(study)))

    # --- text cleaning -------------------------------------------------------------------------

    def _scrubber(self, ds: Dataset) -> re.Pattern[str]:
        """A pattern of this object's own identifying values (names, IDs, addresses, dates), at any depth."""
        terms: set[str] = set()

        def collect(_: Dataset, elem: Any) -> None:
            rule = self.profile.by_tag.get(int(elem.tag))
            if (
                rule is None
                or rule.vr not in TEXT_VRS
                or self._codes[int(elem.tag)] in ("K", "C")
                or "cleanDescOpt" in rule.options
            ):
                return  # descriptors are what gets cleaned, not what is looked for
            value = elem.value
            for v in value if isinstance(value, (list, MultiValue)) else [value]:
                text = str(v or "").strip()
                if rule.vr == "PN":
                    # every component group (alphabetic, ideographic, phonetic), every part however short
                    for group in text.split("="):
                        terms.add(group.replace("^", " ").strip())
                        terms.update(p.strip() for p in re.split(r"[\^\s,.]+", group))
                elif len(text) >= 3:
                    terms.add(text)

        ds.walk(collect)
        alternatives = [_term_pattern(t) for t in sorted((t for t in terms if t), key=len, reverse=True)]
        alternatives.append(_GENERIC_PHI.pattern)
        return re.compile("|".join(alternatives), re.IGNORECASE)

    # --- marks the standard asks for --------------------------------------------------------------

    def _mark(self, ds: Dataset) -> None:
        """Patient Identity Removed, De-identification Method and its code sequence (CID 7050).

        The values are the same for every file of a run (built once in ``_marks``); each file gets new
        elements and items, set without pydicom's keyword lookup and validation of our own constants.
        """
        codes, method, longitudinal = self._mark_values
        _set(ds, 0x00120062, "CS", "YES")  # Patient Identity Removed
        _set(ds, 0x00120063, "LO", list(method))  # De-identification Method
        _set(ds, 0x00120064, "SQ", Sequence([_code_item(value, meaning) for value, meaning in codes]))
        _set(ds, 0x00280303, "CS", longitudinal)  # Longitudinal Temporal Information Modified

    def _marks(self) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...], str]:
        codes = (BASIC_PROFILE_CODE, *((o.code, o.meaning) for name, o in OPTIONS.items() if name in self.options))
        method = (f"medsight {__version__} PS3.15 E.1 Basic Profile"[:64], *(meaning[:64] for _, meaning in codes[1:]))
        if "retain_full_dates" in self.options:
            longitudinal = "UNMODIFIED"
        elif self._shift_dates:
            longitudinal = "MODIFIED"
        else:
            longitudinal = "REMOVED"
        return codes, method, longitudinal

    def add_method_code(self, ds: Dataset, code: tuple[str, str]) -> None:
        """Record one more method (e.g. Clean Pixel Data) after the fact."""
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code[0], "DCM", code[1]
        ds.DeidentificationMethodCodeSequence.append(item)
        ds.DeidentificationMethod = [*list(ds.DeidentificationMethod), code[1]]

    def _file_meta(self, ds: Dataset) -> None:
        """Keep the file meta consistent with the new SOP Instance UID; drop AE titles it names."""
        meta = getattr(ds, "file_meta", None)
        if meta is None:
            return
        if BaseTag(SOP_INSTANCE_UID) in ds._dict:
            _set(meta, 0x00020003, "UI", ds[SOP_INSTANCE_UID].value)  # Media Storage SOP Instance UID
        # we wrote this file: name our implementation, not the one that made the original
        _set(meta, 0x00020012, "UI", IMPLEMENTATION_UID)
        _set(meta, 0x00020013, "SH", f"MEDSIGHT_{__version__}"[:16])
        for tag in META_DROP_TAGS:
            if tag in meta._dict:
                del meta[tag]


#: How a patient is recognised across files: by Patient ID qualified by Issuer of Patient ID (the default:
#: the same number from two issuers is two patients), or by Patient ID alone (one hospital's numbers,
#: where some files lack the issuer). Without a Patient ID: the name, then the study.
PATIENT_KEYS = ("id+issuer", "id")


def _term_pattern(term: str) -> str:
    """A regular expression for one identifying value in any spelling: separators between the characters
    of an ID may vary ("P12345", "P-12-345"); short Latin name parts match whole words only ("Li" but
    not "Liver"); ideographic and phonetic parts match anywhere (those scripts put no spaces)."""
    if not term.isascii():
        return re.escape(term)
    chars = [c for c in term if c.isalnum()]
    if len(chars) >= 4 and any(c.isdigit() for c in chars):
        return r"(?<![A-Za-z0-9])" + r"[\s\-_./]?".join(re.escape(c) for c in chars) + r"(?![A-Za-z0-9])"
    if len(term) < 3:
        return r"(?<![A-Za-z0-9])" + re.escape(term) + r"(?![A-Za-z0-9])"
    return re.escape(term)


@lru_cache(maxsize=4096)
def _dict_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


#: VRs of unlisted attributes that are treated in normal mode; every other unlisted attribute is kept.
_NORMAL_UNLISTED_VRS = frozenset({"SQ", "UI", "DA", "DT", "TM"})


@lru_cache(maxsize=4096)
def _is_class_uid(tag: int) -> bool:
    return keyword(tag).endswith("ClassUID")


def _element(ds: Dataset, tag: int) -> tuple[Any, str]:
    """The element (raw when it can stay raw) and its VR; decoded when the file gives no usable VR."""
    elem: Any = ds._dict[BaseTag(tag)]
    vr = elem.VR
    if elem.is_raw and (not vr or len(vr) != 2 or vr in ("UN", "SQ")):
        elem = ds[tag]  # a sequence's items; implicit VR, ambiguous or UN: pydicom settles the VR as before
        vr = elem.VR
    return elem, str(vr)


def _element_empty(elem: Any) -> bool:
    """True when the value is empty; a raw value is judged without decoding (padding only is empty)."""
    if not elem.is_raw:
        return _is_empty(elem.value)
    value = elem.value
    if not value:
        return True
    return elem.VR not in BYTES_VRS and elem.VR not in NUMBER_VRS and not value.strip(b" \x00")


def _set(ds: Dataset, tag: int, vr: str, value: Any) -> None:
    """Replace an element's value by one medsight made (a dummy, a pseudonym, an empty value)."""
    old_raw: Any = ds._dict.get(BaseTag(tag))
    if old_raw is not None and old_raw.is_raw and vr in STRING_VRS:
        # encoded here, as pydicom would (ASCII values are the same in every character set), and kept raw
        # in the file's encoding, so the writer copies it like an untouched element
        text = value if isinstance(value, str) else "\\".join(value) if isinstance(value, list) else None
        if text is not None and text.isascii():
            data = text.encode("ascii")
            if len(data) % 2:
                data += b"\x00" if vr == "UI" else b" "
            ds._dict[old_raw.tag] = RawDataElement(
                old_raw.tag, vr, len(data), data, 0, old_raw.is_implicit_VR, old_raw.is_little_endian
            )
            return
    elem = DataElement(tag, vr, value, validation_mode=config.IGNORE)
    if vr == "SQ":  # a replaced sequence keeps the length encoding (defined or not) the file gave it
        old: Any = ds._dict.get(elem.tag)
        if old is not None:
            elem.is_undefined_length = old.length == 0xFFFFFFFF if old.is_raw else old.is_undefined_length
    ds._dict[elem.tag] = elem


def _code_item(value: str, meaning: str) -> Dataset:
    """One item of a code sequence (scheme DCM)."""
    item = Dataset()
    _set(item, 0x00080100, "SH", value)  # Code Value
    _set(item, 0x00080102, "SH", "DCM")  # Coding Scheme Designator
    _set(item, 0x00080104, "LO", meaning)  # Code Meaning
    return item


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, (str, bytes, list, Sequence)) and len(value) == 0)


def _empty(vr: str) -> Any:
    if vr == "SQ":
        return Sequence()
    if vr in BYTES_VRS:
        return b""
    if vr in NUMBER_VRS:
        return None
    return ""


def _dummy_other(vr: str) -> Any:
    if vr in BYTES_VRS:
        return b"\x00\x00"
    if vr in NUMBER_VRS:
        return 0
    return "ANONYMIZED"


def _scrub(value: Any, pattern: re.Pattern[str] | None, repl: str = "*") -> Any:
    """Blank the object's own identifiers and date- or number-like runs inside free text."""
    if pattern is None:
        return value

    def one(text: str) -> str:
        text = pattern.sub(repl, text)
        return _ID_LIKE.sub(lambda m: repl if sum(c.isdigit() for c in m[0]) >= 4 else m[0], text).strip()

    if isinstance(value, str):
        return one(value)
    return [one(str(v)) for v in value]
