"""File checksums and data fingerprints: a bundle records exactly which bytes it was trained on."""

from __future__ import annotations

import hashlib
from pathlib import Path


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    """MD5 of a file, read in chunks (MedMNIST publishes MD5s)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
