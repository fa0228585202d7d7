"""The study store: every received instance durably on disk and in the database, grouped into studies.

Why this shape: a PACS considers an instance delivered once we acknowledge it, so ``store()`` returns only after
the file is fsynced, renamed into place, its folder fsynced and its row committed; a ``kill -9`` after that loses
nothing, and a failure before it leaves no partial file and no row. Files live at
``root/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` (UIDs are checked to be digits and dots before
they become path components). The rows hold what QIDO-RS and routing ask about, so neither reads files.

A study moves ``receiving`` → ``complete`` (a quiet period without new instances, or an explicit call) →
``processed`` (its jobs were queued). An instance for a complete or processed study is *late*: it re-opens the
study for a re-run when the store was built with ``rerun_on_late=True``, otherwise it is stored and counted only.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pydicom.errors
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.sql.elements import ColumnElement

from medsight.errors import DuplicateInstance, MedsightError, StorageUnavailable
from medsight.io.dicom import peek
from medsight.io.dicom_write import write_file_meta
from medsight.serving.database import insert, migrate, write_transaction

LOG = logging.getLogger(__name__)

RECEIVING, COMPLETE, PROCESSED = "receiving", "complete", "processed"
STATES = (RECEIVING, COMPLETE, PROCESSED)

#: DICOM UI value representation: digits and dots, no empty component, at most 64 characters (PS3.5 6.2, 9.1).
#: Leading zeros in a component are not conformant but common in old archives; they are still path-safe, so kept.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_DATE = re.compile(r"\d{8}")

_meta = MetaData()
studies_table = Table(
    "studies",
    _meta,
    Column("study_uid", String(64), primary_key=True),
    Column("patient_id", Text),
    Column("patient_name", Text),
    Column("patient_birth_date", String(16)),
    Column("patient_sex", String(16)),
    Column("accession_number", Text),
    Column("study_date", String(16)),
    Column("study_time", String(32)),
    Column("study_description", Text),
    Column("referring_physician", Text),
    Column("state", String(16), nullable=False),
    Column("first_received", Float, nullable=False),
    Column("last_received", Float, nullable=False),
    Column("completed_at", Float),
    Column("rerun_count", Integer, nullable=False, default=0),
    Column("late_count", Integer, nullable=False, default=0),
    Index("ix_studies_state_last", "state", "last_received"),
)
series_table = Table(
    "series",
    _meta,
    Column("study_uid", String(64), primary_key=True),
    Column("series_uid", String(64), primary_key=True),
    Column("modality", String(16)),
    Column("body_part", Text),
    Column("series_description", Text),
    Column("series_number", Integer),
    Column("calling_ae", String(32)),
    Column("peer", Text),
    Column("is_result", Boolean, nullable=False, default=False),
    Column("first_received", Float, nullable=False),
    ForeignKeyConstraint(["study_uid"], ["studies.study_uid"], ondelete="CASCADE"),
)
instances_table = Table(
    "instances",
    _meta,
    Column("sop_uid", String(64), primary_key=True),
    Column("study_uid", String(64), nullable=False),
    Column("series_uid", String(64), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("instance_number", Integer),
    Column("transfer_syntax", String(64), nullable=False),
    Column("path", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("received", Float, nullable=False),
    Column("is_result", Boolean, nullable=False, default=False),
    ForeignKeyConstraint(["study_uid", "series_uid"], ["series.study_uid", "series.series_uid"], ondelete="CASCADE"),
    Index("ix_instances_series", "study_uid", "series_uid"),
)


def _create_v1(conn: Connection) -> None:
    _meta.create_all(conn, tables=[studies_table, series_table, instances_table])


#: The store's schema steps (append, never edit: see :func:`medsight.serving.database.migrate`).
MIGRATIONS: tuple[Callable[[Connection], None], ...] = (_create_v1,)


@dataclass(frozen=True)
class StoredInstance:
    """What ``store()`` did with one instance (UIDs and flags only: safe to log)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    path: Path
    size: int
    duplicate: bool  # the SOPInstanceUID was already stored: its file and row were replaced
    late: bool  # arrived for a study already complete or processed
    rerun: bool  # the late instance re-opened the study (rerun_on_late)
    study_state: str  # the study's state after this instance


@dataclass(frozen=True)
class StudyRecord:
    """One study's row, with counts and the modalities of its series (``ModalitiesInStudy``)."""

    study_uid: str
    patient_id: str | None
    patient_name: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    accession_number: str | None
    study_date: str | None
    study_time: str | None
    study_description: str | None
    referring_physician: str | None
    state: str
    first_received: float
    last_received: float
    completed_at: float | None
    rerun_count: int
    late_count: int
    modalities: tuple[str, ...]
    n_series: int
    n_instances: int


@dataclass(frozen=True)
class SeriesRecord:
    """One series' row, with its instance count and SOP classes (what routing rules match on)."""

    study_uid: str
    series_uid: str
    modality: str | None
    body_part: str | None
    series_description: str | None
    series_number: int | None
    calling_ae: str | None
    peer: str | None
    is_result: bool
    first_received: float
    n_instances: int
    sop_classes: tuple[str, ...]


@dataclass(frozen=True)
class InstanceRecord:
    """One instance's row; ``path`` is absolute."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    instance_number: int | None
    transfer_syntax: str
    path: Path
    size: int
    received: float
    is_result: bool


#: Text filters of :meth:`StudyStore.studies` and the columns they match (``*``/``?`` wildcards, case-insensitive).
TEXT_FILTERS = {
    "patient_id": studies_table.c.patient_id,
    "patient_name": studies_table.c.patient_name,
    "accession_number": studies_table.c.accession_number,
    "study_description": studies_table.c.study_description,
    "referring_physician": studies_table.c.referring_physician,
}
OTHER_FILTERS = ("study_uid", "study_uids", "study_date", "modality", "modalities_in_study", "state")


#: The study columns filled from the data set's attributes (Type 2/3: kept as None when absent or empty).
STUDY_ATTRIBUTES = {
    "patient_id": "PatientID",
    "patient_name": "PatientName",
    "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex",
    "accession_number": "AccessionNumber",
    "study_date": "StudyDate",
    "study_time": "StudyTime",
    "study_description": "StudyDescription",
    "referring_physician": "ReferringPhysicianName",
}


def _binds(table: Table, *skip: str) -> dict[str, Any]:
    return {c.name: bindparam(c.name) for c in table.columns if c.name not in skip}


@dataclass(frozen=True)
class _Statements:
    """The store's per-instance statements, with bound parameters, built once per store and dialect."""

    select_study: Any
    insert_study: Any
    touch_study: Any
    select_old: Any
    insert_series: Any
    insert_instance: Any
    update_instance: Any

    @classmethod
    def build(cls, conn: Connection) -> _Statements:
        s, i = studies_table.c, instances_table.c
        return cls(
            select_study=select(studies_table).where(s.study_uid == bindparam("b_study")).with_for_update(),
            insert_study=insert(conn, studies_table).values(_binds(studies_table)).on_conflict_do_nothing(),
            touch_study=update(studies_table)
            .where(s.study_uid == bindparam("b_study"))
            .values(last_received=bindparam("last_received")),
            select_old=select(i.path, i.study_uid).where(i.sop_uid == bindparam("b_sop")).with_for_update(),
            insert_series=insert(conn, series_table).values(_binds(series_table)).on_conflict_do_nothing(),
            insert_instance=insert(conn, instances_table)
            .values(_binds(instances_table))
            .on_conflict_do_nothing()
            .returning(i.sop_uid),
            update_instance=update(instances_table)
            .where(i.sop_uid == bindparam("b_sop"))
            .values(_binds(instances_table, "sop_uid")),
        )


class StudyStore:
    """Received instances on disk under ``root`` plus their rows in ``engine``'s database.

    ``min_free_bytes``: ``store()`` refuses an instance (a clear "disk full" error, nothing written) when less is
    free under ``root``, so the database and the logs still have room. ``rerun_on_late``: a late instance re-opens
    its study for a re-run instead of only being counted. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        engine: Engine,
        root: Path,
        *,
        min_free_bytes: int = 50_000_000,
        rerun_on_late: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.root = Path(root)
        self.min_free_bytes = min_free_bytes
        self.rerun_on_late = rerun_on_late
        self.clock = clock
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MedsightError(f"cannot create the instance folder: {exc.strerror}", self.root) from None
        self._sql: _Statements | None = None
        #: (study, series) pairs whose row is known to exist (rows are never deleted): their insert is skipped
        self._series_seen: set[tuple[str, str]] = set()
        migrate(engine, "store", MIGRATIONS)
        self.sweep_temporary()
        self.record_unrecorded()

    # ------------------------------------------------------------------------------------------------ writing

    def store(
        self, dataset: Dataset, *, calling_ae: str, peer: str, result: bool = False, encoded: bytes | None = None
    ) -> StoredInstance:
        """Write ``dataset`` durably and record it; returns only when both are durable.

        ``encoded``: the data set exactly as it arrived (no file meta), in the transfer syntax its file meta names
        (the DICOM listener passes the C-STORE stream). It is written as received after the file meta, instead of
        re-encoding ``dataset``: byte-exact storage (what each costs: ``store_cost_ms`` in the serve results).

        The file is DICOM Part 10 in the transfer syntax the instance came with (``dataset.file_meta`` is added
        when missing). ``result=True`` marks medsight's own outputs (SR, SEG, SC) stored beside the study: they
        never change the study's state nor count as late. Raises ``MedsightError`` naming the missing or invalid
        UID, or "disk full"; then no file and no row are left behind.
        """
        study_uid = _required_uid(dataset, "StudyInstanceUID")
        series_uid = _required_uid(dataset, "SeriesInstanceUID")
        sop_uid = _required_uid(dataset, "SOPInstanceUID")
        meta = getattr(dataset, "file_meta", None)
        sop_class = dataset.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta else None)
        sop_class_uid = _check_uid(sop_class, "SOPClassUID")
        transfer_syntax = _ensure_file_meta(dataset, sop_class_uid, sop_uid)

        self._check_free_space()
        series_dir = self.root / study_uid / series_uid
        target = series_dir / f"{sop_uid}.dcm"
        size = self._write_durably(dataset, target, encoded)
        now = self.clock()
        try:
            # A received instance's row is not waited onto the disk: its file already is (fsynced, renamed, folder
            # fsynced), and a row lost to a power failure is rebuilt from it at start (record_unrecorded). A kill -9
            # loses neither. medsight's own results are rare and keep the full flush.
            with write_transaction(self.engine, flush_to_disk=result) as conn:
                outcome = self._record(
                    conn,
                    dataset,
                    study_uid,
                    series_uid,
                    sop_uid,
                    sop_class_uid,
                    transfer_syntax,
                    target,
                    size,
                    calling_ae,
                    peer,
                    result,
                    now,
                )
        except BaseException:
            # the row did not commit: a new file must not stay behind unrecorded (a replaced one keeps its row)
            if not self._has_row(sop_uid, target):
                with contextlib.suppress(OSError):
                    target.unlink()
            raise
        old_path, duplicate, late, rerun, state = outcome
        if len(self._series_seen) >= 100_000:  # a bound on memory; forgetting only costs a redundant insert
            self._series_seen.clear()
        self._series_seen.add((study_uid, series_uid))
        if old_path is not None and old_path != target:  # the same SOP instance moved to another series of its study
            with contextlib.suppress(OSError):
                old_path.unlink()
        return StoredInstance(
            study_uid, series_uid, sop_uid, sop_class_uid, target, size, duplicate, late, rerun, state
        )

    def _check_free_space(self) -> None:
        free = shutil.disk_usage(self.root).free
        if free < self.min_free_bytes:
            raise StorageUnavailable(
                f"disk full: {free / 1e6:.1f} MB free, the store keeps at least {self.min_free_bytes / 1e6:.1f} MB; "
                "instance refused",
                self.root,
            )

    def _write_durably(self, dataset: Dataset, target: Path, encoded: bytes | None = None) -> int:
        """Encode, then temp file in the target folder, fsync, rename, fsync the folder (and any new folders).

        Encoding to memory first keeps the two failures apart: pydicom re-raises I/O errors without their errno,
        and a full disk must be reported as one.
        """
        buffer = io.BytesIO()
        try:
            if encoded is not None:
                buffer.write(b"\x00" * 128 + b"DICM")
                write_file_meta(buffer, dataset.file_meta)  # pydicom's bytes, without its per-element cost
                buffer.write(encoded)
            else:
                pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
        except (ValueError, TypeError, AttributeError, KeyError, OSError) as exc:  # pydicom cannot encode it
            raise MedsightError(
                f"instance refused: it cannot be written as a DICOM Part 10 file ({type(exc).__name__})"
            ) from None
        data = buffer.getbuffer()
        try:
            _make_dirs_durably(target.parent, self.root)
            fd, tmp_name = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=target.parent)
        except OSError as exc:
            raise _disk_error(exc, self.root) from None
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb", buffering=0) as fh:
                view = memoryview(data)
                while view:
                    view = view[fh.write(view) or 0 :]
                os.fsync(fh.fileno())
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise _disk_error(exc, self.root) from None
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return len(data)

    def _record(
        self,
        conn: Connection,
        ds: Dataset,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        sop_class_uid: str,
        transfer_syntax: str,
        target: Path,
        size: int,
        calling_ae: str,
        peer: str,
        result: bool,
        now: float,
    ) -> tuple[Path | None, bool, bool, bool, str]:
        """Upsert study, series and instance in one transaction; apply the late-instance rule.

        The statements are built once (``_Statements``): building and cache-keying them per instance cost more
        than running them. A study's text attributes are read from the data set only when its row lacks them.
        """
        sql = self._statements(conn)
        row = conn.execute(sql.select_study, {"b_study": study_uid}).one_or_none()
        if row is None:
            values = {k: _text(ds, STUDY_ATTRIBUTES[k]) for k in STUDY_ATTRIBUTES}
            conn.execute(
                sql.insert_study,
                {
                    "study_uid": study_uid,
                    "state": PROCESSED if result else RECEIVING,
                    "first_received": now,
                    "last_received": now,
                    "rerun_count": 0,
                    "late_count": 0,
                    "completed_at": None,
                    **values,
                },
            )
            row = conn.execute(sql.select_study, {"b_study": study_uid}).one()
        state, late, rerun = row.state, False, False
        changes: dict[str, Any] = {}
        for column, keyword in STUDY_ATTRIBUTES.items():
            if getattr(row, column) is None:
                value = _text(ds, keyword)
                if value is not None:
                    changes[column] = value
        if not result:
            changes["last_received"] = max(now, row.last_received)
            if row.state != RECEIVING:
                late = True
                changes["late_count"] = row.late_count + 1
                if self.rerun_on_late:
                    rerun, state = True, RECEIVING
                    changes.update(state=RECEIVING, rerun_count=row.rerun_count + 1, completed_at=None)
        if list(changes) == ["last_received"]:
            conn.execute(sql.touch_study, {"b_study": study_uid, "last_received": changes["last_received"]})
        elif changes:
            conn.execute(update(studies_table).where(studies_table.c.study_uid == study_uid).values(**changes))
        if (study_uid, series_uid) not in self._series_seen:
            conn.execute(
                sql.insert_series,
                {
                    "study_uid": study_uid,
                    "series_uid": series_uid,
                    "first_received": now,
                    "modality": _text(ds, "Modality"),
                    "body_part": _text(ds, "BodyPartExamined"),
                    "series_description": _text(ds, "SeriesDescription"),
                    "series_number": _int(ds, "SeriesNumber"),
                    "calling_ae": calling_ae.strip() or None,
                    "peer": peer or None,
                    "is_result": result,
                },
            )
        instance_values = {
            "study_uid": study_uid,
            "series_uid": series_uid,
            "sop_class_uid": sop_class_uid,
            "instance_number": _int(ds, "InstanceNumber"),
            "transfer_syntax": transfer_syntax,
            "path": target.relative_to(self.root).as_posix(),
            "size": size,
            "received": now,
            "is_result": result,
        }
        old = None  # the common case, a new instance, costs one statement: the insert that does nothing on a conflict
        if conn.execute(sql.insert_instance, {"sop_uid": sop_uid, **instance_values}).first() is None:
            old, old_study = conn.execute(sql.select_old, {"b_sop": sop_uid}).one()
            if old_study != study_uid:  # a UID reused for other data: never replace what was acknowledged
                raise DuplicateInstance(
                    "instance refused: its SOP Instance UID is already stored in another study (the stored "
                    "instance is kept)"
                )
            conn.execute(sql.update_instance, {"b_sop": sop_uid, **instance_values})
        return (None if old is None else self.root / old), old is not None, late, rerun, state

    def _statements(self, conn: Connection) -> _Statements:
        if self._sql is None:
            self._sql = _Statements.build(conn)
        return self._sql

    def _has_row(self, sop_uid: str, target: Path) -> bool:
        try:
            with self.engine.connect() as conn:
                path = conn.execute(
                    select(instances_table.c.path).where(instances_table.c.sop_uid == sop_uid)
                ).scalar_one_or_none()
        except Exception:
            return True
        return path is not None and self.root / path == target

    def record_unrecorded(self, margin_s: float = 300.0, min_age_s: float = 5.0) -> int:
        """Record instance files that have no row; returns how many. Run when the store opens.

        Why: an instance's row is committed without waiting for the disk (its file is flushed first), so after a
        power failure the newest rows may be missing while their files are on disk and were acknowledged. Only
        series folders changed since the newest surviving row (less ``margin_s`` for clock steps) can hold such
        files, so the scan costs one ``stat`` per series folder plus a listing of the recent ones. Files younger
        than ``min_age_s`` are left alone: another process (a running service, while ``feedback export`` or a worker
        process opens the store) may have just renamed one into place and be about to commit its row.
        """
        with self.engine.connect() as conn:
            newest = conn.execute(select(func.max(instances_table.c.received))).scalar()
        cutoff = float("-inf") if newest is None else float(newest) - margin_s
        youngest = time.time() - min_age_s
        recorded = 0
        for series_dir in self.root.glob("*/*"):
            try:
                if not series_dir.is_dir() or series_dir.stat().st_mtime < cutoff:
                    continue
                files = {p.stem: p for p in series_dir.glob("*.dcm")}
            except OSError:
                continue
            if not files:
                continue
            with self.engine.connect() as conn:
                known = set(
                    conn.execute(
                        select(instances_table.c.sop_uid).where(instances_table.c.series_uid == series_dir.name)
                    ).scalars()
                )
                result = conn.execute(
                    select(series_table.c.is_result).where(series_table.c.series_uid == series_dir.name)
                ).scalar()
            for sop_uid, path in sorted(files.items()):
                if sop_uid in known or _mtime(path) > youngest:
                    continue
                if self._record_file(path, bool(result)):
                    recorded += 1
        if recorded:
            LOG.warning("recorded %d instance file(s) found on disk without a row (after a power failure?)", recorded)
        return recorded

    def _record_file(self, path: Path, result: bool) -> bool:
        """Record one instance file already in place (its row was lost); False when it cannot be read as one."""
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            study_uid = _required_uid(ds, "StudyInstanceUID")
            series_uid = _required_uid(ds, "SeriesInstanceUID")
            sop_uid = _required_uid(ds, "SOPInstanceUID")
            sop_class_uid = _check_uid(
                ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID"), "SOPClassUID"
            )
            transfer_syntax = _ensure_file_meta(ds, sop_class_uid, sop_uid)
            if path != self.root / study_uid / series_uid / f"{sop_uid}.dcm":
                raise MedsightError("its UIDs do not match its place in the store", path)
            size = path.stat().st_size
        except (MedsightError, OSError, ValueError, AttributeError, pydicom.errors.InvalidDicomError) as exc:
            LOG.error("cannot record an instance file without a row: %s", type(exc).__name__)
            return False
        try:
            with write_transaction(self.engine) as conn:
                self._record(
                    conn,
                    ds,
                    study_uid,
                    series_uid,
                    sop_uid,
                    sop_class_uid,
                    transfer_syntax,
                    path,
                    size,
                    "",
                    "recovered",
                    result,
                    path.stat().st_mtime,
                )
        except DuplicateInstance:  # left where it is: the instance recorded in the other study keeps its place
            LOG.error("an instance file without a row names a SOP instance stored in another study: not recorded")
            return False
        return True

    def sweep_temporary(self, max_age_s: float = 3600.0) -> int:
        """Remove temp files left by a writer killed mid-write (older than ``max_age_s``, so no live writer's)."""
        removed = 0
        cutoff = time.time() - max_age_s
        for tmp in self.root.glob("*/*/.*.tmp"):
            with contextlib.suppress(OSError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
        return removed

    # ------------------------------------------------------------------------------------------------ states

    def complete_quiet_studies(self, quiet_s: float, now: float | None = None) -> list[str]:
        """Move studies quiet for more than ``quiet_s`` from receiving to complete; returns their UIDs.

        One conditional UPDATE: concurrent callers (threads or processes) each get a disjoint set.
        """
        now = self.clock() if now is None else now
        s = studies_table.c
        with write_transaction(self.engine) as conn:
            rows = conn.execute(
                update(studies_table)
                .where(s.state == RECEIVING, s.last_received < now - quiet_s)
                .values(state=COMPLETE, completed_at=now)
                .returning(s.study_uid)
            ).all()
        return sorted(r.study_uid for r in rows)

    def mark_complete(self, study_uid: str, now: float | None = None) -> bool:
        """Complete a receiving study now (the explicit API call); False when it is unknown or not receiving."""
        return self._transition(study_uid, RECEIVING, COMPLETE, now)

    def mark_processed(self, study_uid: str, now: float | None = None) -> bool:
        """Complete → processed once its jobs are queued; False when it is not complete (e.g. re-opened since)."""
        return self._transition(study_uid, COMPLETE, PROCESSED, now)

    def _transition(self, study_uid: str, from_state: str, to_state: str, now: float | None) -> bool:
        s = studies_table.c
        values: dict[str, Any] = {"state": to_state}
        if to_state == COMPLETE:
            values["completed_at"] = self.clock() if now is None else now
        with write_transaction(self.engine) as conn:
            done = conn.execute(
                update(studies_table).where(s.study_uid == study_uid, s.state == from_state).values(**values)
            )
        return bool(done.rowcount == 1)

    def studies_in_state(self, state: str) -> list[str]:
        """UIDs of the studies in ``state`` (start-up: complete studies whose jobs may not have been queued)."""
        if state not in STATES:
            raise MedsightError(f"unknown study state {state!r} (one of {', '.join(STATES)})")
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(studies_table.c.study_uid)
                    .where(studies_table.c.state == state)
                    .order_by(studies_table.c.last_received, studies_table.c.study_uid)
                ).scalars()
            )

    # ------------------------------------------------------------------------------------------------ queries

    def study(self, study_uid: str) -> StudyRecord | None:
        """One study, or None."""
        found = self.studies(study_uid=study_uid, limit=1)
        return found[0] if found else None

    def studies(self, *, limit: int | None = None, offset: int = 0, **filters: Any) -> list[StudyRecord]:
        """Studies matching every filter, most recently received first.

        Filters: ``patient_id``, ``patient_name``, ``accession_number``, ``study_description``,
        ``referring_physician`` (exact, or DICOM wildcards ``*`` and ``?``; case-insensitive); ``study_uid`` or
        ``study_uids`` (a list); ``study_date`` (``YYYYMMDD``, ``YYYYMMDD-YYYYMMDD``, open ends ``-YYYYMMDD`` /
        ``YYYYMMDD-``, or a ``(first, last)`` pair with None for an open end); ``modality`` /
        ``modalities_in_study`` (a study with a series of that modality; several separated by ``,`` or ``\\``);
        ``state``. A filter that is None or empty is ignored (QIDO's universal matching).
        """
        s = studies_table.c
        conditions: list[ColumnElement[bool]] = []
        for key, value in filters.items():
            if value is None or value == "" or (isinstance(value, list | tuple) and not any(value)):
                continue
            if key in TEXT_FILTERS:
                conditions.append(_text_match(TEXT_FILTERS[key], str(value)))
            elif key == "study_uid":
                conditions.append(s.study_uid == str(value))
            elif key == "study_uids":
                uids = [value] if isinstance(value, str) else [str(v) for v in value]
                conditions.append(s.study_uid.in_(uids))
            elif key == "study_date":
                first, last = _date_range(value)
                if first is not None:
                    conditions.append(s.study_date >= first)
                if last is not None:
                    conditions.append(s.study_date <= last)
            elif key in ("modality", "modalities_in_study"):
                wanted = [m.strip() for m in re.split(r"[,\\]", str(value)) if m.strip()]
                conditions.append(
                    s.study_uid.in_(select(series_table.c.study_uid).where(series_table.c.modality.in_(wanted)))
                )
            elif key == "state":
                conditions.append(s.state == str(value))
            else:
                known = ", ".join([*TEXT_FILTERS, *OTHER_FILTERS])
                raise MedsightError(f"unknown study filter {key!r} (known: {known})")
        query = (
            select(studies_table)
            .where(and_(True, *conditions))
            .order_by(s.last_received.desc(), s.study_uid)
            .offset(max(0, offset))
        )
        if limit is not None:
            query = query.limit(max(0, limit))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
            uids = [r.study_uid for r in rows]
            modalities: dict[str, set[str]] = {u: set() for u in uids}
            n_series: dict[str, int] = dict.fromkeys(uids, 0)
            n_instances: dict[str, int] = dict.fromkeys(uids, 0)
            if uids:
                for r in conn.execute(
                    select(series_table.c.study_uid, series_table.c.modality).where(series_table.c.study_uid.in_(uids))
                ):
                    n_series[r.study_uid] += 1
                    if r.modality:
                        modalities[r.study_uid].add(r.modality)
                i = instances_table.c
                for r in conn.execute(
                    select(i.study_uid, func.count()).where(i.study_uid.in_(uids)).group_by(i.study_uid)
                ):
                    n_instances[r[0]] = int(r[1])
        return [
            StudyRecord(
                **{c.name: getattr(r, c.name) for c in studies_table.columns},
                modalities=tuple(sorted(modalities[r.study_uid])),
                n_series=n_series[r.study_uid],
                n_instances=n_instances[r.study_uid],
            )
            for r in rows
        ]

    def series(self, study_uid: str) -> list[SeriesRecord]:
        """A study's series in series-number order (results last), with counts and SOP classes."""
        se, i = series_table.c, instances_table.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(series_table)
                .where(se.study_uid == study_uid)
                .order_by(se.is_result, se.series_number, se.first_received, se.series_uid)
            ).all()
            counts: dict[str, int] = {}
            classes: dict[str, set[str]] = {}
            for r in conn.execute(
                select(i.series_uid, i.sop_class_uid, func.count())
                .where(i.study_uid == study_uid)
                .group_by(i.series_uid, i.sop_class_uid)
            ):
                counts[r[0]] = counts.get(r[0], 0) + int(r[2])
                classes.setdefault(r[0], set()).add(r[1])
        return [
            SeriesRecord(
                **{c.name: getattr(r, c.name) for c in series_table.columns},
                n_instances=counts.get(r.series_uid, 0),
                sop_classes=tuple(sorted(classes.get(r.series_uid, ()))),
            )
            for r in rows
        ]

    def instances(self, study_uid: str, series_uid: str | None = None) -> list[InstanceRecord]:
        """A study's (or one series') instances in instance-number order."""
        i = instances_table.c
        query = select(instances_table).where(i.study_uid == study_uid)
        if series_uid is not None:
            query = query.where(i.series_uid == series_uid)
        query = query.order_by(i.series_uid, i.instance_number, i.received, i.sop_uid)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [self._instance(r) for r in rows]

    def instance(self, sop_uid: str) -> InstanceRecord | None:
        """One instance by SOPInstanceUID, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(instances_table).where(instances_table.c.sop_uid == sop_uid)).one_or_none()
        return None if row is None else self._instance(row)

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path | None:
        """The file of one instance (WADO-RS), or None when it is not in that study and series."""
        found = self.instance(sop_uid)
        if found is None or found.study_uid != study_uid or found.series_uid != series_uid:
            return None
        return found.path

    def _instance(self, row: Any) -> InstanceRecord:
        values: Mapping[str, Any] = {c.name: getattr(row, c.name) for c in instances_table.columns}
        return InstanceRecord(**{**values, "path": self.root / values["path"]})


# ---------------------------------------------------------------------------------------------------- helpers


def _check_uid(value: Any, keyword: str) -> str:
    """A UID fit to be a path component, or a MedsightError naming the attribute (never its value)."""
    if value is None or str(value).strip("\0 ") == "":
        raise MedsightError(f"instance refused: it has no {keyword}")
    uid = str(value).strip("\0 ")
    if len(uid) > 64 or not _UID.fullmatch(uid):
        raise MedsightError(
            f"instance refused: its {keyword} is not a valid DICOM UID (digits and dots, at most 64 characters)"
        )
    return uid


def _required_uid(ds: Dataset, keyword: str) -> str:
    try:
        value = peek(ds, _tag(keyword))
    except Exception:
        value = None
    return _check_uid(value, keyword)


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:  # pragma: no cover - the keywords are ours
        raise KeyError(keyword)
    return int(tag)


def _ensure_file_meta(ds: Dataset, sop_class_uid: str, sop_uid: str) -> str:
    """Give ``ds`` Part-10 file meta (keeping its transfer syntax) and return that transfer syntax UID."""
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = FileMetaDataset()
        ds.file_meta = meta
    ts = meta.get("TransferSyntaxUID")
    if not ts:
        encoding = getattr(ds, "original_encoding", (None, None))
        implicit, little = encoding if encoding != (None, None) else (True, True)
        ts = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        meta.TransferSyntaxUID = ts
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_uid
    if not meta.get("ImplementationClassUID"):
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return str(ts)


def _text(ds: Dataset, keyword: str) -> str | None:
    """A Type 2/3 attribute as text, None when absent, empty or undecodable (never an error)."""
    try:
        value = peek(ds, _tag(keyword))  # UIDs, codes, dates and numbers read without decoding the element
    except Exception:
        return None
    if value is None:
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    text = text.strip("\0 ")
    return text or None


def _int(ds: Dataset, keyword: str) -> int | None:
    text = _text(ds, keyword)
    if text is None:
        return None
    try:
        return int(float(text.split("\\")[0]))
    except ValueError:
        return None


def _text_match(column: Any, pattern: str) -> ColumnElement[bool]:
    """DICOM matching (PS3.4 C.2.2.2): ``*`` any run, ``?`` one character, else exact; case-insensitive."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    like = escaped.replace("*", "%").replace("?", "_")
    return func.lower(column).like(like.lower(), escape="\\")


def _date_range(value: Any) -> tuple[str | None, str | None]:
    """``YYYYMMDD``, ``A-B``, ``-B``, ``A-`` or a (first, last) pair -> inclusive bounds."""
    if isinstance(value, tuple | list) and len(value) == 2:
        first, last = (None if v in (None, "") else str(v).replace("-", "") for v in value)
    else:
        text = str(value).strip()
        if "-" in text:
            a, _, b = text.partition("-")
            first, last = a or None, b or None
        else:
            first = last = text
    for day in (first, last):
        if day is not None and not _DATE.fullmatch(day):
            raise MedsightError(f"StudyDate filter {value!r} is not YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
    if first is None and last is None:
        raise MedsightError("a StudyDate range needs at least one end")
    return first, last


def _mtime(path: Path) -> float:
    """Modification time, or +inf for a file that vanished (it is then never taken for an old one)."""
    try:
        return path.stat().st_mtime
    except OSError:
        return float("inf")


def _disk_error(exc: OSError, root: Path) -> StorageUnavailable:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageUnavailable("disk full while writing an instance; instance refused", root)
    return StorageUnavailable(f"cannot write an instance: {exc.strerror or exc}", root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs_durably(path: Path, root: Path) -> None:
    """Create ``path`` and missing parents below ``root``, fsyncing each parent so the new entries survive."""
    missing: list[Path] = []
    p = path
    while not p.exists() and p != root and root in p.parents:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
        _fsync_dir(d.parent)


__all__: Sequence[str] = (
    "COMPLETE",
    "PROCESSED",
    "RECEIVING",
    "InstanceRecord",
    "SeriesRecord",
    "StoredInstance",
    "StudyRecord",
    "StudyStore",
)
