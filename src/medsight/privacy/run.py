"""De-identify a folder: walk it, work in parallel over files, write atomically, report and audit.

Outputs are named by their new UIDs (``OUT/<study>/<series>/<instance>.dcm``) because input paths often
carry names or IDs. The input tree is only ever read. Every input is accounted for: written, skipped (not
DICOM, a DICOMDIR, a link met twice), rejected (DICOM that cannot be de-identified), quarantined (text may
be burned into its pixels) or, after Ctrl-C, not processed. Workers write into a hidden staging folder in
OUT; the parent moves each file to its final name, so duplicates of one SOP Instance UID are named in
input order whatever the workers' timing.

A run resumes where a crashed or interrupted one stopped: the parent marks each finished file in the staging
folder (after its staged file is in place) and, once every output is placed, records them all in OUT's ledger;
a re-run skips every input marked or recorded and never writes an output twice. With ``address`` the files go
to workers on a Ray cluster (medsight.distributed.batch) instead of a local process pool.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import hmac
import io
import json
import multiprocessing
import os
import shutil
import signal
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian
from tqdm import tqdm

from medsight.errors import MedsightError
from medsight.io.atomic import write_json, write_text
from medsight.io.dicom import check_complete, is_dicom_file, is_dicomdir, open_dicom, peek
from medsight.io.dicom_write import ensure_file_meta, save
from medsight.privacy import ocr, pixels
from medsight.privacy.engine import Deidentifier
from medsight.privacy.profile import CLEAN_PIXEL_CODE, iod_types
from medsight.privacy.pseudonyms import key_id
from medsight.privacy.report import FileResult, RunReport, append_audit, write_reports

DEFAULT_AUDIT_LOG = Path.home() / ".medsight" / "deid_audit.log"
CHUNK = 24
WAIT_TICK_S = 0.2  # how long the main thread waits on the pool at a time: the longest a Ctrl-C can go unnoticed
#: Where each local worker says which file it is on (a file per worker process, named by its id).
INFLIGHT = "inflight"
STAGING = ".medsight-staging"
#: Every input finished by earlier runs into this OUT (keyed input hash -> result, no PHI): what a re-run skips.
LEDGER = ".medsight-ledger.json"
OCR_MODES = ("off", "flag", "mask")
DUPLICATE_MODES = ("keep", "first")


@dataclass(frozen=True)
class Job:
    """Everything a worker needs (picklable)."""

    key: bytes
    options: frozenset[str]
    out_dir: Path
    clean_pixels: bool = False
    accept_burned_in: bool = False
    ocr: str = "off"
    patient_key: str = "id+issuer"

    @property
    def staging(self) -> Path:
        """Where workers write; the parent moves each file to its final name."""
        return self.out_dir / STAGING


@dataclass
class RunResult:
    """What the caller prints: the report and where things went."""

    report: RunReport
    report_paths: tuple[Path, ...] = ()
    reid_table: Path | None = None
    results: list[FileResult] = field(default_factory=list)
    #: Inputs finished by an earlier (crashed, interrupted or complete) run into the same OUT, not redone.
    resumed: int = 0

    @property
    def ok(self) -> bool:
        """True when every DICOM input was written (nothing rejected, quarantined or left undone)."""
        c = self.report.counts
        return not (c["rejected"] or c["quarantined"] or c["not_processed"])


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_paths(
    in_path: Path,
    out_dir: Path,
    reid_table: Path | None = None,
    key_file: Path | None = None,
    report_dir: Path | None = None,
    audit_log: Path | None = None,
) -> None:
    """Refuse layouts that could write into the input or put secrets or paths beside the output."""
    if not in_path.exists():
        raise MedsightError("input not found", in_path)
    if out_dir.exists() and not out_dir.is_dir():
        raise MedsightError("the output must be a folder, and this is a file (not a folder)", out_dir)
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
    for place, what in ((report_dir, "report folder"), (audit_log, "audit log")):
        if place is not None and _inside(place.resolve(), root):
            raise MedsightError(f"the {what} must be outside the input folder", place)


def iter_inputs(in_path: Path) -> tuple[list[tuple[Path, str]], list[tuple[str, str]]]:
    """Every file under ``in_path`` (hidden ones included, linked folders followed once), sorted.

    Returns the files to read and the ones skipped before reading (broken links, a file reached twice
    through links), each with its path relative to ``in_path``.
    """
    if in_path.is_file():
        return [(in_path, in_path.name)], []
    files: list[tuple[Path, str]] = []
    skipped: list[tuple[str, str]] = []
    seen_dirs: set[str] = set()
    seen_files: dict[str, str] = {}
    for root, dirs, names in os.walk(in_path, followlinks=True):
        real = os.path.realpath(root)
        if real in seen_dirs:  # a link back to a folder already walked (a loop or a second link)
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            rel = path.relative_to(in_path).as_posix()
            if not path.exists():
                skipped.append((rel, "broken link"))
                continue
            target = os.path.realpath(path)
            if target in seen_files:
                skipped.append((rel, "the same file as another input (reached through a link)"))
                continue
            seen_files[target] = rel
            files.append((path, rel))
    return files, skipped


def check_holds_dicom(in_path: Path, files: list[Path], unread: int = 0) -> None:
    """Refuse input with no DICOM object to de-identify (an empty folder, only other files, only a DICOMDIR) before
    OUT is made: a run that writes nothing and exits 0 looks like success (``medsight info`` refuses it too).

    Stops at the first file that may be an object; one that claims to be DICOM but cannot be read counts, so the
    run reports it as rejected. ``unread``: files skipped before reading (broken links, links met twice).
    """
    dicomdirs = 0
    for path in files:
        if not is_dicom_file(path):
            continue
        try:
            ds = open_dicom(path, stop_before_pixels=True)
        except Exception:  # damaged: the run rejects it with its reason
            return
        if not is_dicomdir(ds):
            return
        dicomdirs += 1
    others = len(files) + unread - dicomdirs
    index = f", {dicomdirs} DICOMDIR: an index, never copied" if dicomdirs else ""
    raise MedsightError(f"no DICOM objects found ({others} other files{index}); nothing to de-identify", in_path)


# # --- one file --------------------------------------------------------------------------------------

_DEID: Deidentifier | None = None
_JOB: Job | None = None


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
    if 0x00080018 not in ds._dict or 0x00080016 not in ds._dict:  # SOP Instance, SOP Class UID
        return "no SOP Class or SOP Instance UID"
    iod = iod_types()["sop_class_iod"].get(str(peek(ds, 0x00080016)))
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
        bits = int(peek(ds, 0x00280100))  # Bits Allocated
        count = (
            int(peek(ds, 0x00280010))  # Rows
            * int(peek(ds, 0x00280011))  # Columns
            * int(peek(ds, 0x00280002, 1))  # Samples per Pixel
            * int(ds.get("NumberOfFrames", 1) or 1)
        )
    except (AttributeError, TypeError, ValueError):
        return "pixel description incomplete"
    expected = (count + 7) // 8 if bits == 1 else count * ((bits + 7) // 8)
    return "pixel data truncated" if len(value) < expected else None


def cut_short(ds: Dataset, path: Path) -> str | None:
    """Why the file ends before its last element does, or None: the reading code's check (``medsight info`` refuses
    the same files), since a cut non-image object (an RT Plan) has no pixel data for :func:`problem` to find short."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        check_complete(ds, path, deflated=ts == DeflatedExplicitVRLittleEndian)
    except MedsightError as exc:
        return exc.problem
    return None


def process_file(path: Path, rel: str, index: int, job: Job, deid: Deidentifier) -> FileResult:
    """Read, check, de-identify, clean pixels if asked, and write one file; never raises for bad input."""
    result = FileResult(input=rel, index=index)
    if not is_dicom_file(path):
        result.status, result.reason = "skipped", "not DICOM"
        return result
    try:
        ds = open_dicom(path)
    except Exception as exc:  # pydicom raises many kinds for damaged files; the class name holds no PHI
        result.status, result.reason = "rejected", f"unreadable DICOM ({type(exc).__name__})"
        return result
    try:
        if is_dicomdir(ds):
            result.status = "skipped"
            result.reason = "DICOMDIR (media directory): not copied, its records name original files and patients"
            return result
        why = problem(ds) or cut_short(ds, path)
        if why is not None:
            result.status, result.reason = "rejected", why
            return result
        result.modality = str(peek(ds, 0x00080060, "") or "")
        result.flags = pixels.burned_in_reasons(ds)
        rule = pixels.find_rule(ds) if (job.clean_pixels and result.flags) else None
        if rule is not None:
            pixels.clean(ds, rule)
            result.cleaned_by = rule.name
        text_found = False
        if job.ocr != "off" and "PixelData" in ds:
            found = ocr.detect(ds)
            if found.words:
                text_found = True
                result.flags.append(f"OCR read {found.words} words of text in the pixels")
                if job.ocr == "mask":
                    ocr.mask(ds, found.boxes)
                    result.masked_words = found.words
        at_risk = bool(result.flags) and (result.cleaned_by is None or text_found or pixels.has_faces(ds))
        if at_risk and not job.accept_burned_in:
            result.status, result.reason = "quarantined", "; ".join(result.flags)
            return result
        outcome = deid.apply(ds)
        if result.cleaned_by is not None or result.masked_words:
            deid.add_method_code(ds, CLEAN_PIXEL_CODE)
        result.actions = {f"{row}|{code}": n for (row, code), n in outcome.actions.items()}
        result.review = sorted(set(outcome.review))
        result.needs_review = at_risk or bool(result.review)
        result.reid = outcome.reid
        ensure_file_meta(ds)
        parts = [
            str(peek(ds, 0x0020000D, "") or "unknown-study"),
            str(peek(ds, 0x0020000E, "") or "unknown-series"),
            f"{peek(ds, 0x00080018)}.dcm",
        ]
        # atomic: written beside its staged name and renamed (the staging folder is ours alone, so no
        # random temporary name is needed; a partial file left by a stopped worker is removed with it)
        name = input_id(job.key, rel)  # the same name in a re-run, whatever else the input tree holds
        staged, part = job.staging / f"{name}.dcm", job.staging / f"{name}.part"
        job.staging.mkdir(parents=True, exist_ok=True)
        try:
            save(ds, part)
            os.replace(part, staged)
        finally:
            part.unlink(missing_ok=True)
        result.output = "/".join(parts)
        result.status = "written"
    except Exception as exc:  # a damaged element found late: report the file, keep the run going
        result.status, result.reason = "rejected", f"cannot de-identify ({type(exc).__name__})"
        result.output = None
    return result


def _init(job: Job) -> None:
    global _DEID, _JOB
    _JOB, _DEID = job, Deidentifier(job.key, job.options, patient_key=job.patient_key)


def _init_worker(job: Job) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool
    _init(job)
    (job.staging / INFLIGHT / str(os.getpid())).write_text("-1")  # alive, on no file yet (see _pool_results)


def _chunk_worker(items: list[tuple[Path, str, int]]) -> list[FileResult]:
    assert _JOB is not None and _DEID is not None
    marker = _JOB.staging / INFLIGHT / str(os.getpid())
    results = []
    for p, r, i in items:
        marker.write_text(str(i))  # which file this worker is on, should it die on it (see _pool_results)
        results.append(process_file(p, r, i, _JOB, _DEID))
    return results


def _pool_results(
    make_pool: Callable[[int], ProcessPoolExecutor],
    job: Job,
    chunks: Iterable[list[tuple[Path, str, int]]],
    workers: int,
) -> Iterator[list[FileResult]]:
    """Every chunk's results from a pool of ``workers`` processes (``make_pool(n)``), as they finish.

    Waited for in short ticks: Ctrl-C is raised only when the main thread runs Python code, and a wait with no timeout
    sleeps through a SIGINT the kernel hands to one of the pool's helper threads (it may pick any thread that does
    not block the signal); the run would hang until a result came, which a stuck worker never sends
    (tests/privacy/test_leaks.py sends it to the parent's other threads).

    A worker that dies (killed by the system for memory, a crash in a pixel decoder) breaks the pool. (With
    ``multiprocessing.Pool`` it took its chunk, and perhaps a lock of the pool's queues, with it: the run waited
    forever.) Each worker says which file it is on (a marker named by its process id); the files the workers were on
    are then tried again one at a time, each in a pool of its own: a file that breaks that pool too is reported as
    rejected, the others are done, and the remaining chunks go to a new pool. One file that kills its worker costs
    that file only; redoing a chunk is harmless, as each output is written under its own name and renamed."""
    inflight = job.staging / INFLIGHT
    source = iter(chunks)
    pending: dict[Future[list[FileResult]], list[tuple[Path, str, int]]] = {}
    retry: list[list[tuple[Path, str, int]]] = []

    def start(n: int) -> ProcessPoolExecutor:
        shutil.rmtree(inflight, ignore_errors=True)
        inflight.mkdir(parents=True)
        return make_pool(n)

    def submit() -> None:
        while len(pending) < 2 * workers:
            chunk = retry.pop() if retry else next(source, None)
            if chunk is None:
                return
            pending[pool.submit(_chunk_worker, chunk)] = chunk

    pool = start(workers)
    try:
        submit()
        while pending:
            done, _ = wait(list(pending), timeout=WAIT_TICK_S, return_when=FIRST_COMPLETED)
            broken = False
            for future in done:
                chunk = pending.pop(future)
                try:
                    results = future.result()
                except BrokenProcessPool:
                    broken = True
                    retry.append(chunk)
                    continue
                yield results
            if broken:
                suspects = _files_on(inflight)
                _stop(pool)
                retry = [chunk for chunk in [*retry, *pending.values()] if chunk]
                pending.clear()
                alone = [item for chunk in retry for item in chunk if item[2] in suspects]
                retry = [rest for chunk in retry if (rest := [i for i in chunk if i[2] not in suspects])]
                for item in alone:  # each file a worker was on, in a pool of its own: the one that kills it is known
                    pool = start(1)
                    try:
                        yield pool.submit(_chunk_worker, [item]).result()
                    except BrokenProcessPool:
                        yield [FileResult(input=item[1], index=item[2], status="rejected", reason=WORKER_DIED)]
                    finally:
                        _stop(pool)
                pool = start(workers)
            submit()
    finally:
        _stop(pool)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop the pool's workers now: every result is in (they are idle), Ctrl-C, or the pool broke. The executor
    has no public way to stop a busy worker before Python 3.14 (``terminate_workers``)."""
    for process in list(getattr(pool, "_processes", {}).values()):
        process.kill()
    pool.shutdown(wait=True, cancel_futures=True)


#: Why a file is rejected when the worker process de-identifying it died.
WORKER_DIED = (
    "the worker process de-identifying it died (killed by the system, e.g. for memory, or a crash reading its pixels)"
)


def _files_on(inflight: Path) -> set[int]:
    """The input indices the workers were on, from their markers (-1: on none yet)."""
    found: set[int] = set()
    for marker in inflight.iterdir():
        try:
            found.add(int(marker.read_text() or -1))
        except (OSError, ValueError):
            continue
    return found


def _ray_setup(job: Job) -> tuple[Job, Deidentifier]:
    return job, Deidentifier(job.key, job.options, patient_key=job.patient_key)


def _ray_work(state: tuple[Job, Deidentifier], items: list[tuple[Path, str, int]]) -> list[FileResult]:
    job, deid = state
    return [process_file(p, r, i, job, deid) for p, r, i in items]


def _chunks(items: list[tuple[Path, str, int]], size: int) -> Iterable[list[tuple[Path, str, int]]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# --- the run ---------------------------------------------------------------------------------------


def deidentify(
    in_path: str | Path,
    out_dir: str | Path,
    *,
    key: bytes | Callable[[], bytes],
    options: Iterable[str] = (),
    clean_pixels: bool = False,
    accept_burned_in: bool = False,
    ocr_mode: str = "off",
    on_duplicate: str = "keep",
    patient_key: str = "id+issuer",
    workers: int = 1,
    reid_table: str | Path | None = None,
    report_dir: str | Path | None = None,
    audit_log: str | Path | None = DEFAULT_AUDIT_LOG,
    progress: bool = True,
    address: str | None = None,
) -> RunResult:
    """De-identify every file under ``in_path`` into ``out_dir``; returns the report and paths.

    Ctrl-C stops the workers at once; what was done is moved into place and reported (``interrupted``). Inputs
    finished by an earlier run into ``out_dir`` are not redone. ``address``: run on the Ray cluster there
    (``workers`` actors) instead of local processes. ``key`` may be a function that loads (or creates) it: it is
    called once the run is known to have DICOM input, so a refused run creates no key file.
    """
    in_path, out_dir = Path(in_path), Path(out_dir)
    reid_path = Path(reid_table) if reid_table is not None else None
    report_path = Path(report_dir) if report_dir is not None else None
    audit_path = Path(audit_log) if audit_log is not None else None
    check_paths(in_path, out_dir, reid_path, report_dir=report_path, audit_log=audit_path)
    if ocr_mode not in OCR_MODES:
        raise MedsightError(f"text detection must be one of {', '.join(OCR_MODES)}")
    if on_duplicate not in DUPLICATE_MODES:
        raise MedsightError(f"duplicates: choose one of {', '.join(DUPLICATE_MODES)}")
    if ocr_mode != "off" and not ocr.available():
        raise MedsightError("text detection needs tesseract (apt-get install tesseract-ocr, or make tools)")
    opts = frozenset(options)
    # validates the options before any work starts (any key will do for that)
    Deidentifier(key if isinstance(key, bytes) else bytes(32), opts, patient_key=patient_key)
    found, pre_skipped = iter_inputs(in_path)
    check_holds_dicom(in_path, [path for path, _ in found], len(pre_skipped))
    if not isinstance(key, bytes):  # a run refused above leaves no new key file behind
        key = key()
    out_dir.mkdir(parents=True, exist_ok=True)
    job = Job(
        key=key,
        options=opts,
        out_dir=out_dir,
        clean_pixels=clean_pixels,
        accept_burned_in=accept_burned_in,
        ocr=ocr_mode,
        patient_key=patient_key,
    )
    ordered = sorted([(rel, path) for path, rel in found] + [(rel, None) for rel, _ in pre_skipped])
    index_of = {rel: i for i, (rel, _) in enumerate(ordered)}
    results: list[FileResult] = [
        FileResult(input=rel, index=index_of[rel], status="skipped", reason=why) for rel, why in pre_skipped
    ]
    settings = {
        "options": sorted(opts),
        "clean_pixels": clean_pixels,
        "accept_burned_in": accept_burned_in,
        "ocr": ocr_mode,
        "patient_key": patient_key,
        "on_duplicate": on_duplicate,
    }
    recorded, marked = _finished(out_dir, job.staging, settings)
    resumed: list[FileResult] = []
    placed: set[int] = set()  # outputs an earlier, complete run moved into place
    items = []
    for path, rel in found:
        name = input_id(key, rel)
        record = recorded.get(name, marked.get(name))
        if record is None:
            items.append((path, rel, index_of[rel]))
            continue
        resumed.append(FileResult(input=rel, index=index_of[rel], **record))
        if name in recorded:
            placed.add(index_of[rel])
    reid_partial = _reid_partial(reid_path)
    workers = max(1, min(workers, len(items) // CHUNK + 1)) if address is None else max(1, workers)
    report = RunReport(
        options=sorted(opts),
        clean_pixels=clean_pixels,
        key_id=key_id(key),
        workers=workers,
        started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        text_detection=ocr_mode,
        burned_in_risk_accepted=accept_burned_in,
        identity_rule=patient_key,
    )
    start = time.perf_counter()
    done: list[FileResult] = []
    bar = tqdm(total=len(items), unit="file", desc="deid", disable=not progress, file=sys.stderr)

    def finish(chunk: list[FileResult]) -> None:
        """Mark each file finished (its staged output is already in place), so a re-run skips it."""
        _mark(job.staging, key, chunk, reid_partial)
        done.extend(chunk)
        bar.update(len(chunk))

    try:
        if address is not None:
            from medsight.distributed.batch import stream

            size = max(1, min(CHUNK, len(items) // (workers * 4)))
            for chunk in stream(_ray_setup, job, _ray_work, _chunks(items, size), workers, address):
                finish(chunk)
        elif workers == 1:
            _init(job)
            assert _DEID is not None
            pending: list[FileResult] = []
            try:
                for path, rel, index in items:
                    pending.append(process_file(path, rel, index, job, _DEID))
                    if len(pending) == MARK_EVERY:
                        finish(pending)
                        pending = []
            finally:  # Ctrl-C included: what was finished counts
                finish(pending)
        else:
            ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
            size = max(1, min(CHUNK, len(items) // (workers * 4)))  # small runs: progress (and Ctrl-C) in steps

            def make_pool(n: int) -> ProcessPoolExecutor:
                return ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker, initargs=(job,))

            for chunk in _pool_results(make_pool, job, _chunks(items, size), workers):
                finish(chunk)  # Ctrl-C or a crash: the pool's workers are stopped at once as the loop ends
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        bar.close()
    results.extend(done)
    results.extend(resumed)
    finished = {r.index for r in done}
    results.extend(
        FileResult(input=rel, index=index, status="not processed", reason="the run was interrupted")
        for _, rel, index in items
        if index not in finished
    )
    results.sort(key=lambda r: r.index)
    report.duplicate_groups = _place_outputs(results, out_dir, job.staging, on_duplicate, key, placed)
    _write_ledger(out_dir, key, results, settings)
    shutil.rmtree(job.staging, ignore_errors=True)  # also what a stopped worker left half-written
    report.seconds = round(time.perf_counter() - start, 3)
    inside_out = report_path is None or _inside(report_path.resolve(), out_dir.resolve())
    report.add(results, input_id=lambda rel: input_id(key, rel), with_paths=not inside_out)
    paths = write_reports(report, report_path if report_path is not None else out_dir)
    if reid_path is not None:
        write_reid_table(reid_path, results, earlier=reid_partial)
    if audit_path is not None:
        append_audit(audit_path, report)
    return RunResult(report=report, report_paths=paths, reid_table=reid_path, results=results, resumed=len(resumed))


#: FileResult fields kept in the ledger and the staging marks: no input path, no re-identification pairs.
_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(FileResult) if f.name not in ("input", "index", "reid"))


def _record(r: FileResult) -> dict[str, Any]:
    return {name: getattr(r, name) for name in _RECORD_FIELDS}


def _finished(
    out_dir: Path, staging: Path, settings: dict[str, Any]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Results of earlier runs into ``out_dir`` by keyed input hash: the ledger of completed runs (outputs in
    place), and the marks of a run that stopped before it had placed them all (staged, or moved already).

    Only runs with the same ``settings`` count: another option set redoes every file (as a new run always did).
    """
    recorded: dict[str, dict[str, Any]] = {}
    marked: dict[str, dict[str, Any]] = {}
    ledger = out_dir / LEDGER
    if ledger.exists():
        try:
            earlier = json.loads(ledger.read_text())
        except (OSError, ValueError) as exc:
            raise MedsightError(
                f"the ledger of earlier runs is unreadable ({type(exc).__name__}); remove it to start over", ledger
            ) from exc
        if earlier.get("settings") == settings:
            recorded.update(earlier.get("files", {}))
    marks_settings = staging / "settings.json"
    if staging.is_dir() and (not marks_settings.exists() or json.loads(marks_settings.read_text()) != settings):
        shutil.rmtree(staging)  # another run's staging (or none of ours): start it afresh
    staging.mkdir(parents=True, exist_ok=True)
    write_json(marks_settings, settings)
    if staging.is_dir():
        for mark in staging.glob("*.json"):
            try:
                record = json.loads(mark.read_text())
            except (OSError, ValueError):
                continue  # a mark is written atomically: an unreadable one is not ours; redo that file
            if mark.name.startswith("chunk-") and isinstance(record, dict):
                marked.update(record)
    return recorded, marked


#: A single worker marks its finished files in groups of this many (a crash redoes at most this many files).
MARK_EVERY = 32


def _mark(staging: Path, key: bytes, chunk: list[FileResult], reid_partial: Path | None) -> None:
    """Record finished files: one mark per chunk in staging (``chunk-<first id>.json``: one atomic write for the
    chunk, not one per file, which cost a quarter of a single worker's time per file); their re-identification
    pairs in the 0600 partial table."""
    if not chunk:
        return
    staging.mkdir(parents=True, exist_ok=True)
    records = {input_id(key, r.input): _record(r) for r in chunk}
    write_json(staging / f"chunk-{next(iter(records))}.json", records, compact=True)
    if reid_partial is not None and any(r.reid for r in chunk):
        fd = os.open(reid_partial, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", newline="") as f:
            csv.writer(f).writerows((kind, o, p) for r in chunk for kind, (o, p) in r.reid.items())
            f.flush()
            os.fsync(f.fileno())


def _write_ledger(out_dir: Path, key: bytes, results: list[FileResult], settings: dict[str, Any]) -> None:
    """Every finished input of this and earlier runs, once all outputs are placed (atomically)."""
    files = {input_id(key, r.input): _record(r) for r in results if r.status != "not processed"}
    write_json(out_dir / LEDGER, {"settings": settings, "files": files}, compact=True)


def _reid_partial(reid_path: Path | None) -> Path | None:
    """Where re-identification pairs accumulate during a run (beside the table, 0600), so a resumed run's table
    still holds the files an earlier run finished."""
    return None if reid_path is None else reid_path.with_name(f".{reid_path.name}.partial")


def input_id(key: bytes, rel: str) -> str:
    """A keyed hash naming an input in the report without its path (which may hold a name or a date)."""
    return hmac.new(key, b"input\x00" + rel.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:12]


def _place_outputs(
    results: list[FileResult],
    out_dir: Path,
    staging: Path,
    on_duplicate: str,
    key: bytes,
    placed: set[int] | None = None,
) -> list[list[int]]:
    """Move staged files to their names, in input order; returns the groups of inputs sharing a SOP UID.

    Under ``keep`` the first input of a group gets ``<instance>.dcm`` and the next ``<instance>.dup1.dcm``
    and so on; under ``first`` only the first is written and the others are skipped with the reason.
    ``placed``: indexes of results an earlier run already moved into place (kept as they are). A staged file
    already gone with its output present was moved by a run that stopped while placing: not written again.
    """
    placed = placed or set()
    groups: dict[str, list[FileResult]] = {}
    for r in results:
        if r.status == "written" and r.output is not None:
            groups.setdefault(r.output, []).append(r)
    duplicates: list[list[int]] = []
    for name, group in groups.items():
        if len(group) > 1:
            duplicates.append([r.index for r in group])
        taken = {r.output for r in group if r.index in placed}
        for k, r in enumerate(group):
            if r.index in placed:
                continue
            staged = staging / f"{input_id(key, r.input)}.dcm"
            if k and on_duplicate == "first":
                staged.unlink(missing_ok=True)
                r.status, r.output = "skipped", None
                r.reason = f"same SOP Instance UID as input #{group[0].index} (kept the first)"
                continue
            final = name if k == 0 else name[: -len(".dcm")] + f".dup{k}.dcm"
            while final in taken:  # an earlier run placed an input of this group under this name
                k += 1
                final = name[: -len(".dcm")] + f".dup{k}.dcm"
            taken.add(final)
            target = out_dir / final
            r.output = final
            if not staged.exists():  # moved by a run that stopped while placing: never written twice
                if not target.exists():
                    r.status, r.output = "rejected", None
                    r.reason = "its output was removed after an earlier run (remove the ledger to redo it)"
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)
    return duplicates


def write_reid_table(path: Path, results: list[FileResult], earlier: Path | None = None) -> Path:
    """CSV of original → pseudonym (PHI!): written 0600, atomically, never beside the output.

    A table already at ``path`` (an earlier run into the same OUT) and the ``earlier`` partial table (pairs of
    files finished before a crash) are merged in, then the partial table is removed.
    """
    rows: set[tuple[str, str, str]] = set()
    for source in (path, earlier):
        if source is not None and source.exists():
            with source.open(newline="") as f:
                rows.update((a, o, p) for a, o, p in csv.reader(f) if a != "attribute" or o != "original")
    for r in results:
        for kind, (original, pseudonym) in r.reid.items():
            rows.add((kind, original, pseudonym))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["attribute", "original", "pseudonym"])
    writer.writerows(sorted(rows))
    write_text(path, buf.getvalue())
    os.chmod(path, 0o600)
    if earlier is not None:
        earlier.unlink(missing_ok=True)
    return path
