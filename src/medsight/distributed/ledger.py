"""A folder of done marks: one small JSON per finished input, written atomically after its output is in place.

A batch job that crashes or is stopped leaves its marks; a re-run reads them, skips those inputs and so writes no
output twice. Marks are named by a hash of the input's path, never the path (which may hold a patient's name).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medsight.io.atomic import write_json

#: Where the marks live inside an output folder.
FOLDER = ".medsight-done"


def key(rel: str) -> str:
    """The name of an input in marks, outputs and reports: a hash of its path relative to the archive."""
    return hashlib.sha256(rel.encode("utf-8", "surrogateescape")).hexdigest()[:20]


class Ledger:
    """The done marks of one output folder."""

    def __init__(self, out: Path) -> None:
        self.folder = Path(out) / FOLDER

    def done(self) -> set[str]:
        """Keys of every input finished so far (by this or an earlier run)."""
        return {p.stem for p in self.folder.glob("*.json")} if self.folder.is_dir() else set()

    def mark(self, name: str, record: dict[str, Any]) -> None:
        """Record ``name`` as finished (its output must already be in place)."""
        write_json(self.folder / f"{name}.json", record)

    def records(self) -> Iterator[dict[str, Any]]:
        """Every mark's record, in key order."""
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            yield json.loads(path.read_text())
