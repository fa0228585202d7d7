"""Log-in passwords, stored as scrypt hashes (``hashlib.scrypt``, a random salt per password).

Why scrypt here when bearer tokens use plain SHA-256 (:mod:`medsight.serving.security`): a token secret has 256
random bits and cannot be guessed, but a password is chosen by a person and can; a memory-hard KDF makes each guess
against a stolen database cost ~16 MiB and tens of milliseconds. The parameters travel inside the stored string,
so they can be raised later without invalidating the hashes already stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

#: scrypt cost parameters (RFC 7914): N = 2**14, r = 8, p = 1 use 16 MiB and ~50 ms per hash.
N, R, P = 2**14, 8, 1
SALT_BYTES = 16
KEY_BYTES = 32
MIN_LENGTH = 8
MAX_LENGTH = 1024
PREFIX = "scrypt"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=KEY_BYTES)


def password_problem(password: str) -> str | None:
    """Why ``password`` may not be set (too short or too long), or None."""
    if len(password) < MIN_LENGTH:
        return f"a password needs at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"a password has at most {MAX_LENGTH} characters"
    return None


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$<salt b64>$<key b64>`` for ``password`` with a fresh random salt."""
    salt = secrets.token_bytes(SALT_BYTES)
    return "$".join([PREFIX, str(N), str(R), str(P), _b64(salt), _b64(_derive(password, salt, N, R, P))])


def verify_password(encoded: str | None, password: str) -> bool:
    """Whether ``password`` matches ``encoded``; a missing or malformed hash costs the same and is False."""
    try:
        scheme, n, r, p, salt, key = (encoded or "").split("$")
        if scheme != PREFIX:
            raise ValueError
        params = int(n), int(r), int(p)
        salt_bytes, key_bytes = base64.b64decode(salt), base64.b64decode(key)
    except ValueError:
        _derive(password[:MAX_LENGTH], b"\0" * SALT_BYTES, N, R, P)  # same cost as a real check
        return False
    derived = _derive(password[:MAX_LENGTH], salt_bytes, *params)
    return hmac.compare_digest(derived, key_bytes)
