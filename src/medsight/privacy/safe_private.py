"""The Retain Safe Private option: which private attributes are known to carry no identifiers.

Private tags are addressed by (private creator, group, element byte) because the block a vendor's
creator reserves differs between files; the list is data (``safe_private.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from pydicom.dataset import Dataset


@dataclass(frozen=True)
class SafePrivate:
    """The safe set as {(creator, group): {element byte}}."""

    safe: dict[tuple[str, int], frozenset[int]]

    @classmethod
    @lru_cache(maxsize=1)
    def load(cls) -> SafePrivate:
        """Read the shipped list once per process."""
        text = resources.files("medsight.privacy").joinpath("safe_private.json").read_text(encoding="utf-8")
        table: dict[tuple[str, int], set[int]] = {}
        for row in json.loads(text)["attributes"]:
            table.setdefault((row["creator"].strip().upper(), int(row["group"], 16)), set()).add(
                int(row["element"], 16)
            )
        return cls({k: frozenset(v) for k, v in table.items()})

    def keep(self, ds: Dataset, tags: list[int]) -> set[int]:
        """The private tags of ``ds`` to keep: the safe ones plus the creators that reserve them."""
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
            if creator is not None and (elem & 0xFF) in self.safe.get((creator, group), frozenset()):
                keep.add(tag)
                keep.add((group << 16) | (elem >> 8))
        return keep
