"""The service's database: SQLite (WAL) under the data folder by default, PostgreSQL when a URL is given.

Why one module: every part of the service (study store, job queue, users, audit) shares one engine, one set of
connection rules (durable commits, foreign keys, a busy timeout instead of "database is locked") and one small
versioned migration mechanism, so a schema change is a new step appended to a component's list, applied once, in
order, inside a transaction, by whichever process opens the database first.

SQLite runs with ``journal_mode=WAL`` (readers never block the writer) and ``synchronous=FULL``: in WAL mode
``NORMAL`` already survives a crash of the process, but a commit can still be lost on power failure or a kernel
crash; the service acknowledges an instance (C-STORE, STOW-RS) only once its row is committed, so the commit must
survive those too, and FULL costs one WAL fsync per commit. The one exception is the study store's instance row
(``write_transaction(flush_to_disk=False)``): the instance file itself is fsynced first, and a row lost to a power
failure is rebuilt from the file when the store opens (``StudyStore.record_unrecorded``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Connection, Engine, Float, Integer, MetaData, String, Table, create_engine, event, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError

from medsight.errors import MedsightError

#: The SQLite file inside the data folder when no URL is configured.
SQLITE_NAME = "medsight.db"
#: How long a connection waits for another writer's lock before failing (ms), on every connection.
BUSY_TIMEOUT_MS = 30_000
#: Key of the PostgreSQL advisory lock that serialises migrations across processes ("meds").
_MIGRATION_LOCK = 0x6D656473

Step = Callable[[Connection], None]

_meta = MetaData()
schema_version = Table(
    "schema_version",
    _meta,
    Column("component", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("updated", Float, nullable=False),
)


def open_database(url: str | None, data_dir: Path) -> Engine:
    """An engine for ``url`` (``postgresql+psycopg://...`` or ``sqlite:///...``), or SQLite under ``data_dir``.

    The database is reached once here, so a wrong URL, a missing driver or a server that is down is one clear
    ``MedsightError`` at start-up (the URL in it has its password masked), not a failure on the first instance.
    """
    if url is None:
        data_dir = Path(data_dir)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MedsightError(f"cannot create the data folder: {exc.strerror}", data_dir) from None
        parsed = URL.create("sqlite", database=str(data_dir / SQLITE_NAME))
    else:
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError):
            raise MedsightError("not a database URL (e.g. postgresql+psycopg://user@host/medsight)") from None
        if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        elif parsed.drivername not in ("sqlite", "sqlite+pysqlite"):
            raise MedsightError(
                f'"{parsed.drivername}" databases are not supported (postgresql+psycopg://... or sqlite:///...)'
            )
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise MedsightError("the SQLite database must be a file (sqlite:///path/to/medsight.db)")
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000})
        _configure_sqlite(engine)
    else:
        try:
            engine = create_engine(parsed, pool_pre_ping=True, connect_args={"connect_timeout": 10})
        except (NoSuchModuleError, ImportError) as exc:
            raise MedsightError(f"cannot use database {shown}: {exc}") from None
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except (OperationalError, SQLAlchemyError) as exc:
        engine.dispose()
        orig = getattr(exc, "orig", None) or exc
        lines = str(orig).strip().splitlines()
        reason = lines[0] if lines else type(orig).__name__
        if parsed.password:
            reason = reason.replace(str(parsed.password), "***")
        raise MedsightError(f"cannot open database {shown}: {reason}") from None
    return engine


def is_sqlite(engine: Engine | Connection) -> bool:
    """Whether ``engine`` talks to SQLite (whose locking differs: one writer at a time, BEGIN IMMEDIATE)."""
    return engine.dialect.name == "sqlite"


def _configure_sqlite(engine: Engine) -> None:
    """Pragmas on every new connection, and transactions that SQLAlchemy (not the driver) begins.

    The driver's own implicit BEGIN is switched off so that :func:`write_transaction` can say ``BEGIN IMMEDIATE``:
    a writer takes the write lock when it starts, so a read-then-update (claiming a job) cannot interleave with
    another process's, and lock waits go through ``busy_timeout`` instead of failing as a deadlock.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # autocommit in the driver; we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = FULL")
            cur.execute("PRAGMA foreign_keys = ON")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("medsight_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextlib.contextmanager
def write_transaction(engine: Engine, *, flush_to_disk: bool = True) -> Iterator[Connection]:
    """A transaction that will write: committed on success, rolled back on error.

    On SQLite it starts with ``BEGIN IMMEDIATE`` (the write lock is taken up front, so two processes doing
    select-then-update never both act on the same row); on PostgreSQL it is an ordinary transaction and callers
    lock rows with ``SELECT ... FOR UPDATE [SKIP LOCKED]`` (rendered as nothing on SQLite).

    ``flush_to_disk=False``: the commit survives a crash of the process (``kill -9``) but is not waited onto the disk
    (SQLite ``synchronous=NORMAL`` for this transaction, PostgreSQL ``synchronous_commit=off``), so a power failure
    may lose it. Only for rows that can be rebuilt from files already on disk (the study store's instance rows, see
    ``StudyStore.record_unrecorded``): it saves one disk flush per received instance.
    """
    with engine.connect() as conn:
        conn.execution_options(medsight_immediate=True)
        relaxed_sqlite = not flush_to_disk and is_sqlite(conn)
        if relaxed_sqlite:  # outside any transaction, on the driver's connection (autocommit), so nothing begins
            conn.connection.dbapi_connection.execute("PRAGMA synchronous = NORMAL")  # type: ignore[union-attr]
        try:
            with conn.begin():
                if not flush_to_disk and not is_sqlite(conn):
                    conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                yield conn
        finally:
            if relaxed_sqlite:
                conn.connection.dbapi_connection.execute("PRAGMA synchronous = FULL")  # type: ignore[union-attr]


def migrate(engine: Engine, component: str, steps: Sequence[Step]) -> int:
    """Bring ``component``'s tables to version ``len(steps)``; returns that version.

    Step *i* (1-based) runs once, when the recorded version is below *i*; all missing steps and the version bump
    share one transaction, so a failure leaves the previous version intact. Never edit or remove a released step:
    append a new one. A database written by a newer medsight (more steps than known) is refused.
    """
    if not component or len(component) > 64:
        raise ValueError("component names are 1 to 64 characters")
    with write_transaction(engine) as conn:
        if not is_sqlite(conn):
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        schema_version.create(conn, checkfirst=True)
        current = conn.execute(
            select(schema_version.c.version).where(schema_version.c.component == component)
        ).scalar_one_or_none()
        have = int(current or 0)
        if have > len(steps):
            raise MedsightError(
                f"the database's {component} schema is version {have}, newer than this medsight knows "
                f"({len(steps)}): upgrade medsight or use another database"
            )
        for step in steps[have:]:
            step(conn)
        if have < len(steps):
            values = {"component": component, "version": len(steps), "updated": time.time()}
            if current is None:
                conn.execute(schema_version.insert().values(**values))
            else:
                conn.execute(schema_version.update().where(schema_version.c.component == component).values(**values))
    return len(steps)


def schema_versions(engine: Engine) -> dict[str, int]:
    """The recorded version of every component (for ``/healthz`` and tests)."""
    with engine.connect() as conn:
        if not engine.dialect.has_table(conn, "schema_version"):
            return {}
        return {r.component: int(r.version) for r in conn.execute(select(schema_version))}


def insert(conn: Connection, table: Table) -> Any:
    """The dialect's INSERT on ``table``: it has ``on_conflict_do_nothing`` on both SQLite and PostgreSQL."""
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)
