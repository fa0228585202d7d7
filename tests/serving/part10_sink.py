"""A real instance sink for the listener and sender tests: each instance a Part-10 file named by its SOP Instance
UID, file and folder fsynced before ``store`` returns (what the listener's acknowledgement promises)."""

from __future__ import annotations

import os
from pathlib import Path

from pydicom import dcmwrite
from pydicom.dataset import Dataset

from medsight.errors import MedsightError


class Part10Sink:
    """``refuse``: a SOP Instance UID to refuse, as a store refuses a bad instance."""

    def __init__(self, root: Path, refuse: str | None = None) -> None:
        self.root = root
        self.refuse = refuse
        root.mkdir(parents=True, exist_ok=True)
        self.calls: list[tuple[str, str]] = []

    def store(self, dataset: Dataset, *, calling_ae: str, peer: str, encoded: bytes | None = None) -> object:
        if dataset.SOPInstanceUID == self.refuse:
            raise MedsightError("instance refused by the test store")
        path = self.root / f"{dataset.SOPInstanceUID}.dcm"
        partial = path.with_suffix(".partial")
        with open(partial, "wb") as f:
            dcmwrite(f, dataset, enforce_file_format=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
        folder = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
        self.calls.append((calling_ae, peer))
        return path
