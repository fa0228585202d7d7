"""Atomic writes: a reader never sees a half-written file, and a failure leaves the old file intact."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medsight.errors import MedsightError


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(target: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    return write_bytes(target, text.encode("utf-8"))


def write_json(target: str | Path, obj: Any, compact: bool = False) -> Path:
    """Write ``obj`` as indented JSON to ``target`` atomically.

    ``compact``: one line, no indentation, for files that programs read back (ledgers, marks); it uses the C
    encoder, several times faster than the indenting pure-Python one on large records.
    """
    if compact:
        return write_text(target, json.dumps(obj, separators=(",", ":"), default=json_default) + "\n")
    return write_text(target, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for NumPy values, paths and objects with ``to_json``."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    to_json = getattr(obj, "to_json", None)  # typed plans and results
    if callable(to_json):
        return to_json()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def check_replaceable_folder(target: Path, written: tuple[str, ...] = ()) -> None:
    """:func:`atomic_dir` replaces a folder, never a file: one already at ``target`` is refused by name.

    ``written``: the files this kind of output always holds at its top level (``bundle.json``, ``predictions.json``
    ...). When given, an existing folder that is not empty and holds none of them is refused too: it is not an
    earlier output of this kind (a user's own folder, a bundle given to predict, the folder of the inputs), and
    replacing it would delete what is in it."""
    if target.exists() and not target.is_dir():
        raise MedsightError("exists and is not a folder (the output replaces a folder, not a file)", target)
    foreign = written and target.is_dir() and not any((target / name).exists() for name in written)
    if foreign and any(target.iterdir()):
        raise MedsightError(
            f"is a folder that is not empty and holds no {' or '.join(written)}, so it is not an earlier output "
            "of this command; it would be replaced with everything in it. Give a new or empty folder, or remove "
            "this one first",
            target,
        )


def refuse_inputs_inside(target: Path, inputs: Iterable[str | Path]) -> None:
    """Refuse an output folder that is, or holds, one of the command's inputs (data, images, bundles): replacing it
    would delete them. The input is not named (a path may hold a patient's name); the output folder is."""
    out = Path(target).resolve()
    for given in inputs:
        path = Path(given).resolve()
        if path == out or out in path.parents:
            raise MedsightError(
                "holds an input of this command (an image, data or bundle it reads), and the output replaces the "
                "whole folder; give another output folder",
                target,
            )


@contextmanager
def atomic_dir(target: str | Path, overwrite: bool = True, written: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; it replaces ``target`` only if the block succeeds.

    An existing ``target`` survives untouched when the block fails, and when the process is stopped between the two
    renames that swap the folders (the earlier output, set aside as ``.NAME.old``, is put back then, or by the next
    run if the process was killed outright). ``written``: see :func:`check_replaceable_folder`.
    """
    target = Path(target).resolve()  # "." or "out/..": the temporary folder is named after the real one
    old = target.with_name(f".{target.name}.old")
    _put_back(old, target)  # a run killed between the renames left the earlier output aside: it comes back first
    check_replaceable_folder(target, written)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if target.exists():
            if not overwrite:
                raise FileExistsError(str(target))
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        _put_back(old, target)  # stopped (Ctrl-C, SIGTERM) between the two renames


def _put_back(old: Path, target: Path) -> None:
    """``old`` (an earlier output set aside) back at ``target`` when nothing stands there."""
    if old.is_dir() and not old.is_symlink() and not target.exists() and not target.is_symlink():
        os.replace(old, target)


def remove_leftovers(folder: Path) -> int:
    """Remove what :func:`atomic_dir` and the atomic file writers leave in ``folder`` when their process is killed
    mid-write (``.<name>.<random>.tmp`` and ``.<name>.old``); call it only when no writer is active there. Returns
    how many were removed."""
    removed = 0
    if not folder.is_dir():
        return 0
    for entry in folder.iterdir():
        if entry.name.startswith(".") and entry.name.endswith((".tmp", ".old")):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
    return removed


def _umask() -> int:
    """The process umask (read by setting and restoring it), so outputs get the user's usual permissions."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
