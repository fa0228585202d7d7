"""Argument types the commands share: a number outside the range a flag can use is refused by argparse, which names
the flag (``argument --bootstrap: must be at least 10 (got 0)``), before anything runs or is written."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from medsight.errors import MedsightError
from medsight.io.atomic import check_replaceable_folder

#: Fewer resamples than this give a percentile CI that means nothing.
MIN_BOOTSTRAP = 10


def whole(minimum: int) -> Callable[[str], int]:
    """A whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum} (got {value})")
        return value

    return parse


def seconds_or_more(text: str) -> float:
    """A finite number of at least 0."""
    value = _number(text)
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be at least 0 (got {value})")
    return value


def positive(text: str) -> float:
    """A finite number above 0."""
    value = _number(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be positive (got {value})")
    return value


def between(low: float, high: float) -> Callable[[str], float]:
    """A number from ``low`` to ``high``, both included."""

    def parse(text: str) -> float:
        value = _number(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:g} to {high:g} (got {value:g})")
        return value

    return parse


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def output_folder(*written: str) -> Callable[[str], Path]:
    """A folder the command writes (replaced atomically), whose kind always holds one of ``written`` at its top
    level. A file already there, or a folder that is not empty and holds none of them (not an earlier output of this
    command: replacing it would delete a user's files), is refused before anything runs."""

    def parse(text: str) -> Path:
        path = Path(text)
        try:
            check_replaceable_folder(path, written)
        except MedsightError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return path

    return parse


def refuse_inputs_inside(out: Path, *inputs: str | Path | None) -> None:
    """The output folder may not be, or hold, an input (``medsight predict B scans/x.dcm --out scans`` would delete
    the scans). Inputs that are not paths (``medmnist:...``) or not given (``None``) are skipped."""
    from medsight.io.atomic import refuse_inputs_inside as refuse

    refuse(out, [p for p in inputs if p is not None and not (isinstance(p, str) and ":" in p and not Path(p).exists())])
