"""The durable job queue and the database layer, each on SQLite (WAL) and on a real PostgreSQL server.

Concurrent claims from threads and from processes, retries with back-off, the dead letter that never blocks,
expired leases, graceful re-queueing, dedupe keys, and migrations that run once.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, text

from medsight.errors import MedsightError
from medsight.serving.database import migrate, open_database, schema_versions
from medsight.serving.jobs import JobQueue, JobState


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Engine, str | None, Path]]:
    """(engine, url or None for SQLite, data dir) on each backend."""
    url = None if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = open_database(url, tmp_path)
    yield engine, url, tmp_path
    engine.dispose()


# ------------------------------------------------------------------------------------------------ database


def test_sqlite_connections_are_wal_full_sync_with_foreign_keys(tmp_path: Path) -> None:
    engine = open_database(None, tmp_path / "data")
    with engine.connect() as conn:
        pragmas = {
            p: conn.exec_driver_sql(f"PRAGMA {p}").scalar()
            for p in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        }
    assert pragmas == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 30000}
    assert (tmp_path / "data" / "medsight.db").exists()
    engine.dispose()


def test_bad_or_unreachable_database_urls_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MedsightError, match="not a database URL"):
        open_database("not a url", tmp_path)
    with pytest.raises(MedsightError, match='"mysql" databases are not supported'):
        open_database("mysql://u@localhost/x", tmp_path)
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(MedsightError, match="cannot open database postgresql\\+psycopg://medsight:\\*\\*\\*@") as err:
        open_database(f"postgresql://medsight:s3cret-pw@127.0.0.1:{port}/medsight", tmp_path)
    assert "s3cret-pw" not in str(err.value) and "\n" not in str(err.value)


def test_migrations_run_once_in_order_and_refuse_a_newer_schema(db: tuple[Engine, str | None, Path]) -> None:
    engine, url, data = db
    ran: list[str] = []

    def step1(conn: Connection) -> None:
        ran.append("1")
        conn.execute(text("CREATE TABLE demo_items (id INTEGER PRIMARY KEY)"))

    def step2(conn: Connection) -> None:
        ran.append("2")
        conn.execute(text("ALTER TABLE demo_items ADD COLUMN name VARCHAR(20)"))

    def broken(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE demo_broken (id INTEGER)"))
        raise RuntimeError("step fails half-way")

    assert migrate(engine, "demo", [step1]) == 1
    assert migrate(engine, "demo", [step1]) == 1
    assert migrate(engine, "demo", [step1, step2]) == 2 and ran == ["1", "2"]
    with pytest.raises(RuntimeError):
        migrate(engine, "demo", [step1, step2, broken])
    assert schema_versions(engine)["demo"] == 2  # the failed step left the previous version (and no table)
    with engine.connect() as conn:
        assert not engine.dialect.has_table(conn, "demo_broken")
    with pytest.raises(MedsightError, match="demo schema is version 2, newer than this medsight knows"):
        migrate(engine, "demo", [step1])

    JobQueue(engine)
    again = open_database(url, data)  # a second process opening the same database
    JobQueue(again)
    assert schema_versions(again)["jobs"] == 1
    again.dispose()


# ------------------------------------------------------------------------------------------------ claiming


def test_four_threads_never_claim_the_same_job(db: tuple[Engine, str | None, Path]) -> None:
    engine, _, _ = db
    queue = JobQueue(engine)
    ids = {queue.enqueue("inference", f"1.2.{i}", "demo").id for i in range(40)}
    claimed: list[list[int]] = [[] for _ in range(4)]
    barrier = threading.Barrier(4)

    def worker(i: int) -> None:
        barrier.wait()
        while (job := queue.claim(f"w{i}")) is not None:
            claimed[i].append(job.id)
            queue.complete(job.id, {"worker": i})

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [j for c in claimed for j in c]
    assert sorted(flat) == sorted(ids)
    assert queue.counts() == {"queued": 0, "running": 0, "done": 40, "failed": 0, "dead": 0}
    assert all(queue.get(j).result == {"worker": i} for i, c in enumerate(claimed) for j in c)  # type: ignore[union-attr]


_CLAIMER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from medsight.serving.database import open_database
    from medsight.serving.jobs import JobQueue

    url, data, go, name = sys.argv[1] or None, Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    queue = JobQueue(open_database(url, data))
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.01)
    while (job := queue.claim(name)) is not None:
        print(job.id, flush=True)
        queue.complete(job.id, {"by": name})
    """
)


def test_two_processes_never_claim_the_same_job(db: tuple[Engine, str | None, Path]) -> None:
    engine, url, data = db
    queue = JobQueue(engine)
    ids = {queue.enqueue("export", "1.2.3", f"pacs{i}").id for i in range(60)}
    go = data / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, url or "", str(data), str(go), f"proc{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.stderr and p.stderr.read()
        go.touch()  # both start claiming at once
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outputs]
    per_process = [[int(x) for x in out.split()] for out, _ in outputs]
    flat = [j for ids_ in per_process for j in ids_]
    assert sorted(flat) == sorted(ids)  # each job exactly once over both processes
    assert {queue.get(j).result["by"] for j in flat} <= {"proc0", "proc1"}  # type: ignore[index,union-attr]


# ------------------------------------------------------------------------------------------------ failures


def test_retry_backoff_and_dead_letter_that_never_blocks(db: tuple[Engine, str | None, Path]) -> None:
    engine, _, _ = db
    queue = JobQueue(engine, max_attempts=3, backoff_s=10, backoff_max_s=15)
    t = 1_000.0
    job = queue.enqueue("export", "1.2.3", "pacs", {"files": ["a.dcm"]}, now=t)
    behind = queue.enqueue("export", "1.2.4", "pacs", now=t + 1)

    claimed = queue.claim("w", now=t + 2)
    assert claimed is not None and claimed.id == job.id and claimed.attempts == 1
    failed = queue.fail(job.id, "association rejected", now=t + 2)
    assert failed.state == JobState.FAILED and failed.last_error == "association rejected"
    assert t + 2 + 5 <= failed.not_before <= t + 2 + 10  # attempt 1: 10 s ceiling, jitter in its upper half
    # the job behind runs while the first one backs off
    nxt = queue.claim("w", now=t + 3)
    assert nxt is not None and nxt.id == behind.id
    assert queue.claim("w", now=failed.not_before - 0.01) is None

    second = queue.claim("w", now=failed.not_before)
    assert second is not None and second.id == job.id and second.attempts == 2
    failed = queue.fail(job.id, "timeout", now=failed.not_before)
    assert failed.state == JobState.FAILED
    assert failed.updated + 7.5 <= failed.not_before <= failed.updated + 15  # 20 s capped at backoff_max_s=15
    third = queue.claim("w", now=failed.not_before)
    assert third is not None and third.attempts == 3
    dead = queue.fail(job.id, "timeout", now=failed.not_before)
    assert dead.state == JobState.DEAD and dead.attempts == 3
    assert queue.claim("w", now=t + 10_000) is None  # dead jobs are not claimed

    later = queue.enqueue("export", "1.2.5", "pacs", now=t + 20_000)  # and never block newer work
    got = queue.claim("w", now=t + 20_001)
    assert got is not None and got.id == later.id
    assert queue.fail(later.id, "destination unknown", retryable=False, now=t + 20_002).state == JobState.DEAD

    retried = queue.retry(job.id, now=t + 30_000)
    assert retried.state == JobState.QUEUED and retried.attempts == 0
    with pytest.raises(MedsightError, match="only dead or failed jobs can be retried"):
        queue.retry(job.id)
    with pytest.raises(MedsightError, match="no job 999999"):
        queue.retry(999999)
    assert [j.id for j in queue.list(state="dead")] == [later.id]
    assert queue.counts()["dead"] == 1 and queue.counts()["queued"] == 1


def test_expired_lease_counts_as_a_failed_attempt_and_stale_reports_are_ignored(
    db: tuple[Engine, str | None, Path],
) -> None:
    engine, _, _ = db
    queue = JobQueue(engine, timeout_s=30, max_attempts=2, backoff_s=1, backoff_max_s=1)
    t = 5_000.0
    job = queue.enqueue("inference", "1.2.3", "demo", now=t)
    claimed = queue.claim("crashed-worker", now=t)
    assert claimed is not None and claimed.lease_expires == t + 30
    assert queue.requeue_expired(now=t + 29) == 0
    assert queue.requeue_expired(now=t + 31) == 1
    after = queue.get(job.id)
    assert after is not None and after.state == JobState.FAILED and after.attempts == 1
    assert after.last_error is not None and "lease expired after 30 s" in after.last_error

    again = queue.claim("healthy-worker", now=t + 40)
    assert again is not None and again.worker == "healthy-worker"
    # the crashed worker's late report must not disturb the new run
    assert queue.fail(job.id, "late report", worker="crashed-worker", now=t + 41).state == JobState.RUNNING
    assert queue.complete(job.id, {"stale": True}, worker="crashed-worker").state == JobState.RUNNING
    assert queue.requeue_expired(now=t + 80) == 1
    gone = queue.get(job.id)
    assert gone is not None and gone.state == JobState.DEAD  # the second expiry used the last attempt


def test_requeue_running_puts_jobs_back_without_counting_an_attempt(db: tuple[Engine, str | None, Path]) -> None:
    engine, _, _ = db
    queue = JobQueue(engine)
    a = queue.enqueue("inference", "1.2.3", "demo", now=1.0)
    b = queue.enqueue("inference", "1.2.4", "demo", now=2.0)
    assert queue.claim("w1", now=3.0) is not None and queue.claim("w2", now=3.0) is not None
    assert queue.requeue_running("w1", now=4.0) == 1
    back = queue.get(a.id)
    assert back is not None and (back.state, back.attempts, back.worker) == (JobState.QUEUED, 0, None)
    assert queue.requeue_running(now=5.0) == 1
    assert queue.counts()["queued"] == 2 and queue.oldest_queued_age(now=11.0) == 10.0
    first = queue.claim("w3", now=6.0)
    assert first is not None and first.id == a.id  # back in its original place in line
    assert queue.get(b.id).attempts == 0  # type: ignore[union-attr]


def test_dedupe_key_gives_one_job_unless_a_rerun_is_asked(db: tuple[Engine, str | None, Path]) -> None:
    engine, _, _ = db
    queue = JobQueue(engine)
    first = queue.enqueue("inference", "1.2.3", "demo", {"series": ["1.2.3.1"]}, dedupe_key="1.2.3/demo/0")
    same = queue.enqueue("inference", "1.2.3", "demo", {"series": ["other"]}, dedupe_key="1.2.3/demo/0")
    assert same.id == first.id and same.payload == {"series": ["1.2.3.1"]}
    claimed = queue.claim("w")
    assert claimed is not None
    queue.complete(first.id, {"results": 1})
    assert queue.enqueue("inference", "1.2.3", "demo", dedupe_key="1.2.3/demo/0").state == JobState.DONE
    r1 = queue.enqueue("inference", "1.2.3", "demo", dedupe_key="1.2.3/demo/0", rerun=True)
    r2 = queue.enqueue("inference", "1.2.3", "demo", dedupe_key="1.2.3/demo/0", rerun=True)
    assert (r1.dedupe_key, r2.dedupe_key) == ("1.2.3/demo/0#rerun1", "1.2.3/demo/0#rerun2")
    assert len({first.id, r1.id, r2.id}) == 3
    assert [j.id for j in queue.list(study_uid="1.2.3")] == [first.id, r1.id, r2.id]
    assert queue.enqueue("inference", "1.2.3", "demo").dedupe_key is None  # no key: always a new job
    assert queue.oldest_queued_age() is not None and queue.list(study_uid="9.9") == []


def test_bad_queue_settings_are_refused(tmp_path: Path) -> None:
    engine = open_database(None, tmp_path)
    with pytest.raises(MedsightError, match="job queue settings"):
        JobQueue(engine, max_attempts=0)
    engine.dispose()


def test_claim_filters_by_kind(tmp_path: Path) -> None:
    engine = open_database(None, tmp_path)
    queue = JobQueue(engine)
    queue.enqueue("inference", "1.2.3", "demo", now=1.0)
    export = queue.enqueue("export", "1.2.3", "pacs", now=2.0)
    got = queue.claim("exporter", kinds=["export"], now=3.0)
    assert got is not None and got.id == export.id
    assert queue.claim("exporter", kinds=["export"], now=3.0) is None
    engine.dispose()
