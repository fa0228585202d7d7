"""Settings read once from the environment: where data live, which device to use."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

DATA_ENV = "MEDSIGHT_DATA"
CACHE_ENV = "MEDSIGHT_CACHE"


def data_root() -> Path:
    """The data root: ``$MEDSIGHT_DATA``, else ``~/.medsight/data`` (where downloads land)."""
    value = os.environ.get(DATA_ENV)
    return Path(value).expanduser() if value else Path.home() / ".medsight" / "data"


def cache_root() -> Path:
    """Writable cache for downloads and derived files: ``$MEDSIGHT_CACHE``, else ``~/.medsight/cache``."""
    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser() if value else Path.home() / ".medsight" / "cache"


@lru_cache(maxsize=1)
def device() -> str:
    """``cuda`` when a GPU is present (and not disabled with ``MEDSIGHT_DEVICE=cpu``), else ``cpu``."""
    forced = os.environ.get("MEDSIGHT_DEVICE")
    if forced:
        return forced
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def num_threads() -> int:
    """Threads for CPU work: ``$MEDSIGHT_THREADS`` or every core."""
    return int(os.environ.get("MEDSIGHT_THREADS", str(os.cpu_count() or 1)))
