"""Shared test fixtures. Tests that need the shared data fail (never skip) under CI when it is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medsight.config import data_root
from needs import unavailable
from tiny_bundle import train_tiny_bundle


def _shared_data_root() -> Path | None:
    candidates = [os.environ.get("MEDSIGHT_DATA"), str(Path(__file__).resolve().parents[2] / "shared" / "data")]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real data root. Missing data is a failure under CI and a loud skip elsewhere."""
    root = _shared_data_root()
    if root is None:
        unavailable(f"shared data not found (set MEDSIGHT_DATA; looked at {data_root()} and ../shared/data)")
    os.environ.setdefault("MEDSIGHT_DATA", str(root))
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep downloads and caches out of the user's home during tests."""
    monkeypatch.setenv("MEDSIGHT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("MEDSIGHT_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classification bundle from one epoch on 32 noise images with a bright square in half of them (seconds); its
    manifest is ``tiny_bundle.parent / "manifest.csv"``."""
    return train_tiny_bundle(tmp_path_factory.mktemp("tiny_set"))
