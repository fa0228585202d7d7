"""De-identification speed: medsight (2 workers) vs dicognito vs a plain pydicom read-and-write loop.

All three run in this one process's run, on the same >= 1000 copies of the brain MR files (each copy given
fresh UIDs first, since dicognito names its outputs by UID), so the machine's noise hits all alike.

    python benchmarks/deid.py [--copies 12] [--workers 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from medsight.config import data_root
from medsight.privacy.run import deidentify


def make_copies(src: Path, dst: Path, copies: int) -> int:
    """``copies`` copies of every file, each copy a new study with new series and instance UIDs."""
    files = sorted(src.rglob("*.dcm"))
    n = 0
    for c in range(copies):
        study = generate_uid()
        series: dict[str, str] = {}
        for f in files:
            ds = pydicom.dcmread(f)
            ds.StudyInstanceUID = study
            ds.SeriesInstanceUID = series.setdefault(str(ds.SeriesInstanceUID), generate_uid())
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(dst / f"c{c:02d}_{n:05d}.dcm")
            n += 1
    return n


def plain_loop(src: Path, dst: Path) -> None:
    """The floor: read every file and write it back, nothing else (one process)."""
    for f in sorted(src.iterdir()):
        pydicom.dcmread(f).save_as(dst / f.name)


def timed(label: str, n: int, fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    rate = n / (time.perf_counter() - start)
    print(f"{label:<34} {rate:8.1f} files/s", flush=True)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=data_root() / "udacity_brain_mr_dicom")
    parser.add_argument("--copies", type=int, default=12, help="copies of the 88 files (12 -> 1056)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="deid-bench-") as tmp:
        root = Path(tmp)
        src = root / "in"
        src.mkdir()
        n = make_copies(args.source, src, args.copies)
        print(f"{n} files ({args.copies} copies of {args.source.name}, fresh UIDs)")
        for d in ("plain", "dicognito", "medsight"):
            (root / d).mkdir()
        plain = timed("plain pydicom read+write (1 proc)", n, lambda: plain_loop(src, root / "plain"))
        cog = timed("dicognito 0.19 (1 proc)", n, lambda: subprocess.run(
            [sys.executable, "-m", "dicognito", "--quiet", "-o", str(root / "dicognito"), str(src)],
            check=True))
        result: list[object] = []
        med = timed(f"medsight deid ({args.workers} workers)", n, lambda: result.append(deidentify(
            src, root / "medsight" / "out", key=bytes(32), workers=args.workers, audit_log=None,
            progress=False)))
        written = sum(1 for _ in (root / "medsight" / "out").rglob("*.dcm"))
        print(f"medsight wrote {written} files; {'all' if written == n else 'NOT all'} of them")
        print(f"medsight / dicognito = {med / cog:.2f}x; medsight / plain loop = {med / plain:.2f}x")


if __name__ == "__main__":
    main()
