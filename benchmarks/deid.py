"""De-identification speed: medsight (1 worker and 2 workers) vs dicognito vs a plain pydicom read-and-write
loop, and the recall of the OCR text detection on text burned into the shared samples.

The clean per-core comparison is command against command: ``python -m dicognito`` and ``python -m medsight
deid --workers 1``, each a fresh single process (start-up and imports included). medsight is also timed as a
library call in this process (1 worker, and N workers for the overall speed and its per-worker rate), beside
a plain pydicom read+write loop. Every run records the CPU seconds it used (all its processes), so files per
CPU second compare the tools per core independently of how well this virtual machine runs two processes at
once (measured too: ``machine_two_process_scaling``). This machine's speed drifts by up to 2x within minutes,
so every tool runs once per round, one after the other, for several rounds on the same >= 1000 copies of the
brain MR files (fresh UIDs, since dicognito names its outputs by UID); each ratio is taken within a round and
the median over rounds is reported with its range. Figures, command, commit, date and the machine's load go to
benchmarks/results/deid.json.

    python benchmarks/deid.py [--copies 12] [--workers 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=data_root() / "udacity_brain_mr_dicom")
    parser.add_argument("--copies", type=int, default=12, help="copies of the 88 files (12 -> 1056)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every tool, one after the other")
    args = parser.parse_args()
    load_before = os.getloadavg()
    rounds: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="deid-bench-") as tmp:
        root = Path(tmp)
        src = root / "in"
        src.mkdir()
        n = make_copies(args.source, src, args.copies)
        key_file = root / "key"
        key_file.write_text(bytes(32).hex())
        print(f"{n} files ({args.copies} copies of {args.source.name}, fresh UIDs), {args.rounds} rounds")
        wrote_all = True
        for r in range(args.rounds):
            out = root / f"round{r}"
            for d in ("plain", "dicognito", "cli", "lib1", "lib"):
                (out / d).mkdir(parents=True)
            runs = {
                "plain pydicom read+write (1 process)": lambda o=out: plain_loop(src, o / "plain"),
                "dicognito 0.19 (command, 1 process)": lambda o=out: subprocess.run(
                    [sys.executable, "-m", "dicognito", "--quiet", "-o", str(o / "dicognito"), str(src)],
                    check=True),
                "medsight deid (command, 1 worker)": lambda o=out: subprocess.run(
                    [sys.executable, "-m", "medsight", "-q", "deid", str(src), str(o / "cli" / "out"),
                     "--workers", "1", "--key-file", str(key_file), "--audit-log", str(o / "audit.log"),
                     "--no-progress"], check=True),
                "medsight deid (library, 1 worker)": lambda o=out: deidentify(
                    src, o / "lib1" / "out", key=bytes(32), workers=1, audit_log=None, progress=False),
                f"medsight deid (library, {args.workers} workers)": lambda o=out: deidentify(
                    src, o / "lib" / "out", key=bytes(32), workers=args.workers, audit_log=None,
                    progress=False),
            }
            print(f"round {r + 1}")
            this: dict[str, dict[str, float]] = {}
            for label, fn in runs.items():
                wall = timed(label, n, fn)
                this[label] = {"files_per_second": wall, "files_per_cpu_second": n / CPU_SECONDS[label]}
            rounds.append(this)
            for d in ("cli", "lib1", "lib"):
                wrote_all &= sum(1 for _ in (out / d / "out").rglob("*.dcm")) == n
            shutil.rmtree(out)
        scaling = two_process_scaling()
    cog = "dicognito 0.19 (command, 1 process)"
    labels = list(rounds[0])
    medsight = [k for k in labels if k.startswith("medsight")]

    def ratios(label: str, measure: str, per_worker: int = 1) -> list[float]:
        return [rd[label][measure] / per_worker / rd[cog][measure] for rd in rounds]

    summary: dict[str, Any] = {}
    for label in medsight:
        workers = args.workers if label.endswith(f"{args.workers} workers)") else 1
        cpu, per_core = ratios(label, "files_per_cpu_second"), ratios(label, "files_per_second", workers)
        summary[label] = {
            "per_cpu_second_over_dicognito": {"median": round(_median(cpu), 2), "min": round(min(cpu), 2),
                                              "max": round(max(cpu), 2), "rounds": [round(x, 2) for x in cpu]},
            "per_core_wall_over_dicognito": {"median": round(_median(per_core), 2),
                                             "min": round(min(per_core), 2), "max": round(max(per_core), 2)},
        }
        if workers > 1:
            overall = ratios(label, "files_per_second")
            summary[label]["overall_wall_over_dicognito"] = {
                "median": round(_median(overall), 2), "min": round(min(overall), 2), "max": round(max(overall), 2)}
        print(f"{label}: per CPU second {summary[label]['per_cpu_second_over_dicognito']['median']:.2f}x "
              f"dicognito (rounds {min(cpu):.2f}-{max(cpu):.2f})")
    print(f"this machine ran 2 processes {scaling:.2f}x as fast as 1")
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
        "rounds": args.rounds,
        "workers": args.workers,
        "median_files_per_second": {k: round(_median([rd[k]["files_per_second"] for rd in rounds]), 1)
                                    for k in labels},
        "median_files_per_cpu_second": {k: round(_median([rd[k]["files_per_cpu_second"] for rd in rounds]), 1)
                                        for k in labels},
        "over_dicognito": summary,
        "per_round": [{k: {m: round(v, 1) for m, v in rd[k].items()} for k in labels} for rd in rounds],
        "machine_two_process_scaling": round(scaling, 2),
        "medsight_wrote_all": wrote_all,
        "ocr_text_detection": ocr_result,
    })
    print(f"figures written to {RESULTS}")


if __name__ == "__main__":
    main()
