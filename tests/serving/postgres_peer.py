"""A real, throw-away PostgreSQL server for tests (not a test module).

Why a real server: the job queue's claim relies on ``SELECT ... FOR UPDATE SKIP LOCKED`` and the store on
``ON CONFLICT``; only PostgreSQL itself shows they hold. The server listens on 127.0.0.1 only, on a free port, with
its data folder under the temp directory, runs as an unprivileged user (PostgreSQL refuses root) and is stopped
with ``pg_ctl stop -m immediate`` by the fixture's finaliser. Missing binaries fail the test under CI.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from needs import unavailable

#: The unprivileged account the server runs as when the tests run as root.
TEST_USER_CANDIDATES = ("postgres", "medsight-test")


def find_binaries() -> tuple[Path, Path] | None:
    """(initdb, pg_ctl) from PATH or Debian's /usr/lib/postgresql/<version>/bin (newest), or None."""
    dirs = [os.path.dirname(p) for p in (shutil.which("pg_ctl"),) if p]
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name), reverse=True)
    for d in [*dirs, *versions]:
        initdb, pg_ctl = Path(d) / "initdb", Path(d) / "pg_ctl"
        if initdb.exists() and pg_ctl.exists():
            return initdb.resolve(), pg_ctl.resolve()
    return None


def require_binaries() -> tuple[Path, Path]:
    """The binaries, or a failure under CI / a loud skip elsewhere (as tests/conftest.py does for data)."""
    found = find_binaries()
    if found is None:
        unavailable("PostgreSQL (initdb, pg_ctl) not found: apt-get install postgresql (make tools does)")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> str | None:
    """The account to run PostgreSQL as: None when we are not root, else an existing or new unprivileged user."""
    if os.geteuid() != 0:
        return None
    for name in TEST_USER_CANDIDATES:
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    name = TEST_USER_CANDIDATES[-1]
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    return name


class PostgresServer:
    """One running server; ``url(db)`` gives a SQLAlchemy URL, ``new_database()`` a fresh empty database."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = require_binaries()
        self.user = _run_as()
        self.base = Path(tempfile.mkdtemp(prefix="medsight-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.port = 0
        self.running = False
        if self.user is not None:
            info = pwd.getpwnam(self.user)
            os.chown(self.base, info.pw_uid, info.pw_gid)
        self._as_user(
            [
                str(self.initdb),
                "-D",
                str(self.data),
                "-U",
                "medsight",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--no-instructions",
            ]
        )
        self.start()

    def _as_user(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        cmd = list(argv) if self.user is None else ["runuser", "-u", self.user, "--", *argv]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.base)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n{log}")
        return done

    def start(self) -> None:
        """Start on a free loopback port (retrying once if another process took the port meanwhile)."""
        for attempt in range(3):
            self.port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories='' "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
            )
            try:
                self._as_user(
                    [
                        str(self.pg_ctl),
                        "-D",
                        str(self.data),
                        "-l",
                        str(self.log),
                        "-w",
                        "-t",
                        "30",
                        "-o",
                        options,
                        "start",
                    ]
                )
                self.running = True
                return
            except RuntimeError:
                if attempt == 2:
                    raise

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://medsight@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """CREATE DATABASE with a fresh name; returns its URL (tests never share tables)."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=medsight dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop at once (the data are throw-away) and remove the data folder."""
        if self.running:
            try:
                self._as_user([str(self.pg_ctl), "-D", str(self.data), "-m", "immediate", "-w", "stop"])
            finally:
                self.running = False
        shutil.rmtree(self.base, ignore_errors=True)
