"""A log-in while the service is busy writing: creating a token must not fail with "database is locked".

Seen in the workstation's browser test (HTTP 500 on POST /api/login right after a 100-instance C-STORE association):
``create_token`` read, then wrote, inside a deferred SQLite transaction; when another connection committed in
between, SQLite refused the upgrade at once (busy timeout or not). The write transaction must take the write lock
first (BEGIN IMMEDIATE), so a concurrent writer waits instead.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import event

from medsight.serving.database import open_database
from medsight.serving.security import UserDirectory


def test_a_token_is_created_while_another_connection_writes(tmp_path: Path) -> None:
    engine = open_database(None, tmp_path)
    users = UserDirectory(engine)
    users.add_user("reader", "radiologist")
    db = str(engine.url.database)
    other = sqlite3.connect(db, timeout=0.5, isolation_level=None)
    other.execute("CREATE TABLE busy (n INTEGER)")
    outcomes: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def another_writer_commits(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # between the token's checks (reads) and its INSERT, the service's store commits an instance
        if statement.lstrip().upper().startswith("INSERT INTO MEDSIGHT_TOKENS") and not outcomes:
            try:
                other.execute("INSERT INTO busy VALUES (1)")
                outcomes.append("the other writer committed first")
            except sqlite3.OperationalError:
                outcomes.append("the other writer waited for the token's transaction")

    token = users.create_token("reader", expires_in_s=3600)
    assert users.authenticate(token) is not None
    assert outcomes == ["the other writer waited for the token's transaction"]
    other.close()
