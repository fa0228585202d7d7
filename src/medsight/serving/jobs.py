"""The durable job queue: states, leases, retries with back-off and a dead-letter state, in the service database.

Why in the database and not in memory: a job survives a crash of the service (a ``kill -9`` mid-run leaves a
``running`` row whose lease expires, and the job runs again), and several worker threads or processes share one
queue safely: :meth:`JobQueue.claim` is one transaction that locks the row it takes (SQLite: ``BEGIN IMMEDIATE``;
PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED``), so no job is ever handed to two workers.

Life of a job: ``queued`` → ``running`` (claimed; ``attempts`` counts claims) → ``done``, or → ``failed`` (waiting
for its retry after exponential back-off with jitter) → ``running`` again …, or → ``dead`` after ``max_attempts``
or a non-retryable error. Dead jobs wait for an operator (:meth:`JobQueue.retry`) and never block the jobs behind
them. ``dedupe_key`` makes enqueueing idempotent (the same study routed twice gives one job, hence one result set)
unless a re-run is asked for.

Errors and results are stored as given: callers pass strings and dicts without patient identifiers (UIDs, counts,
route and destination names, exception types), since ``/healthz``, the CLI and the logs show them.
"""

from __future__ import annotations

import builtins
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    select,
    update,
)

from medsight.errors import MedsightError
from medsight.serving.database import insert, migrate, write_transaction

#: Longest error text kept per job (the newest attempt's).
MAX_ERROR_CHARS = 2000


class JobState(StrEnum):
    """Where a job is; ``failed`` is a failed attempt waiting for its retry, ``dead`` the dead letter."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    DEAD = "dead"


#: States a worker may claim from (when due).
_CLAIMABLE = (JobState.QUEUED.value, JobState.FAILED.value)

_meta = MetaData()
jobs_table = Table(
    "jobs",
    _meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(64), nullable=False),
    Column("study_uid", String(64), nullable=False),
    Column("target", String(200), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("not_before", Float, nullable=False),
    Column("lease_expires", Float),
    Column("worker", String(200)),
    Column("last_error", Text),
    Column("result", JSON),
    Column("dedupe_key", String(400), unique=True),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Index("ix_jobs_due", "state", "not_before", "id"),
    Index("ix_jobs_study", "study_uid"),
)


def _create_v1(conn: Connection) -> None:
    _meta.create_all(conn, tables=[jobs_table])


#: The queue's schema steps (append, never edit).
MIGRATIONS = (_create_v1,)


@dataclass(frozen=True)
class Job:
    """One job's row."""

    id: int
    kind: str
    study_uid: str
    target: str
    payload: dict[str, Any]
    state: JobState
    attempts: int
    max_attempts: int
    not_before: float
    lease_expires: float | None
    worker: str | None
    last_error: str | None
    result: dict[str, Any] | None
    dedupe_key: str | None
    created: float
    updated: float


class JobQueue:
    """Jobs in ``engine``'s database.

    ``timeout_s``: a claimed job's lease; past it, :meth:`requeue_expired` treats the worker as dead or hung.
    ``max_attempts``: claims before a failing job goes dead. ``backoff_s`` / ``backoff_max_s``: the retry delay
    after attempt *n* is ``min(backoff_max_s, backoff_s * 2**(n-1))``, drawn uniformly from its upper half (jitter,
    so jobs failing together do not retry together).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        timeout_s: float = 300,
        max_attempts: int = 5,
        backoff_s: float = 2.0,
        backoff_max_s: float = 300,
        rng: random.Random | None = None,
    ) -> None:
        if timeout_s <= 0 or max_attempts < 1 or backoff_s < 0 or backoff_max_s < backoff_s:
            raise MedsightError(
                "job queue settings: timeout_s > 0, max_attempts >= 1 and 0 <= backoff_s <= backoff_max_s"
            )
        self.engine = engine
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._rng = rng or random.Random()
        migrate(engine, "jobs", MIGRATIONS)

    # ------------------------------------------------------------------------------------------------ producing

    def enqueue(
        self,
        kind: str,
        study_uid: str,
        target: str,
        payload: dict[str, Any] | None = None,
        *,
        dedupe_key: str | None = None,
        rerun: bool = False,
        now: float | None = None,
    ) -> Job:
        """Queue a job; with ``dedupe_key`` an existing job with that key (in any state) is returned instead.

        ``rerun=True`` always queues a new job, keyed ``<dedupe_key>#rerun<n>`` (n = 1, 2, …).
        """
        now = time.time() if now is None else now
        values = {
            "kind": kind,
            "study_uid": study_uid,
            "target": target,
            "payload": dict(payload or {}),
            "state": JobState.QUEUED.value,
            "attempts": 0,
            "max_attempts": self.max_attempts,
            "not_before": now,
            "created": now,
            "updated": now,
        }
        j = jobs_table.c
        with write_transaction(self.engine) as conn:
            if dedupe_key is None:
                new_id = conn.execute(jobs_table.insert().values(**values).returning(j.id)).scalar_one()
                return self._get(conn, new_id)
            if not rerun:
                conn.execute(insert(conn, jobs_table).values(dedupe_key=dedupe_key, **values).on_conflict_do_nothing())
                found = conn.execute(select(jobs_table).where(j.dedupe_key == dedupe_key)).one()
                return _job(found)
            prefix = f"{dedupe_key}#rerun"
            taken = conn.execute(select(func.count()).where(j.dedupe_key.startswith(prefix, autoescape=True)))
            n = int(taken.scalar_one())
            while True:  # another process may take the same suffix between our count and insert
                n += 1
                new_id = conn.execute(
                    insert(conn, jobs_table)
                    .values(dedupe_key=f"{prefix}{n}", **values)
                    .on_conflict_do_nothing()
                    .returning(j.id)
                ).scalar_one_or_none()
                if new_id is not None:
                    return self._get(conn, new_id)

    # ------------------------------------------------------------------------------------------------ working

    def claim(self, worker: str, kinds: Sequence[str] | None = None, now: float | None = None) -> Job | None:
        """Take the job due longest (queued, or failed and past its back-off); None when nothing is due."""
        now = time.time() if now is None else now
        j = jobs_table.c
        query = select(j.id).where(j.state.in_(_CLAIMABLE), j.not_before <= now)
        if kinds is not None:
            query = query.where(j.kind.in_(list(kinds)))
        query = query.order_by(j.not_before, j.id).limit(1).with_for_update(skip_locked=True)
        with write_transaction(self.engine) as conn:
            job_id = conn.execute(query).scalar_one_or_none()
            if job_id is None:
                return None
            conn.execute(
                update(jobs_table)
                .where(j.id == job_id)
                .values(
                    state=JobState.RUNNING.value,
                    attempts=j.attempts + 1,
                    worker=worker,
                    lease_expires=now + self.timeout_s,
                    updated=now,
                )
            )
            return self._get(conn, job_id)

    def complete(
        self, job_id: int, result: dict[str, Any], *, worker: str | None = None, now: float | None = None
    ) -> Job:
        """Record a job's result; it is done. A job already done or dead is left as it is.

        With ``worker`` (the claimer's name, ``job.worker``) the result counts only while that worker still holds
        the job, so a worker whose lease expired cannot close a run another worker has taken over.
        """
        now = time.time() if now is None else now
        j = jobs_table.c
        query = update(jobs_table).where(j.id == job_id, j.state.notin_([JobState.DONE.value, JobState.DEAD.value]))
        if worker is not None:
            query = query.where(j.state == JobState.RUNNING.value, j.worker == worker)
        with write_transaction(self.engine) as conn:
            conn.execute(query.values(state=JobState.DONE.value, result=dict(result), lease_expires=None, updated=now))
            return self._get(conn, job_id)

    def fail(
        self,
        job_id: int,
        error: str,
        *,
        retryable: bool = True,
        worker: str | None = None,
        now: float | None = None,
    ) -> Job:
        """Record a failed attempt of a running job: retried after back-off, or dead; returns the job as it is now.

        Dead when ``retryable`` is False or the job has used ``max_attempts``. A job that is no longer running
        (its lease expired and it was requeued, or it was finished elsewhere) is left as it is, and so is one now
        run by another worker when ``worker`` (``job.worker``) is given: the caller's report is stale.
        ``error`` must not contain patient identifiers (UIDs, names of routes and destinations, exception types).
        """
        now = time.time() if now is None else now
        with write_transaction(self.engine) as conn:
            row = conn.execute(select(jobs_table).where(jobs_table.c.id == job_id).with_for_update()).one_or_none()
            if row is None:
                raise MedsightError(f"no job {job_id}")
            if row.state == JobState.RUNNING.value and (worker is None or row.worker == worker):
                self._fail_row(conn, row, error, retryable, now)
            return self._get(conn, job_id)

    def _fail_row(self, conn: Connection, row: Any, error: str, retryable: bool, now: float) -> None:
        dead = not retryable or row.attempts >= row.max_attempts
        values: dict[str, Any] = {
            "state": JobState.DEAD.value if dead else JobState.FAILED.value,
            "last_error": error[:MAX_ERROR_CHARS],
            "lease_expires": None,
            "updated": now,
        }
        if not dead:
            values["not_before"] = now + self.backoff_delay(row.attempts)
        conn.execute(update(jobs_table).where(jobs_table.c.id == row.id).values(**values))

    def backoff_delay(self, attempts: int) -> float:
        """Seconds before the retry that follows failed attempt number ``attempts`` (1-based), with jitter."""
        ceiling = min(self.backoff_max_s, self.backoff_s * 2.0 ** max(0, attempts - 1))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def requeue_expired(self, now: float | None = None) -> int:
        """Running jobs past their lease (worker crashed or hung) become failed attempts; returns how many."""
        return len(self.take_back_expired(now))

    def take_back_expired(self, now: float | None = None) -> builtins.list[Job]:
        """:meth:`requeue_expired`, returning the jobs it took back as they are now (failed, or dead when that was
        their last attempt), so the service can count the failures and dead letters."""
        now = time.time() if now is None else now
        j = jobs_table.c
        with write_transaction(self.engine) as conn:
            rows = conn.execute(
                select(jobs_table)
                .where(j.state == JobState.RUNNING.value, j.lease_expires < now)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                self._fail_row(
                    conn,
                    row,
                    f"lease expired after {self.timeout_s:g} s (worker {row.worker} timed out or died)",
                    True,
                    now,
                )
            return [self._get(conn, row.id) for row in rows]

    def requeue_running(self, worker: str | None = None, now: float | None = None) -> int:
        """Put running jobs (of ``worker``, or all) back in the queue without counting the attempt.

        For a graceful shutdown (this process's workers) and start-up recovery of a single-process service (all):
        with several service processes on one database, recover with :meth:`requeue_expired` instead.
        """
        now = time.time() if now is None else now
        j = jobs_table.c
        query = update(jobs_table).where(j.state == JobState.RUNNING.value)
        if worker is not None:
            query = query.where(j.worker == worker)
        with write_transaction(self.engine) as conn:
            done = conn.execute(
                query.values(
                    state=JobState.QUEUED.value,
                    attempts=j.attempts - 1,
                    worker=None,
                    lease_expires=None,
                    updated=now,
                )
            )
        return int(done.rowcount)

    def retry(self, job_id: int, now: float | None = None) -> Job:
        """An operator's retry of a dead (or waiting failed) job: queued now with a fresh set of attempts."""
        now = time.time() if now is None else now
        j = jobs_table.c
        with write_transaction(self.engine) as conn:
            row = conn.execute(select(jobs_table).where(j.id == job_id).with_for_update()).one_or_none()
            if row is None:
                raise MedsightError(f"no job {job_id}")
            if row.state not in (JobState.DEAD.value, JobState.FAILED.value):
                raise MedsightError(f"job {job_id} is {row.state}; only dead or failed jobs can be retried")
            conn.execute(
                update(jobs_table)
                .where(j.id == job_id)
                .values(state=JobState.QUEUED.value, attempts=0, not_before=now, worker=None, updated=now)
            )
            return self._get(conn, job_id)

    # ------------------------------------------------------------------------------------------------ reading

    def get(self, job_id: int) -> Job | None:
        """One job, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs_table).where(jobs_table.c.id == job_id)).one_or_none()
        return None if row is None else _job(row)

    def list(
        self, study_uid: str | None = None, state: JobState | str | None = None, *, limit: int | None = None
    ) -> builtins.list[Job]:
        """Jobs, oldest first, optionally of one study and/or in one state."""
        j = jobs_table.c
        query = select(jobs_table).order_by(j.id)
        if study_uid is not None:
            query = query.where(j.study_uid == study_uid)
        if state is not None:
            query = query.where(j.state == JobState(state).value)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [_job(r) for r in conn.execute(query)]

    def counts(self) -> dict[str, int]:
        """Jobs per state, every state present (zero when empty): the queue-depth metrics."""
        out = {s.value: 0 for s in JobState}
        with self.engine.connect() as conn:
            for state, n in conn.execute(select(jobs_table.c.state, func.count()).group_by(jobs_table.c.state)):
                out[state] = int(n)
        return out

    def oldest_queued_age(self, now: float | None = None) -> float | None:
        """Seconds since the oldest job waiting to run (queued or failed) was created; None when none waits."""
        now = time.time() if now is None else now
        with self.engine.connect() as conn:
            oldest = conn.execute(
                select(func.min(jobs_table.c.created)).where(jobs_table.c.state.in_(_CLAIMABLE))
            ).scalar_one_or_none()
        return None if oldest is None else max(0.0, now - float(oldest))

    def _get(self, conn: Connection, job_id: int) -> Job:
        return _job(conn.execute(select(jobs_table).where(jobs_table.c.id == job_id)).one())


def _job(row: Any) -> Job:
    return Job(
        id=int(row.id),
        kind=row.kind,
        study_uid=row.study_uid,
        target=row.target,
        payload=dict(row.payload or {}),
        state=JobState(row.state),
        attempts=int(row.attempts),
        max_attempts=int(row.max_attempts),
        not_before=float(row.not_before),
        lease_expires=None if row.lease_expires is None else float(row.lease_expires),
        worker=row.worker,
        last_error=row.last_error,
        result=None if row.result is None else dict(row.result),
        dedupe_key=row.dedupe_key,
        created=float(row.created),
        updated=float(row.updated),
    )
