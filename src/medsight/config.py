"""Settings read once from the environment: where data live, which device to use."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

DATA_ENV = "MEDSIGHT_DATA"
CACHE_ENV = "MEDSIGHT_CACHE"
THREADS_ENV = "MEDSIGHT_THREADS"


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
    """``cuda`` when a GPU is present (and not disabled with ``MEDSIGHT_DEVICE=cpu``), else ``cpu``.

    Asking for CUDA (``MEDSIGHT_DEVICE=cuda`` or ``cuda:N``) where there is none is an error that says so, not a
    crash deep inside PyTorch at the first tensor moved.
    """
    import torch

    from medsight.errors import MedsightError

    forced = os.environ.get("MEDSIGHT_DEVICE", "").strip().lower()
    if not forced:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if forced == "cpu":
        return "cpu"
    if forced == "cuda" or (forced.startswith("cuda:") and forced[5:].isdigit()):
        if not torch.cuda.is_available():
            raise MedsightError(f"MEDSIGHT_DEVICE={forced} but this machine has no CUDA GPU (unset it to use the CPU)")
        if ":" in forced and int(forced[5:]) >= torch.cuda.device_count():
            raise MedsightError(f"MEDSIGHT_DEVICE={forced} but there are {torch.cuda.device_count()} CUDA GPU(s)")
        return forced
    raise MedsightError(f"MEDSIGHT_DEVICE must be cpu, cuda or cuda:N (got {forced!r})")


def num_threads() -> int:
    """Threads for CPU work: ``$MEDSIGHT_THREADS`` or every core.

    A value that is not a whole number from 1 to the number of cores is an error naming the setting: torch refuses 0
    with a traceback deep in a run, and 1000 threads on a few cores run many times slower than one per core.
    """
    from medsight.errors import MedsightError

    cores = os.cpu_count() or 1
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return cores
    try:
        threads = int(value)
    except ValueError:
        raise MedsightError(f"{THREADS_ENV} must be a whole number of threads (got {value!r})") from None
    if not 1 <= threads <= cores:
        raise MedsightError(f"{THREADS_ENV} must be from 1 to {cores}, the cores of this machine (got {threads})")
    return threads


def setting_warnings() -> list[str]:
    """What is wrong with the settings without being an error yet: a ``$MEDSIGHT_DATA`` that is not a folder only
    matters to the commands that look for data sets there, but then the files look missing rather than misplaced."""
    value = os.environ.get(DATA_ENV)
    if value and not Path(value).expanduser().is_dir():
        return [f"{DATA_ENV}={value} is not a folder: data sets are looked for in the cache only ({cache_root()})"]
    return []
