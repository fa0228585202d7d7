"""The Retain Safe Private option: which private attributes are known to carry no identifiers.

The candidates are the rows of DICOM PS3.15 Table E.3.10-1 (``ps315_table_e3_10_1.tsv``, transcribed from
the 2026d edition); which of them are kept is our policy (``safe_private.json``): numbers, code strings and
tag pointers only, each value checked at run time, as note 2 of section E.3.10 advises. Private tags are
addressed by (private creator, group, element byte) because the block a creator reserves differs between
files.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

TABLE_FILE = "ps315_table_e3_10_1.tsv"
POLICY_FILE = "safe_private.json"
_TAG = re.compile(r"\(([0-9A-Fa-f]{4}),xx([0-9A-Fa-f]{2})\)")
# What a kept value may hold: the VR's own character repertoire, nothing else (PS3.5 6.2).
_TEXT_FORMS = {
    "IS": re.compile(r"[0-9+\- \\]*"),
    "DS": re.compile(r"[0-9+\-.eE \\]*"),
    "CS": re.compile(r"[A-Z0-9 _\\]*"),
}
_BINARY_SIZE = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "AT": 4, "FD": 8}


@dataclass(frozen=True)
class TableRow:
    """One row of Table E.3.10-1."""

    tag: str
    private_creator: str
    vr: str
    vm: str
    meaning: str

    @property
    def group(self) -> int:
        return int(_tag_parts(self.tag)[0], 16)

    @property
    def element(self) -> int:
        return int(_tag_parts(self.tag)[1], 16)


def _tag_parts(tag: str) -> tuple[str, str]:
    match = _TAG.fullmatch(tag)
    if match is None:
        raise ValueError(f"{TABLE_FILE}: {tag!r} is not a private data element like (0019,xx0C)")
    return match.group(1), match.group(2)


def load_table() -> list[TableRow]:
    """Table E.3.10-1 as shipped, in the standard's order."""
    text = resources.files("medsight.privacy").joinpath(TABLE_FILE).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    return [TableRow(**row) for row in csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)]


@dataclass(frozen=True)
class SafePrivate:
    """The kept set as {(creator, group): {element byte: VR}}."""

    safe: dict[tuple[str, int], dict[int, str]]

    @classmethod
    @lru_cache(maxsize=1)
    def load(cls) -> SafePrivate:
        """The table's rows the policy keeps, read once per process."""
        policy = json.loads(resources.files("medsight.privacy").joinpath(POLICY_FILE).read_text(encoding="utf-8"))
        keep_vrs = set(policy["keep_vrs"])
        withheld = {(w["tag"].upper(), w["private_creator"].strip().upper()) for w in policy["withheld"]}
        safe: dict[tuple[str, int], dict[int, str]] = {}
        for row in load_table():
            creator = row.private_creator.strip().upper()
            if row.vr in keep_vrs and (row.tag.upper(), creator) not in withheld:
                safe.setdefault((creator, row.group), {})[row.element] = row.vr
        return cls(safe)

    def rows(self) -> set[tuple[str, int, int, str]]:
        """Every kept (creator, group, element byte, VR)."""
        return {(c, g, e, vr) for (c, g), elems in self.safe.items() for e, vr in elems.items()}

    def keep(self, ds: Dataset, tags: list[int]) -> set[int]:
        """The private tags of ``ds`` to keep: safe ones whose value is what the table says, plus their creators."""
        creators: dict[tuple[int, int], str] = {}
        for tag in tags:
            group, elem = tag >> 16, tag & 0xFFFF
            if 0x10 <= elem <= 0xFF:
                creators[(group, elem)] = str(ds[tag].value).strip().upper()
        keep: set[int] = set()
        for tag in tags:
            group, elem = tag >> 16, tag & 0xFFFF
            if elem < 0x1000:
                continue
            creator = creators.get((group, elem >> 8))
            vr = self.safe.get((creator, group), {}).get(elem & 0xFF) if creator is not None else None
            if vr is not None and _value_is(ds, tag, vr):
                keep.add(tag)
                keep.add((group << 16) | (elem >> 8))
        return keep


def _value_is(ds: Dataset, tag: int, vr: str) -> bool:
    """Whether the element holds only what its row's VR allows (a name typed into a number field does not)."""
    elem = ds[tag]
    if elem.VR not in (vr, "UN"):
        return False
    if vr in _TEXT_FORMS:
        raw = elem.value
        if isinstance(raw, (bytes, bytearray)):
            try:
                text = bytes(raw).decode("ascii").rstrip("\x00 ")
            except UnicodeDecodeError:
                return False
        elif raw is None:
            text = ""
        elif isinstance(raw, str):
            text = raw
        elif isinstance(raw, MultiValue):
            text = "\\".join(str(v) for v in raw)
        else:
            text = str(raw)
        return _TEXT_FORMS[vr].fullmatch(text) is not None
    if elem.VR == "UN":
        raw = elem.value or b""
        return len(raw) % _BINARY_SIZE[vr] == 0
    return True
