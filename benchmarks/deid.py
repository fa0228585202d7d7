"""De-identification speed: medsight (1 worker and 2 workers) vs dicognito vs a plain pydicom read-and-write
loop, and the recall of the OCR text detection on text burned into the shared samples.

dicognito and the plain loop run in one process, so the clean per-core comparison is medsight with 1 worker
(a single process, no pool); the 2-worker run gives the overall speed and its per-core rate (files/s per
worker). Every run also records the CPU seconds it used (all its processes), so files per CPU second compares
the tools per core independently of how well this virtual machine runs two processes at once (measured too:
``machine_two_process_scaling``, two pure-Python jobs in two processes vs one after the other).
All four speed runs happen in this one run, on the same >= 1000 copies of the brain MR files (each copy
given fresh UIDs first, since dicognito names its outputs by UID), so the machine's noise hits all alike.
Figures, command, commit, date and the machine's load go to benchmarks/results/deid.json.

    python benchmarks/deid.py [--copies 12] [--workers 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from medsight.config import data_root
from medsight.io.atomic import write_json
from medsight.privacy import ocr
from medsight.privacy.run import deidentify

RESULTS = Path(__file__).resolve().parent / "results" / "deid.json"
#: Every single-frame image sample of the shared set (first frame of the others), for OCR recall.
OCR_SAMPLES = (
    "pydicom_test_files/CT_small.dcm", "pydicom_test_files/MR_small.dcm", "pydicom_data/693_UNCR.dcm",
    "pydicom_data/MR2_J2KR.dcm", "pydicom_data/RG3_J2KR.dcm", "pydicom_data/US1_J2KR.dcm",
    "pydicom_data/emri_small.dcm", "pydicom_test_files/examples_overlay.dcm", "pydicom_data/explicit_VR-UN.dcm",
)


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


#: CPU seconds of each timed run (this process and the children it waited for: pool workers, dicognito)
CPU_SECONDS: dict[str, float] = {}


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(label: str, n: int, fn: object) -> float:
    """Files per wall-clock second; the CPU seconds spent (all processes) go to CPU_SECONDS[label]."""
    cpu, start = _cpu(), time.perf_counter()
    fn()  # type: ignore[operator]
    rate = n / (time.perf_counter() - start)
    CPU_SECONDS[label] = _cpu() - cpu
    print(f"{label:<34} {rate:8.1f} files/s  {n / CPU_SECONDS[label]:8.1f} files per CPU second", flush=True)
    return rate


def _spin(_: int) -> float:
    start, x = time.perf_counter(), 0
    for i in range(4_000_000):
        x += i * i
    return time.perf_counter() - start


def two_process_scaling() -> float:
    """How much faster two processes finish two equal pure-Python jobs than one process does one after the other
    (2.0 = two real cores): the ceiling for any 2-worker speed-up on this machine at this moment."""
    import multiprocessing

    one = _spin(0) + _spin(1)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        start = time.perf_counter()
        pool.map(_spin, [0, 1])
        two = time.perf_counter() - start
    return one / two


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=data_root() / "udacity_brain_mr_dicom")
    parser.add_argument("--copies", type=int, default=12, help="copies of the 88 files (12 -> 1056)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="deid-bench-") as tmp:
        root = Path(tmp)
        src = root / "in"
        src.mkdir()
        n = make_copies(args.source, src, args.copies)
        print(f"{n} files ({args.copies} copies of {args.source.name}, fresh UIDs)")
        for d in ("plain", "dicognito", "medsight1", "medsight"):
            (root / d).mkdir()
        plain = timed("plain pydicom read+write (1 proc)", n, lambda: plain_loop(src, root / "plain"))
        cog = timed("dicognito 0.19 (1 proc)", n, lambda: subprocess.run(
            [sys.executable, "-m", "dicognito", "--quiet", "-o", str(root / "dicognito"), str(src)],
            check=True))
        med1 = timed("medsight deid (1 worker)", n, lambda: deidentify(
            src, root / "medsight1" / "out", key=bytes(32), workers=1, audit_log=None, progress=False))
        written1 = sum(1 for _ in (root / "medsight1" / "out").rglob("*.dcm"))
        med = timed(f"medsight deid ({args.workers} workers)", n, lambda: deidentify(
            src, root / "medsight" / "out", key=bytes(32), workers=args.workers, audit_log=None,
            progress=False))
        written = sum(1 for _ in (root / "medsight" / "out").rglob("*.dcm"))
        print(f"medsight wrote {written1} files (1 worker), {written} ({args.workers} workers); "
              f"{'all' if written == written1 == n else 'NOT all'} of them")
        single = med1 / cog
        per_core = med / args.workers / cog
        cpu_rate = {k: n / v for k, v in CPU_SECONDS.items()}
        cog_cpu = cpu_rate["dicognito 0.19 (1 proc)"]
        cpu_ratio = {"medsight_1_worker": cpu_rate["medsight deid (1 worker)"] / cog_cpu,
                     f"medsight_{args.workers}_workers": cpu_rate[f"medsight deid ({args.workers} workers)"] / cog_cpu}
        scaling = two_process_scaling()
        print(f"per CPU second: medsight 1 worker {cpu_ratio['medsight_1_worker']:.2f}x dicognito, "
              f"{args.workers} workers {cpu_ratio[f'medsight_{args.workers}_workers']:.2f}x; "
              f"this machine runs 2 processes {scaling:.2f}x as fast as 1")
        print(f"per core, 1 worker: medsight {med1:.1f} files/s = {single:.2f}x dicognito "
              f"({med1 / plain:.2f}x the plain loop)")
        print(f"per core, {args.workers} workers: medsight {med / args.workers:.1f} files/s per worker = "
              f"{per_core:.2f}x dicognito")
        print(f"overall, {args.workers} workers: medsight {med:.1f} files/s = {med / cog:.2f}x dicognito "
              f"({med / plain:.2f}x the plain loop)")
    ocr_result: dict[str, object] = {}
    if ocr.available():
        start = time.perf_counter()
        frames = []
        for name in OCR_SAMPLES:
            arr = pydicom.dcmread(data_root() / "dicom_samples" / name).pixel_array
            frames.append(arr[0] if int(pydicom.dcmread(data_root() / "dicom_samples" / name,
                                                         stop_before_pixels=True).get("NumberOfFrames", 1) or 1) > 1
                          else arr)
        per_sample = {name: ocr.measure([f]) for name, f in zip(OCR_SAMPLES, frames, strict=True)}
        total = ocr.measure(frames)
        seconds = time.perf_counter() - start
        ocr_result = {"overall": total, "per_sample": per_sample,
                      "seconds_per_frame": round(seconds / (2 * len(frames)), 2)}
        print(f"OCR recall on burned-in text: {total['recall']} of texts, {total['ink_covered']} of ink "
              f"({total['texts_burned']} texts in {len(frames)} samples)")
    load_after = os.getloadavg()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip()
    write_json(RESULTS, {
        "command": "python benchmarks/deid.py " + " ".join(sys.argv[1:]),
        "commit": commit,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average_1_5_15": {"before": [round(x, 2) for x in load_before],
                                "after": [round(x, 2) for x in load_after]},
        "files": n,
        "files_per_second": {"plain_pydicom_1_process": round(plain, 1), "dicognito_0_19_1_process": round(cog, 1),
                             "medsight_1_worker": round(med1, 1),
                             f"medsight_{args.workers}_workers": round(med, 1)},
        "files_per_cpu_second": {k: round(v, 1) for k, v in cpu_rate.items()},
        "per_cpu_second_over_dicognito": {k: round(v, 2) for k, v in cpu_ratio.items()},
        "machine_two_process_scaling": round(scaling, 2),
        "medsight_1_worker_over_dicognito": round(single, 2),
        f"medsight_{args.workers}_workers_per_core_over_dicognito": round(per_core, 2),
        f"medsight_{args.workers}_workers_over_dicognito": round(med / cog, 2),
        "medsight_1_worker_over_plain_loop": round(med1 / plain, 2),
        f"medsight_{args.workers}_workers_over_plain_loop": round(med / plain, 2),
        "medsight_wrote_all": written == written1 == n,
        "ocr_text_detection": ocr_result,
    })
    print(f"figures written to {RESULTS}")


if __name__ == "__main__":
    main()
