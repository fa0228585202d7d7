"""Keyed pseudonyms: UIDs, patient IDs and names, AE titles and a per-patient date shift.

Everything is an HMAC-SHA256 of the original under one secret key, so the same input gives the same
output in every file and every run (a de-identified study stays linked), and nobody without the key can
recompute or reverse the mapping. The key comes from ``$MEDSIGHT_DEID_KEY`` (hex) or a key file, which
is generated with 0600 permissions when absent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from medsight.errors import MedsightError

KEY_ENV = "MEDSIGHT_DEID_KEY"
DEFAULT_KEY_FILE = Path.home() / ".medsight" / "deid.key"
#: Dates move back by 1 to 10 years, by whole days, the same for every file of one patient.
SHIFT_MIN_DAYS, SHIFT_SPAN_DAYS = 365, 3287


def load_key(key_file: str | Path | None = None) -> bytes:
    """The secret key: ``$MEDSIGHT_DEID_KEY`` (hex), else ``key_file`` (created 0600 if missing)."""
    env = os.environ.get(KEY_ENV)
    if env:
        try:
            key = bytes.fromhex(env.strip())
        except ValueError as exc:
            raise MedsightError(f"${KEY_ENV} must be hex (64 hex digits recommended)") from exc
        if len(key) < 16:
            raise MedsightError(f"${KEY_ENV} is too short: use at least 16 bytes (32 hex digits)")
        return key
    path = Path(key_file) if key_file is not None else DEFAULT_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise MedsightError("cannot read the de-identification key (expected hex)", path) from exc
    if len(key) < 16:
        raise MedsightError("de-identification key is too short (need 16 bytes or more)", path)
    return key


def key_id(key: bytes) -> str:
    """A short fingerprint that tells runs with different keys apart without revealing the key."""
    return hmac.new(key, b"medsight-key-id", hashlib.sha256).hexdigest()[:12]


class Pseudonymizer:
    """All keyed mappings of one run. Caches UIDs, which repeat across thousands of files."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._uids: dict[str, str] = {}

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self._key, f"{kind}\x00{value}".encode(), hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        """A ``2.25.`` UID (128 bits of the HMAC), the same for the same input UID."""
        value = value.strip("\x00 ")
        out = self._uids.get(value)
        if out is None:
            out = "2.25." + str(int.from_bytes(self._digest("uid", value)[:16], "big"))
            self._uids[value] = out
        return out

    def patient_id(self, patient_key: str) -> str:
        """A patient ID pseudonym such as ``MS3F09A1C2B7D4``."""
        return "MS" + self._digest("patient-id", patient_key).hex()[:12].upper()

    def patient_name(self, patient_key: str) -> str:
        """A patient name pseudonym such as ``ANON^3F09A1C2``: clearly not a real name."""
        return "ANON^" + self._digest("patient-name", patient_key).hex()[:8].upper()

    def ae_title(self, value: str) -> str:
        """A consistent AE title pseudonym (16 characters at most) for Retain Device Identity's C."""
        return "AE" + self._digest("ae", value.strip()).hex()[:12].upper()

    def date_shift_days(self, patient_key: str) -> int:
        """One shift (negative, whole days) per patient, so intervals between studies are kept."""
        n = int.from_bytes(self._digest("date-shift", patient_key)[:4], "big")
        return -(SHIFT_MIN_DAYS + n % SHIFT_SPAN_DAYS)


_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})(.*)$")


def shift_date(value: str, days: int) -> str | None:
    """Shift a DA (YYYYMMDD) or the date part of a DT by ``days``; None when it cannot be parsed."""
    m = _DATE.match(value.strip())
    if not m:
        return None
    try:
        day = dt.date(int(m[1]), int(m[2]), int(m[3])) + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return f"{day:%Y%m%d}{m[4]}"
