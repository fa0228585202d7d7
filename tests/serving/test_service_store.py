"""The study store: durable Part-10 files + rows, UID checks, queries, study completeness, late instances, full disk.

Real peers only: a real SQLite file in WAL mode, a real PostgreSQL server for the dialect-specific SQL, a real
tmpfs for ENOSPC and a real ``kill -9`` of a storing process.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import Engine, func, select

from medsight.errors import MedsightError
from medsight.serving.database import open_database
from medsight.serving.store import COMPLETE, PROCESSED, RECEIVING, StudyStore, instances_table, studies_table
from needs import unavailable


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ct(shared_data: Path) -> Dataset:
    return pydicom.dcmread(shared_data / "dicom_samples" / "pydicom_test_files" / "CT_small.dcm")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = open_database(None, tmp_path / "data")
    yield eng
    eng.dispose()


def copy_of(ds: Dataset, study: str | None = None, series: str | None = None, **values: object) -> Dataset:
    """``ds`` with a new SOPInstanceUID (and the given study/series UIDs and attribute values)."""
    out = pydicom.dcmread(_part10(ds))
    out.SOPInstanceUID = generate_uid()
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    if study:
        out.StudyInstanceUID = study
    if series:
        out.SeriesInstanceUID = series
    for k, v in values.items():
        setattr(out, k, v)
    return out


def _part10(ds: Dataset) -> io.BytesIO:
    """A Part-10 copy in memory (a temporary file here once left one .dcm per call in /tmp)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return buffer


def count_rows(engine: Engine, table: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------------ storing


def test_store_writes_part10_with_its_transfer_syntax_and_records_rows(
    engine: Engine, tmp_path: Path, ct: Dataset
) -> None:
    store = StudyStore(engine, tmp_path / "instances", min_free_bytes=0)
    ds = copy_of(ct)
    ds.BodyPartExamined = "CHEST"
    stored = store.store(ds, calling_ae="STORESCU", peer="127.0.0.1")
    assert (
        stored.path == tmp_path / "instances" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    )
    back = pydicom.dcmread(stored.path)
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    assert back.file_meta.TransferSyntaxUID == ct.file_meta.TransferSyntaxUID
    assert back.file_meta.MediaStorageSOPClassUID == ct.SOPClassUID
    assert (back.pixel_array == ct.pixel_array).all()
    assert stored.size == stored.path.stat().st_size and not stored.duplicate and not stored.late
    assert not [p for p in files_under(tmp_path / "instances") if p.suffix == ".tmp"]

    study = store.study(ds.StudyInstanceUID)
    assert study is not None
    assert (study.patient_id, study.patient_name, study.study_date) == (
        str(ct.PatientID),
        str(ct.PatientName),
        ct.StudyDate,
    )
    assert study.state == RECEIVING and study.modalities == ("CT",) and (study.n_series, study.n_instances) == (1, 1)
    [series] = store.series(ds.StudyInstanceUID)
    assert (series.modality, series.body_part, series.calling_ae, series.n_instances) == ("CT", "CHEST", "STORESCU", 1)
    assert series.sop_classes == (ct.SOPClassUID,) and series.series_number == int(ct.SeriesNumber)
    [inst] = store.instances(ds.StudyInstanceUID)
    assert (inst.sop_uid, inst.transfer_syntax, inst.path) == (
        ds.SOPInstanceUID,
        ct.file_meta.TransferSyntaxUID,
        stored.path,
    )
    assert store.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == stored.path
    assert store.instance_path(ds.StudyInstanceUID, "1.2.3", ds.SOPInstanceUID) is None

    again = copy_of(ds)
    again.SOPInstanceUID = ds.SOPInstanceUID
    again.InstanceNumber = 42
    dup = store.store(again, calling_ae="STORESCU", peer="127.0.0.1")
    assert dup.duplicate and dup.path == stored.path
    assert count_rows(engine, instances_table) == 1
    assert pydicom.dcmread(dup.path).InstanceNumber == 42
    assert store.instances(ds.StudyInstanceUID)[0].instance_number == 42


def test_dataset_without_file_meta_and_type2_attributes_missing_or_empty(
    engine: Engine, tmp_path: Path, ct: Dataset
) -> None:
    """As received over DIMSE, without Part-10 meta; PatientBirthDate/PatientSex absent, SeriesNumber empty."""
    store = StudyStore(engine, tmp_path / "instances", min_free_bytes=0)
    ds = copy_of(ct)
    del ds.file_meta
    for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyDescription"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.SeriesNumber = ""
    ds.ReferringPhysicianName = ""
    stored = store.store(ds, calling_ae="", peer="")
    back = pydicom.dcmread(stored.path)
    assert back.file_meta.TransferSyntaxUID in (pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRLittleEndian)
    study = store.study(ds.StudyInstanceUID)
    assert study is not None
    assert (study.patient_birth_date, study.patient_sex, study.accession_number, study.referring_physician) == (
        None,
        None,
        None,
        None,
    )
    [series] = store.series(ds.StudyInstanceUID)
    assert series.series_number is None and series.calling_ae is None


@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        ("SOPInstanceUID", None, "no SOPInstanceUID"),
        ("StudyInstanceUID", None, "no StudyInstanceUID"),
        ("SeriesInstanceUID", "", "no SeriesInstanceUID"),
        ("SOPClassUID", None, "no SOPClassUID"),
        ("StudyInstanceUID", "../../etc", "StudyInstanceUID is not a valid DICOM UID"),
        ("SeriesInstanceUID", "1.2..3", "SeriesInstanceUID is not a valid DICOM UID"),
        ("SOPInstanceUID", "1." + "2" * 70, "SOPInstanceUID is not a valid DICOM UID"),
    ],
)
def test_missing_or_invalid_uids_are_refused_without_patient_data(
    engine: Engine, tmp_path: Path, ct: Dataset, keyword: str, value: str | None, expected: str
) -> None:
    store = StudyStore(engine, tmp_path / "instances", min_free_bytes=0)
    ds = copy_of(ct)
    if keyword == "SOPClassUID":
        del ds.file_meta  # the class must not come from the meta either
    if value is None:
        delattr(ds, keyword)
    else:
        setattr(ds, keyword, value)
    with pytest.raises(MedsightError, match=expected) as err:
        store.store(ds, calling_ae="A", peer="p")
    for identifier in (str(ct.PatientName), str(ct.PatientID)):
        assert identifier not in str(err.value)
    if value:
        assert value not in str(err.value)
    assert files_under(tmp_path / "instances") == []
    assert count_rows(engine, instances_table) == 0 and count_rows(engine, studies_table) == 0


# ------------------------------------------------------------------------------------------------ queries


def test_study_queries_exact_wildcard_dates_modalities_and_paging(
    engine: Engine, tmp_path: Path, ct: Dataset, shared_data: Path
) -> None:
    clock = Clock()
    store = StudyStore(engine, tmp_path / "instances", min_free_bytes=0, clock=clock)
    mr = pydicom.dcmread(shared_data / "dicom_samples" / "pydicom_test_files" / "MR_small.dcm")
    rows = [
        ("SMITH^ANN", "P1", "ACC1", "20200115", ct),
        ("SMITHERS^BOB", "P2", "ACC2", "20210301", ct),
        ("JONES^CAT", "P3", "ACC3", "20210620", mr),
    ]
    uids = []
    for name, pid, acc, date, src in rows:
        clock.now += 1
        ds = copy_of(
            src,
            study=generate_uid(),
            series=generate_uid(),
            PatientName=name,
            PatientID=pid,
            AccessionNumber=acc,
            StudyDate=date,
        )
        store.store(ds, calling_ae="A", peer="p")
        uids.append(ds.StudyInstanceUID)

    def found(**filters: object) -> list[str]:
        return [s.study_uid for s in store.studies(**filters)]

    assert found() == uids[::-1]  # most recent first
    assert found(patient_name="SMITH^ANN") == [uids[0]]
    assert found(patient_name="smith*") == [uids[1], uids[0]]
    assert found(patient_name="SMITH?RS^*") == [uids[1]]
    assert found(patient_id="P3") == [uids[2]] and found(accession_number="ACC%") == []
    assert found(study_date="20210101-20211231") == [uids[2], uids[1]]
    assert found(study_date="-20201231") == [uids[0]] and found(study_date="20210620") == [uids[2]]
    assert found(study_date=("20210301", None)) == [uids[2], uids[1]]
    assert found(modality="MR") == [uids[2]] and found(modalities_in_study="CT,MR") == uids[::-1]
    assert found(study_uids=[uids[0], uids[2]]) == [uids[2], uids[0]]
    assert found(limit=1, offset=1) == [uids[1]] and found(patient_id="") == uids[::-1]
    with pytest.raises(MedsightError, match="unknown study filter 'PatientAge'"):
        store.studies(PatientAge="040Y")
    with pytest.raises(MedsightError, match="StudyDate filter"):
        store.studies(study_date="2021-01-01")


# ------------------------------------------------------------------------------------------------ completeness


def test_quiet_period_completion_explicit_completion_and_processing(
    engine: Engine, tmp_path: Path, ct: Dataset
) -> None:
    clock = Clock(100.0)
    store = StudyStore(engine, tmp_path / "instances", min_free_bytes=0, clock=clock)
    a, b = copy_of(ct, study=generate_uid()), copy_of(ct, study=generate_uid())
    store.store(a, calling_ae="A", peer="p")
    clock.now = 105.0
    store.store(b, calling_ae="A", peer="p")
    clock.now = 108.0
    store.store(copy_of(a), calling_ae="A", peer="p")  # a's last instance now at 108
    assert store.complete_quiet_studies(10, now=115.5) == [b.StudyInstanceUID]
    assert store.complete_quiet_studies(10, now=115.5) == []
    assert store.complete_quiet_studies(10, now=118.5) == [a.StudyInstanceUID]
    assert store.studies_in_state(COMPLETE) == [b.StudyInstanceUID, a.StudyInstanceUID]  # quiet longest first
    assert store.mark_processed(b.StudyInstanceUID) and not store.mark_processed(b.StudyInstanceUID)

    c = copy_of(ct, study=generate_uid())
    store.store(c, calling_ae="A", peer="p")
    assert store.mark_complete(c.StudyInstanceUID) and not store.mark_complete(c.StudyInstanceUID)
    assert not store.mark_complete("1.2.3.4")
    record = store.study(c.StudyInstanceUID)
    assert record is not None and record.state == COMPLETE and record.completed_at == clock.now


def test_concurrent_completion_hands_each_study_to_one_caller(engine: Engine, tmp_path: Path, ct: Dataset) -> None:
    clock = Clock(100.0)
    store = StudyStore(engine, tmp_path / "instances", min_free_bytes=0, clock=clock)
    studies = set()
    for k in range(24):
        clock.now = 100.0 + k / 24
        ds = copy_of(ct, study=generate_uid())
        store.store(ds, calling_ae="A", peer="p")
        studies.add(ds.StudyInstanceUID)
    barrier = threading.Barrier(4)
    got: list[list[str]] = [[] for _ in range(4)]

    def caller(i: int) -> None:
        other = StudyStore(open_database(None, tmp_path / "data"), tmp_path / "instances", min_free_bytes=0)
        barrier.wait()
        for step in range(24):  # studies become quiet one by one while the callers race
            got[i].extend(other.complete_quiet_studies(0.5, now=100.5 + step / 24 + 0.001))
        other.engine.dispose()

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [u for g in got for u in g]
    assert sorted(flat) == sorted(studies)  # every study once, none twice


def test_late_instances_are_counted_or_reopen_the_study(engine: Engine, tmp_path: Path, ct: Dataset) -> None:
    clock = Clock(100.0)
    counted = StudyStore(engine, tmp_path / "instances", min_free_bytes=0, clock=clock)
    ds = copy_of(ct, study=generate_uid())
    counted.store(ds, calling_ae="A", peer="p")
    assert counted.mark_complete(ds.StudyInstanceUID) and counted.mark_processed(ds.StudyInstanceUID)
    clock.now = 200.0
    late = counted.store(copy_of(ds), calling_ae="A", peer="p")
    assert late.late and not late.rerun and late.study_state == PROCESSED
    record = counted.study(ds.StudyInstanceUID)
    assert record is not None and (record.state, record.late_count, record.rerun_count) == (PROCESSED, 1, 0)
    assert record.n_instances == 2

    result = copy_of(ds, series=generate_uid(), Modality="SR")
    stored = counted.store(result, calling_ae="MEDSIGHT", peer="medsight", result=True)
    assert not stored.late and stored.study_state == PROCESSED
    assert [s.is_result for s in counted.series(ds.StudyInstanceUID)] == [False, True]

    rerunning = StudyStore(engine, tmp_path / "instances", min_free_bytes=0, rerun_on_late=True, clock=clock)
    clock.now = 300.0
    again = rerunning.store(copy_of(ds), calling_ae="A", peer="p")
    assert again.late and again.rerun and again.study_state == RECEIVING
    record = rerunning.study(ds.StudyInstanceUID)
    assert record is not None and (record.state, record.late_count, record.rerun_count) == (RECEIVING, 2, 1)
    assert rerunning.complete_quiet_studies(10, now=311.0) == [ds.StudyInstanceUID]


# ------------------------------------------------------------------------------------------------ full disk


def test_too_little_free_space_refuses_the_instance(engine: Engine, tmp_path: Path, ct: Dataset) -> None:
    store = StudyStore(engine, tmp_path / "instances", min_free_bytes=10**18)
    with pytest.raises(MedsightError, match="disk full"):
        store.store(copy_of(ct), calling_ae="A", peer="p")
    assert files_under(tmp_path / "instances") == [] and count_rows(engine, instances_table) == 0


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB tmpfs (we are root in CI); a failed mount fails under CI."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        unavailable(f"cannot mount a tmpfs for the disk-full test: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_real_enospc_leaves_no_partial_file_and_no_row(engine: Engine, tiny_tmpfs: Path, ct: Dataset) -> None:
    store = StudyStore(engine, tiny_tmpfs / "instances", min_free_bytes=0)
    first = store.store(copy_of(ct), calling_ae="A", peer="p")  # it fits
    filler = tiny_tmpfs / "filler"
    with open(filler, "wb", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 4096)
    os.truncate(filler, filler.stat().st_size - 16 * 1024)  # leave ~16 kB: less than one 39 kB CT instance
    ds = copy_of(ct)
    with pytest.raises(MedsightError, match="disk full"):
        store.store(ds, calling_ae="A", peer="p")
    left = [p for p in files_under(tiny_tmpfs / "instances")]
    assert left == [first.path]
    assert store.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) is None
    assert count_rows(engine, instances_table) == 1


# ------------------------------------------------------------------------------------------------ kill -9

_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import pydicom
    from pydicom.uid import generate_uid
    from medsight.serving.database import open_database
    from medsight.serving.store import StudyStore

    data, sample = Path(sys.argv[1]), sys.argv[2]
    store = StudyStore(open_database(None, data), data / "instances", min_free_bytes=0)
    study = generate_uid()
    print("ready", flush=True)
    while True:
        ds = pydicom.dcmread(sample)
        ds.StudyInstanceUID, ds.SOPInstanceUID = study, generate_uid()
        store.store(ds, calling_ae="KILLME", peer="127.0.0.1")
        print(ds.SOPInstanceUID, flush=True)
    """
)


def test_kill_9_after_store_returned_loses_nothing(tmp_path: Path, shared_data: Path) -> None:
    data = tmp_path / "data"
    sample = shared_data / "dicom_samples" / "pydicom_test_files" / "CT_small.dcm"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(data), str(sample)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acknowledged: list[str] = []
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 120
        for line in child.stdout:
            line = line.strip()
            if line != "ready":
                acknowledged.append(line)
            if len(acknowledged) >= 25 or time.monotonic() > deadline:
                break
        os.kill(child.pid, signal.SIGKILL)  # mid-run: it is storing the next instance now
        rest, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    acknowledged += [u for u in rest.split() if u != "ready"]
    assert child.returncode == -signal.SIGKILL
    assert len(acknowledged) >= 25, err[-2000:]

    engine = open_database(None, data)
    store = StudyStore(engine, data / "instances", min_free_bytes=0)
    recorded = {i.sop_uid: i for i in store.instances(store.studies()[0].study_uid)}
    for uid in acknowledged:
        assert uid in recorded, f"acknowledged instance {uid} has no row after kill -9"
        assert pydicom.dcmread(recorded[uid].path).SOPInstanceUID == uid
    # at most the one instance being stored when killed can be on disk without having been acknowledged
    assert len(recorded) - len(acknowledged) in (0, 1)
    engine.dispose()


# ------------------------------------------------------------------------------------------------ PostgreSQL


def test_store_on_postgresql(postgres_url: str, tmp_path: Path, ct: Dataset) -> None:
    """The dialect-specific upserts and the conditional completion UPDATE on a real PostgreSQL."""
    engine = open_database(postgres_url, tmp_path)
    clock = Clock(100.0)
    store = StudyStore(engine, tmp_path / "instances", min_free_bytes=0, clock=clock)
    StudyStore(engine, tmp_path / "instances", min_free_bytes=0)  # migrations are idempotent
    ds = copy_of(ct, study=generate_uid(), PatientName="SMITH^ANN")
    assert not store.store(ds, calling_ae="A", peer="p").duplicate
    again = copy_of(ds)
    again.SOPInstanceUID = ds.SOPInstanceUID
    assert store.store(again, calling_ae="A", peer="p").duplicate
    store.store(copy_of(ds), calling_ae="A", peer="p")
    assert [s.n_instances for s in store.studies(patient_name="smith*", study_date=(ct.StudyDate, None))] == [2]
    assert store.complete_quiet_studies(5, now=104) == [] and store.complete_quiet_studies(5, now=106) == [
        ds.StudyInstanceUID
    ]
    assert store.mark_processed(ds.StudyInstanceUID)
    assert store.store(copy_of(ds), calling_ae="A", peer="p").late
    engine.dispose()


# ------------------------------------------------------------------------------------------------ power failure


def test_instance_files_whose_rows_were_lost_are_recorded_when_the_store_opens(
    engine: Engine, tmp_path: Path, ct: Dataset
) -> None:
    """A received instance's row is committed without a disk flush (its file is flushed first): a power failure may
    lose the row but not the file. Opening the store records such files, once; a stray file is left alone."""
    root = tmp_path / "instances"
    store = StudyStore(engine, root, min_free_bytes=0)
    study, series = generate_uid(), generate_uid()
    kept = store.store(copy_of(ct, study=study, series=series), calling_ae="A", peer="p")
    lost = copy_of(ct, study=study, series=series)
    lost_path = root / study / series / f"{lost.SOPInstanceUID}.dcm"
    lost.save_as(lost_path, enforce_file_format=True)  # on disk, acknowledged, but its row never reached the disk
    young = copy_of(ct, study=study, series=series)
    young_path = root / study / series / f"{young.SOPInstanceUID}.dcm"
    young.save_as(young_path, enforce_file_format=True)  # just renamed in by a live writer, its row on the way
    old = time.time() - 60
    os.utime(lost_path, (old, old))  # written before the power failure
    (root / study / series / "notes.txt").write_text("not an instance")
    (root / study / series / "1.2.3.dcm").write_bytes(b"not DICOM")  # named like one, unreadable: skipped
    assert count_rows(engine, instances_table) == 1

    reopened = StudyStore(engine, root, min_free_bytes=0)
    assert count_rows(engine, instances_table) == 2
    assert reopened.instance_path(study, series, lost.SOPInstanceUID) == lost_path
    assert reopened.instance_path(study, series, kept.sop_uid) == kept.path
    assert reopened.study(study) is not None and reopened.study(study).state == RECEIVING  # type: ignore[union-attr]
    assert reopened.instance_path(study, series, young.SOPInstanceUID) is None  # left to its writer
    assert reopened.record_unrecorded() == 0  # idempotent
    assert count_rows(engine, instances_table) == 2


def test_received_rows_skip_the_disk_flush_and_the_connection_returns_to_full(
    engine: Engine, tmp_path: Path, ct: Dataset
) -> None:
    """The relaxed commit is scoped to the instance's transaction: the pooled connection is back to FULL after."""
    from medsight.serving.database import write_transaction

    store = StudyStore(engine, tmp_path / "instances", min_free_bytes=0)
    seen: list[int] = []
    with write_transaction(engine, flush_to_disk=False) as conn:
        seen.append(int(conn.exec_driver_sql("PRAGMA synchronous").scalar_one()))
    store.store(copy_of(ct), calling_ae="A", peer="p")
    with engine.connect() as conn:
        seen.append(int(conn.exec_driver_sql("PRAGMA synchronous").scalar_one()))
    assert seen == [1, 2]  # NORMAL inside the relaxed transaction, FULL on the same pool afterwards
