"""De-identify a folder: walk it, work in parallel over files, write atomically, report and audit.

Outputs are named by their new UIDs (``OUT/<study>/<series>/<instance>.dcm``) because input paths often
carry names or IDs. The input tree is only ever read.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import multiprocessing
import os
import struct
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from tqdm import tqdm

from medsight.errors import MedsightError
from medsight.io.atomic import atomic_path, write_text
from medsight.privacy import pixels
from medsight.privacy.engine import Deidentifier
from medsight.privacy.profile import CLEAN_PIXEL_CODE, iod_types
from medsight.privacy.pseudonyms import key_id
from medsight.privacy.report import FileResult, RunReport, append_audit, write_reports

DEFAULT_AUDIT_LOG = Path.home() / ".medsight" / "deid_audit.log"
CHUNK = 24


@dataclass(frozen=True)
class Job:
    """Everything a worker needs (picklable)."""

    key: bytes
    options: frozenset[str]
    out_dir: Path
    clean_pixels: bool = False


@dataclass
class RunResult:
    """What the caller prints: the report and where things went."""

    report: RunReport
    report_paths: tuple[Path, ...] = ()
    reid_table: Path | None = None
    results: list[FileResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every input file was written."""
        return not self.report.rejected


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_paths(in_path: Path, out_dir: Path, reid_table: Path | None = None, key_file: Path | None = None) -> None:
    """Refuse layouts that could write into the input or put secrets beside the output."""
    if not in_path.exists():
        raise MedsightError("input not found", in_path)
    src, dst = in_path.resolve(), out_dir.resolve()
    root = src if src.is_dir() else src.parent
    if _inside(dst, root):
        raise MedsightError("the output folder must be outside the input folder", out_dir)
    if src.is_dir() and _inside(src, dst):
        raise MedsightError("the input folder must not be inside the output folder", in_path)
    for secret, what in ((reid_table, "re-identification table"), (key_file, "key file")):
        if secret is None:
            continue
        s = secret.resolve()
        if _inside(s, dst) or _inside(s, root):
            raise MedsightError(f"the {what} must be kept apart from the input and the output", secret)


def iter_files(in_path: Path) -> Iterator[tuple[Path, str]]:
    """Every regular file under ``in_path`` (sorted, hidden files skipped), with its relative name."""
    if in_path.is_file():
        yield in_path, in_path.name
        return
    for root, dirs, files in os.walk(in_path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                path = Path(root) / name
                yield path, path.relative_to(in_path).as_posix()


# --- one file --------------------------------------------------------------------------------------

_DEID: Deidentifier | None = None
_JOB: Job | None = None


def _init(job: Job) -> None:
    global _DEID, _JOB
    _JOB, _DEID = job, Deidentifier(job.key, job.options)


def _read(path: Path) -> Dataset:
    try:
        return dcmread(path)
    except InvalidDicomError:
        ds = dcmread(path, force=True)  # a dataset without the preamble and file meta is still DICOM
        if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
            raise InvalidDicomError("not DICOM") from None
        return ds


def _encapsulated_complete(value: bytes) -> bool:
    """True when the encapsulated items add up to the whole value (a truncated file does not)."""
    pos, n = 0, len(value)
    while pos + 8 <= n:
        group, elem, length = struct.unpack_from("<HHI", value, pos)
        pos += 8
        if (group, elem) == (0xFFFE, 0xE0DD):
            return True
        if (group, elem) != (0xFFFE, 0xE000) or pos + length > n:
            return False
        pos += length
    return pos == n and n > 0


def problem(ds: Dataset) -> str | None:
    """Why this dataset cannot be de-identified and written, or None."""
    if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
        return "no SOP Class or SOP Instance UID"
    iod = iod_types()["sop_class_iod"].get(str(ds.SOPClassUID))
    raw = ds.get_item(0x7FE00010)
    if raw is None:
        if iod in iod_types()["pixel_iods"]:
            return "no pixel data in an image object"
        return None
    value = raw.value or b""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and ts.is_encapsulated:
        return None if _encapsulated_complete(value) else "pixel data truncated"
    try:
        bits = int(ds.BitsAllocated)
        count = (
            int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.get("NumberOfFrames", 1) or 1)
        )
    except (AttributeError, TypeError, ValueError):
        return "pixel description incomplete"
    expected = (count + 7) // 8 if bits == 1 else count * ((bits + 7) // 8)
    return "pixel data truncated" if len(value) < expected else None


def _ensure_file_meta(ds: Dataset) -> None:
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit = ds.original_encoding[0] if ds.original_encoding[0] is not None else True
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def process_file(path: Path, rel: str, job: Job, deid: Deidentifier) -> FileResult:
    """Read, check, de-identify, clean pixels if asked, and write one file; never raises for bad input."""
    result = FileResult(input=rel)
    try:
        ds = _read(path)
    except InvalidDicomError:
        result.error = "not a DICOM file"
        return result
    except Exception as exc:  # pydicom raises many kinds for damaged files; the class name holds no PHI
        result.error = f"unreadable DICOM ({type(exc).__name__})"
        return result
    try:
        why = problem(ds)
        if why is not None:
            result.error = why
            return result
        result.modality = str(ds.get("Modality", "") or "")
        result.flags = pixels.burned_in_reasons(ds)
        rule = pixels.find_rule(ds) if (job.clean_pixels and result.flags) else None
        outcome = deid.apply(ds)
        if rule is not None:
            pixels.clean(ds, rule)
            deid.add_method_code(ds, CLEAN_PIXEL_CODE)
            result.cleaned_by = rule.name
        result.actions = {f"{row}|{code}": n for (row, code), n in outcome.actions.items()}
        result.review = sorted(set(outcome.review))
        result.reid = outcome.reid
        _ensure_file_meta(ds)
        parts = [
            str(ds.get("StudyInstanceUID", "") or "unknown-study"),
            str(ds.get("SeriesInstanceUID", "") or "unknown-series"),
            f"{ds.SOPInstanceUID}.dcm",
        ]
        target = job.out_dir.joinpath(*parts)
        with atomic_path(target) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        result.output = "/".join(parts)
    except Exception as exc:  # a damaged element found late: report the file, keep the run going
        result.error = f"cannot de-identify ({type(exc).__name__})"
        result.output = None
    return result


def _chunk_worker(items: list[tuple[Path, str]]) -> list[FileResult]:
    assert _JOB is not None and _DEID is not None
    return [process_file(p, r, _JOB, _DEID) for p, r in items]


def _chunks(items: list[tuple[Path, str]], size: int) -> Iterable[list[tuple[Path, str]]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# --- the run ---------------------------------------------------------------------------------------


def deidentify(
    in_path: str | Path,
    out_dir: str | Path,
    *,
    key: bytes,
    options: Iterable[str] = (),
    clean_pixels: bool = False,
    workers: int = 1,
    reid_table: str | Path | None = None,
    report_dir: str | Path | None = None,
    audit_log: str | Path | None = DEFAULT_AUDIT_LOG,
    progress: bool = True,
) -> RunResult:
    """De-identify every file under ``in_path`` into ``out_dir``; returns the report and paths."""
    in_path, out_dir = Path(in_path), Path(out_dir)
    reid_path = Path(reid_table) if reid_table is not None else None
    check_paths(in_path, out_dir, reid_path)
    opts = frozenset(options)
    Deidentifier(key, opts)  # validates the options before any work starts
    out_dir.mkdir(parents=True, exist_ok=True)
    job = Job(key=key, options=opts, out_dir=out_dir, clean_pixels=clean_pixels)
    files = list(iter_files(in_path))
    workers = max(1, min(workers, len(files) // CHUNK + 1))
    report = RunReport(
        options=sorted(opts),
        clean_pixels=clean_pixels,
        key_id=key_id(key),
        workers=workers,
        started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    start = time.perf_counter()
    results: list[FileResult] = []
    bar = tqdm(total=len(files), unit="file", desc="deid", disable=not progress, file=sys.stderr)
    if workers == 1:
        _init(job)
        assert _DEID is not None
        for path, rel in files:
            results.append(process_file(path, rel, job, _DEID))
            bar.update(1)
    else:
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init, initargs=(job,)) as pool:
            futures = [pool.submit(_chunk_worker, c) for c in _chunks(files, CHUNK)]
            for fut in as_completed(futures):
                chunk = fut.result()
                results.extend(chunk)
                bar.update(len(chunk))
    bar.close()
    results.sort(key=lambda r: r.input)
    report.seconds = round(time.perf_counter() - start, 3)
    report.add(results)
    paths = write_reports(report, Path(report_dir) if report_dir is not None else out_dir)
    if reid_path is not None:
        write_reid_table(reid_path, results)
    if audit_log is not None:
        append_audit(Path(audit_log), report)
    return RunResult(report=report, report_paths=paths, reid_table=reid_path, results=results)


def write_reid_table(path: Path, results: list[FileResult]) -> Path:
    """CSV of original → pseudonym (PHI!): written 0600, atomically, never beside the output."""
    rows: set[tuple[str, str, str]] = set()
    for r in results:
        for kind, (original, pseudonym) in r.reid.items():
            rows.add((kind, original, pseudonym))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["attribute", "original", "pseudonym"])
    writer.writerows(sorted(rows))
    write_text(path, buf.getvalue())
    os.chmod(path, 0o600)
    return path
