"""``medsight predict BUNDLE ARCHIVE --out DIR --workers N``: a model over a whole archive, resumable.

Files are walked lazily and sent in small chunks to workers that load the bundle once (in this process with one
worker and no cluster, else Ray actors: :mod:`medsight.distributed.batch`). Each input's results go to
``DIR/results/<key>/`` (what ``medsight predict`` writes for one input, renamed into place whole) and only then does
the worker mark it done (:mod:`medsight.distributed.ledger`), with the fingerprint of the model, the options and the
file's size and time. A re-run skips an input whose mark matches and redoes the rest (another model or options, a
file that changed or failed), so no output is written twice and none is reused stale; a chunk re-run after a worker
died finds the inputs that worker marked and redoes only the others. ``DIR/report.json`` is written at the start
(so an interrupted run's folder is recognised as this command's) and again at the end.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import time
from collections.abc import Generator, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, NamedTuple

from tqdm import tqdm

from medsight.distributed.ledger import Ledger, key
from medsight.errors import MedsightError
from medsight.io.atomic import remove_leftovers, write_json

#: Inputs per chunk sent to a worker: large enough to hide the scheduling cost, small enough to balance.
CHUNK = 16
RESULTS = "results"
#: Marks with these statuses are final; a failed input is tried again by a re-run (its cause may be gone).
FINAL = ("written", "skipped")
#: The errors that mean the output's disk is full: the batch stops (every input left is unharmed), it does not fail
#: each input after.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

Item = tuple[str, str, str, dict[str, Any]]  # (path, key, output folder, fingerprint)


class Entry(NamedTuple):
    """A file of the archive, or something the walk decided itself (``verdict``: status and reason)."""

    path: Path
    rel: str
    verdict: tuple[str, str] | None = None


def iter_files(archive: Path) -> Iterator[Entry]:
    """Every file under ``archive``, in sorted order, walked lazily.

    Nothing is left out in silence: a folder that cannot be listed (vanished, no permission) is a failed entry, a
    link to a folder is a skipped one (not followed: it may lead outside the archive, or around in a loop), and so
    is a hidden file or folder (``.DS_Store``, ``._IM0001``: what file managers leave)."""
    if not archive.is_dir():
        yield Entry(archive, archive.name)
        return
    unlisted: list[OSError] = []
    for root, dirs, names in os.walk(archive, onerror=unlisted.append):
        yield from _unlisted(archive, unlisted)
        here = Path(root)
        for name in sorted(dirs):
            rel = (here / name).relative_to(archive).as_posix() + "/"
            if name.startswith("."):
                dirs.remove(name)
                yield Entry(here / name, rel, ("skipped", "a hidden folder (not walked)"))
            elif (here / name).is_symlink():
                dirs.remove(name)
                yield Entry(here / name, rel, ("skipped", "a link to a folder (not followed: give that folder)"))
        dirs.sort()
        for name in sorted(names):
            path = here / name
            hidden = ("skipped", "a hidden file") if name.startswith(".") else None
            yield Entry(path, path.relative_to(archive).as_posix(), hidden)
    yield from _unlisted(archive, unlisted)


def _unlisted(archive: Path, errors: list[OSError]) -> Iterator[Entry]:
    """The folders ``os.walk`` could not list (it reports them to ``onerror`` and goes on), as failed entries."""
    while errors:
        exc = errors.pop(0)
        where = Path(os.fsdecode(exc.filename)) if exc.filename else archive
        rel = Path(os.path.relpath(where, archive)).as_posix() + "/" if where != archive else "./"
        reason = f"a folder that could not be listed ({exc.strerror or type(exc).__name__}): its files were not read"
        yield Entry(where, rel, ("failed", reason))


def triage(path: Path) -> tuple[str, str] | None:
    """Why a file of an archive is no input (``("skipped", why)``) or cannot be one (``("failed", why)``); ``None``
    for an input to predict on. Archives from a PACS or a CD carry READMEs, empty files, DICOMDIRs and non-image
    objects (SR, KO) beside the images: these are skipped. A file that cannot be read, or a DICOM file cut short
    (its pixel data gone, as when the batch reads a file still being copied), fails with its reason."""
    from medsight.io.dicom import PIXEL_TAGS, check_complete, is_dicom_file, is_dicomdir, open_dicom
    from medsight.io.images import NIFTI_SUFFIXES, RASTER_SUFFIXES

    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            return "skipped", "not a regular file (a pipe, socket or device)"
        if info.st_size == 0:
            return "skipped", "an empty file"
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        return "failed", f"cannot be read ({exc.strerror or type(exc).__name__})"
    if is_dicom_file(path):
        try:
            ds = open_dicom(path, defer_size=1024)  # large values (the pixels) stay on disk
            syntax = str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", ""))
            deflated = syntax == "1.2.840.10008.1.2.1.99"
            if deflated:  # offsets are in the inflated stream: read whole, as io.dicom.read_header does
                ds = open_dicom(path)
            if is_dicomdir(ds):
                return "skipped", "a DICOMDIR (an index of the media's files, not an image)"
            check_complete(ds, path, deflated)
        except MedsightError as exc:
            return "failed", exc.problem
        except Exception as exc:  # pydicom raises many types on malformed input; all mean "corrupt"
            return "failed", f"corrupt DICOM file ({type(exc).__name__})"
        if "SOPClassUID" not in ds:
            return "failed", "corrupt or truncated DICOM file: no SOP Class UID"
        if not any(tag in ds for tag in PIXEL_TAGS):
            return "skipped", f"a DICOM object without an image (Modality {ds.get('Modality') or 'not given'})"
        return None
    name = path.name.lower()
    if (
        path.suffix.lower() in RASTER_SUFFIXES
        or name.endswith(NIFTI_SUFFIXES)
        or path.suffix.lower() in (".npy", ".npz")
    ):
        return None
    return "skipped", "not an image file (neither DICOM nor an image format medsight reads)"


def scrub(text: str, path: Path) -> str:
    """``text`` (a reader's message) without the file's path or name, which may hold a patient's."""
    for form in sorted({str(path), os.path.abspath(path), os.path.realpath(path)}, key=len, reverse=True):
        text = text.replace(form, "<file>")
    if len(path.name) >= 4:  # the bare name too, as a whole word ("a" is no name to cut out of a sentence)
        text = re.sub(rf"(?<![\w.-]){re.escape(path.name)}(?![\w.-])", "<file>", text)
    return text


def _setup(config: dict[str, Any]) -> tuple[Any, bool, str | None, Ledger]:
    """The warm model, whether to explain, the training modality DICOM inputs are checked against (``None``:
    ``--any-modality``) and the ledger the worker marks its inputs in."""
    from medsight import runtime
    from medsight.io.modality import trained_on

    model = runtime.load(config["bundle"])
    checked = None if config.get("any_modality") else trained_on(model.bundle.meta)
    return model, bool(config["explain"]), checked, Ledger(Path(config["out"]))


def _disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def _work(state: tuple[Any, bool, str | None, Ledger], chunk: list[Item]) -> list[dict[str, Any]]:
    """Predict, write and mark each input of ``chunk``. Inputs marked already (a chunk re-run after its worker died)
    are kept, not redone. A full disk ends the chunk with a ``stopped`` record."""
    model, explain, checked, ledger = state
    records = []
    for path, name, target, fingerprint in chunk:
        mark = ledger.read(name)
        if mark is not None and mark.get("fingerprint") == fingerprint and mark.get("status") in FINAL:
            records.append(mark)
            continue
        try:
            record = _one(model, explain, checked, Path(path), name, Path(target)) | {"fingerprint": fingerprint}
            ledger.mark(name, record)
        except OSError as exc:
            if not _disk_full(exc):
                raise
            records.append({"key": name, "status": "stopped", "reason": "no space left on the output's device"})
            break
        records.append(record)
    return records


def _one(model: Any, explain: bool, checked: str | None, path: Path, name: str, target: Path) -> dict[str, Any]:
    """One input's record, its results in place when written. What stands at ``target`` unmarked is stale (another
    model or options, a file that changed) or was placed by a run stopped before marking it: it goes first."""
    from medsight import runtime
    from medsight.io import modality

    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()
    verdict = triage(path)
    if verdict is not None:
        return {"key": name, "status": verdict[0], "reason": verdict[1]}  # our own words, no path in them
    try:
        if checked is not None:
            modality.check(checked, [path])
        results = model.predict([path], explain=explain)
        for result in results:  # the key names the results, never the file's name (it may hold a patient's)
            result.input = name
        runtime.write_predictions(model, results, target)
    except MedsightError as exc:  # the problem only: the path may hold a patient's name
        return {"key": name, "status": "failed", "reason": scrub(exc.problem, path)}
    except Exception as exc:  # one unreadable input never ends the batch
        if _disk_full(exc):
            raise
        return {"key": name, "status": "failed", "reason": scrub(f"cannot be read ({type(exc).__name__}: {exc})", path)}
    summary = "; ".join(r.summary() for r in results)
    return {"key": name, "output": f"{RESULTS}/{name}", "status": "written", "summary": summary}


def _run_id(bundle: Path, archive: Path, explain: bool, any_modality: bool) -> str:
    """What makes a mark reusable beside the file itself: the model (every file of the bundle, so a retrained or
    recalibrated one is another model), the options and the archive."""
    digest = hashlib.sha256(json.dumps([str(archive), explain, any_modality]).encode())
    for path in sorted(p for p in bundle.resolve().rglob("*") if p.is_file()):
        digest.update(b"\0" + path.relative_to(bundle.resolve()).as_posix().encode("utf-8", "surrogateescape") + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:20]


def _chunks(
    archive: Path,
    out: Path,
    run_id: str,
    marks: dict[str, dict[str, Any]],
    seen: dict[str, dict[str, Any] | None],
    counts: dict[str, int],
) -> Iterator[list[Item]]:
    """Chunks of the inputs to do; ``seen`` gets every key walked (with its record when already decided)."""
    chunk: list[Item] = []
    for entry in iter_files(archive):
        name = key(entry.rel)
        counts["seen"] += 1
        if entry.verdict is not None:
            status, reason = entry.verdict
            seen[name] = {"key": name, "status": status, "reason": reason}
            continue
        try:
            info = entry.path.stat()
            fingerprint: dict[str, Any] = {"run": run_id, "file": [info.st_size, info.st_mtime_ns]}
        except OSError as exc:  # vanished since the walk listed it, a broken link, a loop of links
            seen[name] = {"key": name, "status": "failed", "reason": f"cannot be read ({exc.strerror})"}
            continue
        mark = marks.get(name)
        if mark is not None and mark.get("fingerprint") == fingerprint and mark.get("status") in FINAL:
            seen[name] = mark
            counts["resumed"] += 1
            continue
        seen[name] = None
        chunk.append((os.path.abspath(entry.path), name, str(out / RESULTS / name), fingerprint))
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict_archive(
    bundle: Path,
    archive: Path,
    out: Path,
    workers: int = 1,
    address: str | None = None,
    explain: bool = False,
    progress: bool = True,
    any_modality: bool = False,
) -> dict[str, Any]:
    """Predict on every file under ``archive`` into ``out``; returns (and writes) the report. A DICOM file whose
    Modality the bundle was not trained on fails with that reason unless ``any_modality`` (:mod:`medsight.io.modality`).
    """
    if not archive.exists():
        raise MedsightError("archive not found", archive)
    if workers < 1:
        raise MedsightError("--workers must be 1 or more")
    archive, out = archive.resolve(), out.resolve()
    if out == archive or archive in out.parents:
        raise MedsightError("the output folder must be outside the archive", out)
    if out.exists() and not out.is_dir():
        raise MedsightError("exists and is not a folder (archive mode writes a folder)", out)
    from medsight.training.bundle import load_bundle

    load_bundle(bundle)  # a bad bundle is one clear error here, not one per worker
    ledger = Ledger(out)
    try:
        with ledger.lock(out):
            return _predict(bundle, archive, out, ledger, workers, address, explain, progress, any_modality)
    except OSError as exc:
        if not _disk_full(exc):
            raise
        raise MedsightError(
            "no space left on the output's device; what finished is kept: free space and run the same command "
            "again to go on",
            out,
        ) from None


def _predict(
    bundle: Path,
    archive: Path,
    out: Path,
    ledger: Ledger,
    workers: int,
    address: str | None,
    explain: bool,
    progress: bool,
    any_modality: bool,
) -> dict[str, Any]:
    remove_leftovers(out / RESULTS)  # half-written results of a killed earlier run
    run_id = _run_id(bundle, archive, explain, any_modality)
    report: dict[str, Any] = {
        "bundle": str(bundle),
        "workers": workers,
        "cluster": "existing (address given)" if address else ("local Ray" if workers > 1 else "none (this process)"),
        "complete": False,
    }
    write_json(out / "report.json", report)  # the folder is this command's from now on: a re-run is accepted
    counts = {"seen": 0, "resumed": 0}
    seen: dict[str, dict[str, Any] | None] = {}
    chunks = _chunks(archive, out, run_id, ledger.load(), seen, counts)
    config = {"bundle": str(bundle.resolve()), "explain": explain, "any_modality": any_modality, "out": str(out)}
    started = time.perf_counter()
    processed = 0
    bar = tqdm(unit="file", desc="predict", disable=not progress, file=sys.stderr)
    try:
        if workers == 1 and address is None:
            state = _setup(config)
            finished: Generator[list[dict[str, Any]], None, None] = (_work(state, chunk) for chunk in chunks)
        else:
            from medsight.distributed.batch import stream

            finished = stream(_setup, config, _work, chunks, workers, address)
        with closing(finished):  # a stop (Ctrl-C, SIGTERM) ends the cluster here, not whenever it is collected
            for records in finished:
                for record in records:
                    if record["status"] == "stopped":
                        raise OSError(errno.ENOSPC, record["reason"])
                    seen[record["key"]] = record
                processed += len(records)
                bar.update(len(records))
    finally:
        bar.close()
    remove_leftovers(out / RESULTS)  # a worker killed mid-write leaves its temporary folder; its input was redone
    seconds = time.perf_counter() - started
    lost = {"status": "failed", "reason": "no worker reported it"}
    files = [seen[name] or {"key": name} | lost for name in sorted(seen)]
    statuses: dict[str, int] = {}
    for record in files:
        statuses[record["status"]] = statuses.get(record["status"], 0) + 1
    report |= {
        "complete": True,
        "files_seen": counts["seen"],
        "processed_this_run": processed,
        "finished_earlier": counts["resumed"],
        "counts": statuses,
        "seconds": round(seconds, 3),
        "files_per_second": round(processed / seconds, 3) if seconds > 0 else None,
        "files": [{k: v for k, v in record.items() if k != "fingerprint"} for record in files],
    }
    write_json(out / "report.json", report)
    return report
