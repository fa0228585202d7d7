"""An append-only, hash-chained audit log: who accessed which study, and which result went where.

One JSON object per line::

    {"seq": 0, "time": "2026-01-01T12:00:00.000000+00:00", "actor": "alice", "action": "wado.instance",
     "target": {"study": "1.2...", "series": "1.2...", "instance": "1.2..."}, "outcome": "ok",
     "prev_hash": "000...0", "hash": "<sha256 hex>"}

``hash = sha256(prev_hash + canonical JSON of the record without "hash")`` and ``prev_hash`` is the previous
line's ``hash`` (64 zeros for the first), so editing, removing or reordering a line breaks the chain at that
line. Removing lines from the *end* leaves a valid shorter chain; the head file beside the log
(``<log>.head``, the last seq and hash, replaced atomically after each append) catches that. Someone able
to rewrite both files can forge a consistent log; copying :meth:`AuditLog.head` elsewhere now and then (a
syslog host, a ticket) closes that too, since the chain can then be checked against it.

Targets hold UIDs, destination names and counts, never patient names, IDs or birth dates: keys that name
those are refused.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medsight.errors import MedsightError

GENESIS = "0" * 64

#: Field names (compared lower-case without ``_``/``-``/spaces) a record may never carry anywhere.
FORBIDDEN_KEYS = frozenset(
    {
        "patientname",
        "patientsname",
        "patientid",
        "patientsid",
        "patientbirthdate",
        "patientsbirthdate",
        "birthdate",
        "otherpatientids",
        "otherpatientnames",
        "00100010",
        "00100020",
        "00100030",
    }
)


def _canonical(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def record_hash(record: Mapping[str, Any]) -> str:
    """The hash a record must carry: sha256 of its ``prev_hash`` and its canonical JSON without ``hash``."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(str(record.get("prev_hash", "")).encode("ascii") + _canonical(body)).hexdigest()


def _check_no_identifiers(value: Any, where: str) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            folded = str(key).lower().replace("_", "").replace("-", "").replace(" ", "")
            if folded in FORBIDDEN_KEYS:
                raise MedsightError(f"audit {where} may not hold patient identifiers ({key!r})")
            _check_no_identifiers(inner, where)
    elif isinstance(value, list | tuple):
        for inner in value:
            _check_no_identifiers(inner, where)


class AuditLog:
    """The audit log at ``path``; appends are safe across threads and processes (``fcntl`` lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.name + ".head")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def append(
        self,
        *,
        actor: str,
        action: str,
        target: Mapping[str, Any] | None = None,
        outcome: str = "ok",
    ) -> dict[str, Any]:
        """Add one record, durably (written, flushed and fsynced before returning); returns it."""
        target = dict(target or {})
        _check_no_identifiers(target, "target")
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    seq, prev = self._tail()
                    record: dict[str, Any] = {
                        "seq": seq,
                        "time": datetime.now(UTC).isoformat(timespec="microseconds"),
                        "actor": actor,
                        "action": action,
                        "target": target,
                        "outcome": outcome,
                        "prev_hash": prev,
                    }
                    record["hash"] = record_hash(record)
                    line = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
                    written = os.write(fd, line)
                    if written != len(line):
                        raise OSError(f"short write to the audit log ({written} of {len(line)} bytes)")
                    os.fsync(fd)
                    self._write_head(record["seq"], record["hash"])
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        return record

    def _tail(self) -> tuple[int, str]:
        """Next seq and the last hash, read from the file itself (another process may have appended)."""
        with open(self.path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            if end == 0:
                return 0, GENESIS
            chunk = 4096
            data = b""
            pos = end
            while pos > 0:
                step = min(chunk, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
                if data.count(b"\n") >= 2 or pos == 0:
                    break
                chunk *= 2
        last = data.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        if not data.endswith(b"\n"):
            raise MedsightError("the audit log ends in a partial line; run its verification", self.path)
        try:
            record = json.loads(last)
            return int(record["seq"]) + 1, str(record["hash"])
        except (ValueError, KeyError, TypeError) as exc:
            raise MedsightError("the audit log's last line is not a record; run its verification", self.path) from exc

    def _write_head(self, seq: int, digest: str) -> None:
        tmp = self.head_path.with_name(self.head_path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps({"seq": seq, "hash": digest}).encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.head_path)

    def head(self) -> tuple[int, str] | None:
        """The last record's (seq, hash) as the head file has it, or ``None`` for an empty log."""
        try:
            head = json.loads(self.head_path.read_text())
        except FileNotFoundError:
            return None
        return int(head["seq"]), str(head["hash"])

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record in order (no verification; see :meth:`verify`)."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            for line in f:
                yield json.loads(line)

    def verify(self) -> tuple[bool, int | None]:
        """``(True, None)`` when the chain is intact, else ``(False, seq)`` of the first record that fails.

        A record fails when its line is not JSON, its seq is not the next one, its ``prev_hash`` is not the
        previous hash, or its own hash does not match its content. Lines missing at the end (the head file
        names a later seq) fail at the first missing seq; a head whose hash differs from the chain's record of
        that seq fails at that seq.
        """
        try:
            head = self.head()
        except (ValueError, KeyError, TypeError):
            return False, 0
        expected_seq, prev = 0, GENESIS
        hash_at_head: str | None = None
        if self.path.exists():
            with open(self.path, "rb") as f:
                for line in f:
                    if not line.endswith(b"\n"):
                        return False, expected_seq
                    try:
                        record = json.loads(line)
                        ok = (
                            isinstance(record, dict)
                            and record.get("seq") == expected_seq
                            and record.get("prev_hash") == prev
                            and record.get("hash") == record_hash(record)
                        )
                    except ValueError:
                        ok = False
                    if not ok:
                        return False, expected_seq
                    prev = record["hash"]
                    if head is not None and expected_seq == head[0]:
                        hash_at_head = prev
                    expected_seq += 1
        if head is None:
            return (True, None) if expected_seq == 0 else (False, 0)
        head_seq, head_hash = head
        if head_seq >= expected_seq:
            return False, expected_seq
        if hash_at_head != head_hash:
            return False, head_seq
        # The head may lag the log by a record a crash interrupted between the two writes; never lead it.
        return True, None
