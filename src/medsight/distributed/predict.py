"""``medsight predict BUNDLE ARCHIVE --out DIR --workers N``: a model over a whole archive, resumable.

Files are walked lazily and sent in small chunks to workers that load the bundle once (in this process with one
worker and no cluster, else Ray actors: :mod:`medsight.distributed.batch`). Each input's results go to
``DIR/results/<key>/`` (what ``medsight predict`` writes for one input, renamed into place whole) and only then is
it marked done (:mod:`medsight.distributed.ledger`), so a re-run skips it and no output is written twice; a chunk
re-run after a worker died finds its outputs in place and only marks them. ``DIR/report.json`` comes at the end.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from medsight.distributed.ledger import Ledger, key
from medsight.errors import MedsightError
from medsight.io.atomic import remove_leftovers, write_json

#: Inputs per chunk sent to a worker: large enough to hide the scheduling cost, small enough to balance.
CHUNK = 16
RESULTS = "results"

Item = tuple[str, str, str]  # (path, key, output folder)


def iter_files(archive: Path) -> Iterator[tuple[Path, str]]:
    """Every file under ``archive`` (hidden ones left out), in sorted order, walked lazily."""
    if archive.is_file():
        yield archive, archive.name
        return
    for root, dirs, names in os.walk(archive):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                path = Path(root) / name
                yield path, path.relative_to(archive).as_posix()


def not_an_image(path: Path) -> str | None:
    """Why a file of an archive is no input at all (``None`` when it is one): archives from a PACS or a CD carry
    READMEs, empty files, DICOMDIRs and non-image objects (SR, KO) beside the images. These are skipped, not failed:
    a damaged image or one of the wrong modality still fails with its reason."""
    from medsight.io.dicom import PIXEL_TAGS, is_dicom_file, is_dicomdir, open_dicom
    from medsight.io.images import NIFTI_SUFFIXES, RASTER_SUFFIXES

    try:
        if path.stat().st_size == 0:
            return "an empty file"
    except OSError:
        return None  # read_image names the problem
    if is_dicom_file(path):
        try:
            ds = open_dicom(path, defer_size=1024)  # large values (the pixels) stay on disk
        except Exception:  # a damaged DICOM file is a failure, with read_image's reason
            return None
        if is_dicomdir(ds):
            return "a DICOMDIR (an index of the media's files, not an image)"
        if not any(tag in ds for tag in PIXEL_TAGS):
            return f"a DICOM object without an image (Modality {ds.get('Modality') or 'not given'})"
        return None
    name = path.name.lower()
    if (
        path.suffix.lower() in RASTER_SUFFIXES
        or name.endswith(NIFTI_SUFFIXES)
        or path.suffix.lower() in (".npy", ".npz")
    ):
        return None
    return "not an image file (neither DICOM nor an image format medsight reads)"


def _setup(config: dict[str, Any]) -> tuple[Any, bool, str | None]:
    """The warm model, whether to explain, and the training modality DICOM inputs are checked against (``None``:
    ``--any-modality``)."""
    from medsight import runtime
    from medsight.io.modality import trained_on

    model = runtime.load(config["bundle"])
    checked = None if config.get("any_modality") else trained_on(model.bundle.meta)
    return model, bool(config["explain"]), checked


def _work(state: tuple[Any, bool, str | None], chunk: list[Item]) -> list[dict[str, Any]]:
    """Predict and write each input of ``chunk``; outputs already in place (a re-run chunk) are kept, not redone."""
    from medsight import runtime
    from medsight.io import modality

    model, explain, checked = state
    records = []
    for path, name, target in chunk:
        record: dict[str, Any] = {"key": name, "output": f"{RESULTS}/{name}"}
        if Path(target).exists():
            records.append(record | {"status": "written", "summary": "written by an earlier attempt"})
            continue
        stray = not_an_image(Path(path))
        if stray is not None:
            records.append({"key": name, "status": "skipped", "reason": stray})
            continue
        try:
            if checked is not None:
                modality.check(checked, [Path(path)])
            results = model.predict([Path(path)], explain=explain)
            for result in results:  # the key names the results, never the file's name (it may hold a patient's)
                result.input = name
            runtime.write_predictions(model, results, Path(target))
            records.append(record | {"status": "written", "summary": "; ".join(r.summary() for r in results)})
        except MedsightError as exc:  # the problem only: the path may hold a patient's name
            records.append({"key": name, "status": "failed", "reason": exc.problem})
    return records


def _chunks(archive: Path, out: Path, done: set[str], counts: dict[str, int]) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for path, rel in iter_files(archive):
        name = key(rel)
        counts["seen"] += 1
        if name in done:
            counts["resumed"] += 1
            continue
        chunk.append((str(path.resolve()), name, str((out / RESULTS / name).resolve())))
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
    if out.resolve() == archive.resolve() or archive.resolve() in out.resolve().parents:
        raise MedsightError("the output folder must be outside the archive", out)
    from medsight.training.bundle import load_bundle

    load_bundle(bundle)  # a bad bundle is one clear error here, not one per worker
    ledger = Ledger(out)
    remove_leftovers(out / RESULTS)  # half-written results of a killed earlier run
    counts = {"seen": 0, "resumed": 0}
    chunks = _chunks(archive, out, ledger.done(), counts)
    config = {"bundle": str(bundle.resolve()), "explain": explain, "any_modality": any_modality}
    started = time.perf_counter()
    processed = 0
    bar = tqdm(unit="file", desc="predict", disable=not progress, file=sys.stderr)
    try:
        if workers == 1 and address is None:
            state = _setup(config)
            finished: Iterator[list[dict[str, Any]]] = (_work(state, chunk) for chunk in chunks)
        else:
            from medsight.distributed.batch import stream

            finished = stream(_setup, config, _work, chunks, workers, address)
        for records in finished:
            for record in records:
                ledger.mark(record["key"], record)
            processed += len(records)
            bar.update(len(records))
    finally:
        bar.close()
    remove_leftovers(out / RESULTS)  # a worker killed mid-write leaves its temporary folder; its input was redone
    seconds = time.perf_counter() - started
    statuses: dict[str, int] = {}
    files = []
    for record in ledger.records():
        statuses[record["status"]] = statuses.get(record["status"], 0) + 1
        files.append(record)
    report = {
        "bundle": str(bundle),
        "workers": workers,
        "cluster": "existing (address given)" if address else ("local Ray" if workers > 1 else "none (this process)"),
        "files_seen": counts["seen"],
        "processed_this_run": processed,
        "finished_earlier": counts["resumed"],
        "counts": statuses,
        "seconds": round(seconds, 3),
        "files_per_second": round(processed / seconds, 3) if seconds > 0 else None,
        "files": files,
    }
    write_json(out / "report.json", report)
    return report
