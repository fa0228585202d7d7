"""Users, hashed tokens, role checks and the hash-chained audit log of the service."""

# No ``from __future__ import annotations``: FastAPI evaluates the test routes' signatures (local dependencies).

import hashlib
import json
import multiprocessing
import threading
from pathlib import Path
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from medsight.cli import main
from medsight.errors import MedsightError
from medsight.serving.audit import AuditLog
from medsight.serving.security import Authorizer, Principal, UserDirectory, open_user_directory


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def directory(tmp_path: Path) -> tuple[UserDirectory, Clock, Path]:
    clock = Clock()
    db = tmp_path / "users.sqlite"
    return UserDirectory(create_engine(f"sqlite:///{db}"), clock=clock), clock, db


def test_tokens_are_stored_hashed_and_authenticate(directory: tuple[UserDirectory, Clock, Path]) -> None:
    users, _, db = directory
    users.add_user("alice", "radiologist")
    token = users.create_token("alice")
    token_id, _, secret = token.partition(".")
    assert len(token_id) == 12 and len(secret) >= 43
    assert users.authenticate(token) == Principal("alice", "radiologist", token_id)
    raw = db.read_bytes()
    assert secret.encode() not in raw
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in raw
    listed = users.list_users()
    assert [(u.name, u.role, [t.token_id for t in u.tokens]) for u in listed] == [("alice", "radiologist", [token_id])]
    assert secret not in repr(listed)


def test_bad_expired_and_revoked_tokens_are_refused(directory: tuple[UserDirectory, Clock, Path]) -> None:
    users, clock, _ = directory
    users.add_user("bob", "viewer")
    token = users.create_token("bob", expires_in_s=60)
    token_id = token.split(".")[0]
    assert users.authenticate(token) is not None
    assert users.authenticate(token_id + ".wrong-secret") is None
    assert users.authenticate("not a token") is None
    assert users.authenticate(token[:-1]) is None
    clock.now += 61
    assert users.authenticate(token) is None
    other = users.create_token("bob")
    users.revoke(other.split(".")[0])
    assert users.authenticate(other) is None
    with pytest.raises(MedsightError, match="no token"):
        users.revoke("000000000000")


def test_user_management_errors(directory: tuple[UserDirectory, Clock, Path]) -> None:
    users, _, _ = directory
    with pytest.raises(MedsightError, match="unknown role"):
        users.add_user("carol", "superuser")
    users.add_user("carol", "admin")
    with pytest.raises(MedsightError, match="already exists"):
        users.add_user("carol", "viewer")
    with pytest.raises(MedsightError, match="invalid user name"):
        users.add_user("bad name", "viewer")
    with pytest.raises(MedsightError, match="no user"):
        users.create_token("nobody")


def _app(users: UserDirectory, audit: AuditLog) -> FastAPI:
    def refused(request, actor, status, reason):  # type: ignore[no-untyped-def]
        audit.append(actor=actor, action="auth.refused", target={"path": request.url.path}, outcome=str(status))

    auth = Authorizer(users, on_refused=refused)
    app = FastAPI()

    @app.get("/read")
    def read(who: Annotated[Principal, Depends(auth.require("viewer"))]) -> dict[str, str]:
        return {"user": who.user}

    @app.get("/manage")
    def manage(who: Annotated[Principal, Depends(auth.require("admin"))]) -> dict[str, str]:
        return {"user": who.user}

    return app


def test_role_dependency_gives_401_and_403_without_echoing_the_token(
    directory: tuple[UserDirectory, Clock, Path], tmp_path: Path
) -> None:
    users, clock, _ = directory
    users.add_user("vera", "viewer")
    users.add_user("adam", "admin")
    viewer, admin = users.create_token("vera", expires_in_s=10), users.create_token("adam")
    audit = AuditLog(tmp_path / "audit.jsonl")
    client = TestClient(_app(users, audit))

    missing = client.get("/read")
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    bad_secret = viewer.split(".")[0] + ".guessed"
    bad = client.get("/read", headers={"Authorization": f"Bearer {bad_secret}"})
    assert bad.status_code == 401 and "invalid_token" in bad.headers["www-authenticate"]
    assert "guessed" not in bad.text and "guessed" not in bad.headers["www-authenticate"]
    assert client.get("/read", headers={"Authorization": f"Bearer {viewer}"}).json() == {"user": "vera"}
    denied = client.get("/manage", headers={"Authorization": f"Bearer {viewer}"})
    assert denied.status_code == 403 and "admin" in denied.json()["detail"]
    assert client.get("/manage", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    clock.now += 11
    expired = client.get("/read", headers={"Authorization": f"Bearer {viewer}"})
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]
    assert viewer.split(".")[1] not in expired.text
    outcomes = [(r["actor"], r["outcome"]) for r in audit.records()]
    assert outcomes == [("-", "401"), ("-", "401"), ("vera", "403"), ("-", "401")]


# ---- audit log ---------------------------------------------------------------------------------------------------


def _fill(log: AuditLog, n: int) -> None:
    for i in range(n):
        log.append(actor="alice", action="wado.instance", target={"study": f"1.2.{i}"}, outcome="ok")


def test_audit_chain_verifies_and_records_are_complete(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    assert log.verify() == (True, None)
    _fill(log, 3)
    records = list(log.records())
    assert [r["seq"] for r in records] == [0, 1, 2]
    assert records[0]["prev_hash"] == "0" * 64 and records[1]["prev_hash"] == records[0]["hash"]
    assert records[2]["time"].endswith("+00:00")
    assert set(records[0]) == {"seq", "time", "actor", "action", "target", "outcome", "prev_hash", "hash"}
    assert log.verify() == (True, None)
    assert log.head() == (2, records[2]["hash"])


@pytest.mark.parametrize("damage", ["edit", "delete_middle", "truncate_tail", "partial_line", "reorder"])
def test_audit_detects_tampering(tmp_path: Path, damage: str) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    _fill(log, 5)
    lines = log.path.read_bytes().splitlines(keepends=True)
    if damage == "edit":
        record = json.loads(lines[2])
        record["actor"] = "mallory"
        lines[2] = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        expected = 2
    elif damage == "delete_middle":
        del lines[1]
        expected = 1
    elif damage == "truncate_tail":
        lines = lines[:3]
        expected = 3
    elif damage == "partial_line":
        lines[4] = lines[4][:20]
        expected = 4
    else:
        lines[1], lines[2] = lines[2], lines[1]
        expected = 1
    log.path.write_bytes(b"".join(lines))
    assert log.verify() == (False, expected)


def test_audit_refuses_patient_identifiers(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(MedsightError, match="patient identifiers"):
        log.append(actor="a", action="x", target={"study": "1.2", "PatientID": "123"})
    with pytest.raises(MedsightError, match="patient identifiers"):
        log.append(actor="a", action="x", target={"items": [{"patient_birth_date": "19700101"}]})
    assert not log.path.exists() or log.path.read_bytes() == b""


def _append_many(path: str, actor: str, n: int) -> None:
    log = AuditLog(path)
    for i in range(n):
        log.append(actor=actor, action="qido.studies", target={"n": i})


def test_audit_appends_are_safe_across_threads_and_processes(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_append_many, args=(str(path), f"p{k}", 15)) for k in range(2)]
    threads = [threading.Thread(target=_append_many, args=(str(path), f"t{k}", 15)) for k in range(3)]
    for worker in [*processes, *threads]:
        worker.start()
    for worker in [*processes, *threads]:
        worker.join(timeout=120)
    assert all(p.exitcode == 0 for p in processes)
    log = AuditLog(path)
    records = list(log.records())
    assert len(records) == 75 and [r["seq"] for r in records] == list(range(75))
    assert {r["actor"] for r in records} == {"p0", "p1", "t0", "t1", "t2"}
    assert log.verify() == (True, None)


# ---- medsight users ----------------------------------------------------------------------------------------------


def test_users_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "service"
    assert main(["users", "add", "dana", "--role", "radiologist", "--data-dir", str(data)]) == 0
    assert main(["users", "add", "dana", "--role", "viewer", "--data-dir", str(data)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["users", "token", "dana", "--data-dir", str(data)]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    users = open_user_directory(data)
    principal = users.authenticate(token)
    assert principal is not None and principal.role == "radiologist"
    assert main(["users", "list", "--data-dir", str(data)]) == 0
    listing = capsys.readouterr().out
    assert "dana" in listing and principal.token_id in listing and token.split(".")[1] not in listing
    assert main(["users", "revoke", principal.token_id, "--data-dir", str(data)]) == 0
    assert "revoked" in capsys.readouterr().out
    assert users.authenticate(token) is None
    assert main(["users", "list", "--json", "--data-dir", str(data)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["name"] == "dana" and listed[0]["tokens"][0]["state"] == "revoked"
