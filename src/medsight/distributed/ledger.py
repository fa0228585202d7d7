"""A folder of done marks: one small JSON per finished input, written atomically after its output is in place.

A batch job that crashes or is stopped leaves its marks; a re-run reads them, skips those inputs and so writes no
output twice. Marks are named by a hash of the input's path, never the path (which may hold a patient's name).
Each mark carries the fingerprint of what produced it (the model, the options, the file's size and time): a re-run
with another model or options, or over a file that changed, finds the mark stale and redoes the input.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medsight.errors import MedsightError
from medsight.io.atomic import write_json

#: Where the marks live inside an output folder.
FOLDER = ".medsight-done"
#: The lock a running batch holds in :data:`FOLDER` (released by the system when its process ends, however).
LOCK = "lock"


def key(rel: str) -> str:
    """The name of an input in marks, outputs and reports: a hash of its path relative to the archive."""
    return hashlib.sha256(rel.encode("utf-8", "surrogateescape")).hexdigest()[:20]


class Ledger:
    """The done marks of one output folder."""

    def __init__(self, out: Path) -> None:
        self.folder = Path(out) / FOLDER

    def done(self) -> set[str]:
        """Keys of every input marked so far (by this or an earlier run), stale or not."""
        return {p.stem for p in self.folder.glob("*.json")} if self.folder.is_dir() else set()

    def mark(self, name: str, record: dict[str, Any]) -> None:
        """Record ``name`` as finished (its output must already be in place)."""
        write_json(self.folder / f"{name}.json", record, compact=True)

    def read(self, name: str) -> dict[str, Any] | None:
        """The mark of ``name``; ``None`` when there is none or it cannot be read (the input is then redone)."""
        try:
            record = json.loads((self.folder / f"{name}.json").read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def load(self) -> dict[str, dict[str, Any]]:
        """Every readable mark by key (an unreadable one is left out, so its input is redone)."""
        marks = {}
        for name in sorted(self.done()):
            record = self.read(name)
            if record is not None:
                marks[name] = record
        return marks

    def records(self) -> Iterator[dict[str, Any]]:
        """Every readable mark's record, in key order."""
        yield from self.load().values()

    @contextmanager
    def lock(self, out: Path) -> Iterator[None]:
        """Hold the folder for one run: a second batch writing into the same folder would remove the first one's
        half-written results as leftovers and mark over its marks."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise MedsightError(
                    "another medsight batch is writing into this folder; wait for it or give another --out", out
                ) from None
            yield
        finally:
            os.close(fd)
