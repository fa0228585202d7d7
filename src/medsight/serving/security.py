"""Users, roles and bearer tokens for the service's HTTP API.

Three roles, each including the one below it: ``viewer`` reads studies (QIDO-RS, WADO-RS), ``radiologist``
also writes verdicts, ``admin`` also stores (STOW-RS), triggers study completion and manages users.

A token is ``<token id>.<secret>``: the id (12 hex digits) is stored in clear so a token can be listed and
revoked, the secret (``secrets.token_urlsafe(32)``, 256 random bits) only as its SHA-256 digest. A plain hash
is the right tool here, not a password KDF (bcrypt, scrypt, Argon2): a KDF is slow to make guessing a
*low-entropy* password expensive, but a 256-bit random secret cannot be guessed at any hash rate, so a slow
hash would only slow every request. Digests are compared with :func:`hmac.compare_digest`. The secret is
returned once, by :meth:`UserDirectory.create_token`, and never logged or echoed in an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from medsight.errors import MedsightError
from medsight.serving.database import write_transaction
from medsight.serving.roles import ROLE_HELP as ROLE_HELP  # re-exported: its old home
from medsight.serving.roles import ROLES

_RANK = {role: rank for rank, role in enumerate(ROLES)}

#: Bump when the tables change (the migration list in :func:`_ensure_schema` grows by one step).
#: 2: ``medsight_users.password_scrypt`` (log-in passwords for the review workstation).
SCHEMA_VERSION = 2

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_TOKEN_ID = re.compile(r"^[0-9a-f]{12}$")

_metadata = MetaData()
users_table = Table(
    "medsight_users",
    _metadata,
    Column("name", String(64), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("password_scrypt", String(200), nullable=True),
)
tokens_table = Table(
    "medsight_tokens",
    _metadata,
    Column("token_id", String(12), primary_key=True),
    Column("user_name", String(64), ForeignKey("medsight_users.name"), nullable=False, index=True),
    Column("secret_sha256", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
)
_schema_table = Table(
    "medsight_security_schema",
    _metadata,
    Column("component", String(32), primary_key=True),
    Column("version", Integer, nullable=False),
)


@dataclass(frozen=True)
class Principal:
    """Who made a request: the user, their role and the token used (its id, never its secret)."""

    user: str
    role: str
    token_id: str

    def may(self, role: str) -> bool:
        """Whether this principal has ``role`` or a more privileged one."""
        return _RANK[self.role] >= _RANK[role]


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: no secret, no digest."""

    token_id: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def state(self, now: float) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


@dataclass(frozen=True)
class UserInfo:
    """A user with their tokens."""

    name: str
    role: str
    created_at: float
    tokens: tuple[TokenInfo, ...]


class AuthFailure(Exception):
    """Why a bearer token was refused; the message never contains the token."""


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def check_role(role: str) -> str:
    """``role`` if it is one of :data:`ROLES`, else a :class:`MedsightError` naming the choices."""
    if role not in _RANK:
        raise MedsightError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    return role


class UserDirectory:
    """Users and their tokens in a SQL database (SQLite by default, any SQLAlchemy engine works).

    Safe to share between threads and processes: every call is one short transaction.
    """

    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self._clock = clock
        _ensure_schema(engine)

    # ---- management --------------------------------------------------------------------------------------

    def add_user(self, name: str, role: str) -> None:
        """Create a user; a :class:`MedsightError` for a bad name, an unknown role or an existing user."""
        if not _NAME.match(name):
            raise MedsightError(f"invalid user name {name!r}: 1-64 characters, letters, digits and . _ @ - (not first)")
        check_role(role)
        try:
            with write_transaction(self.engine) as conn:
                conn.execute(insert(users_table).values(name=name, role=role, created_at=self._clock()))
        except IntegrityError as exc:
            raise MedsightError(f"user {name!r} already exists") from exc

    def set_role(self, name: str, role: str) -> None:
        """Change a user's role (their tokens follow at once)."""
        check_role(role)
        with write_transaction(self.engine) as conn:
            if conn.execute(update(users_table).where(users_table.c.name == name).values(role=role)).rowcount == 0:
                raise MedsightError(f"no user {name!r}")

    def remove_user(self, name: str) -> None:
        """Delete a user and every token of theirs."""
        with write_transaction(self.engine) as conn:
            conn.execute(delete(tokens_table).where(tokens_table.c.user_name == name))
            if conn.execute(delete(users_table).where(users_table.c.name == name)).rowcount == 0:
                raise MedsightError(f"no user {name!r}")

    def set_password(self, name: str, password: str) -> None:
        """Store a scrypt hash of ``password`` for ``name`` (see :mod:`medsight.review.passwords`)."""
        from medsight.review.passwords import hash_password, password_problem

        problem = password_problem(password)
        if problem:
            raise MedsightError(problem)
        encoded = hash_password(password)
        with write_transaction(self.engine) as conn:
            done = conn.execute(update(users_table).where(users_table.c.name == name).values(password_scrypt=encoded))
            if done.rowcount == 0:
                raise MedsightError(f"no user {name!r}; add it first with `medsight users add`")

    def verify_password(self, name: str, password: str) -> str | None:
        """The user's role when ``password`` is theirs, else None (unknown users cost the same as wrong passwords)."""
        from medsight.review.passwords import verify_password

        with self.engine.connect() as conn:
            row = conn.execute(
                select(users_table.c.role, users_table.c.password_scrypt).where(users_table.c.name == name)
            ).first()
        ok = verify_password(row.password_scrypt if row is not None else None, password)
        return str(row.role) if ok and row is not None else None

    def create_token(self, name: str, *, expires_in_s: float | None = None) -> str:
        """A new token for ``name``; the returned string is the only copy of its secret."""
        if expires_in_s is not None and expires_in_s <= 0:
            raise MedsightError(f"token lifetime must be positive, not {expires_in_s}")
        now = self._clock()
        secret = secrets.token_urlsafe(32)
        with write_transaction(self.engine) as conn:
            if conn.execute(select(users_table.c.name).where(users_table.c.name == name)).first() is None:
                raise MedsightError(f"no user {name!r}; add it first with `medsight users add`")
            while True:
                token_id = secrets.token_hex(6)
                taken = conn.execute(select(tokens_table.c.token_id).where(tokens_table.c.token_id == token_id))
                if taken.first() is None:
                    break
            conn.execute(
                insert(tokens_table).values(
                    token_id=token_id,
                    user_name=name,
                    secret_sha256=_digest(secret),
                    created_at=now,
                    expires_at=None if expires_in_s is None else now + expires_in_s,
                    revoked_at=None,
                )
            )
        return f"{token_id}.{secret}"

    def revoke(self, token_id: str) -> None:
        """Revoke a token by its id (the part before the dot); it is refused from the next request on."""
        with write_transaction(self.engine) as conn:
            done = conn.execute(
                update(tokens_table)
                .where(tokens_table.c.token_id == token_id, tokens_table.c.revoked_at.is_(None))
                .values(revoked_at=self._clock())
            )
            if done.rowcount == 0:
                known = conn.execute(select(tokens_table.c.token_id).where(tokens_table.c.token_id == token_id))
                if known.first() is None:
                    raise MedsightError(f"no token with id {token_id!r}")

    def list_users(self) -> list[UserInfo]:
        """Every user with their tokens, by name."""
        with self.engine.connect() as conn:
            users = conn.execute(select(users_table).order_by(users_table.c.name)).all()
            tokens = conn.execute(select(tokens_table).order_by(tokens_table.c.created_at)).all()
        by_user: dict[str, list[TokenInfo]] = {}
        for t in tokens:
            by_user.setdefault(t.user_name, []).append(TokenInfo(t.token_id, t.created_at, t.expires_at, t.revoked_at))
        return [UserInfo(u.name, u.role, u.created_at, tuple(by_user.get(u.name, []))) for u in users]

    # ---- checking ----------------------------------------------------------------------------------------

    def authenticate(self, bearer: str) -> Principal | None:
        """The principal a token belongs to, or ``None`` when it is malformed, unknown, expired or revoked."""
        try:
            return self.check(bearer)
        except AuthFailure:
            return None

    def check(self, bearer: str) -> Principal:
        """Like :meth:`authenticate`, but an :class:`AuthFailure` saying why a token is refused."""
        token_id, dot, secret = bearer.strip().partition(".")
        if not dot or not _TOKEN_ID.match(token_id) or not secret:
            raise AuthFailure("malformed token (expected the string `medsight users token` printed)")
        with self.engine.connect() as conn:
            row = conn.execute(
                select(tokens_table, users_table.c.role)
                .join(users_table, users_table.c.name == tokens_table.c.user_name)
                .where(tokens_table.c.token_id == token_id)
            ).first()
        # Compare against a digest even for an unknown id so both paths cost the same.
        stored = row.secret_sha256 if row is not None else "0" * 64
        matches = hmac.compare_digest(stored, _digest(secret))
        if row is None or not matches:
            raise AuthFailure("unknown token")
        if row.revoked_at is not None:
            raise AuthFailure(f"token {token_id} was revoked")
        if row.expires_at is not None and row.expires_at <= self._clock():
            raise AuthFailure(f"token {token_id} has expired")
        return Principal(user=row.user_name, role=row.role, token_id=token_id)


def _add_password_column(conn: Connection) -> None:
    """Step 2: the password hash column, on a users table created by version 1."""
    columns = {c["name"] for c in inspect(conn).get_columns(users_table.name)}
    if "password_scrypt" not in columns:
        conn.exec_driver_sql(f"ALTER TABLE {users_table.name} ADD COLUMN password_scrypt VARCHAR(200)")


#: Steps from version n to n + 1, in order (append, never edit); a new database gets the tables at the newest.
_UPGRADES: tuple[Callable[[Connection], None], ...] = (_add_password_column,)


def _ensure_schema(engine: Engine) -> None:
    """Create the tables once, upgrade an older database, and refuse one written by a newer medsight."""
    _metadata.create_all(engine)
    with engine.begin() as conn:
        found = conn.execute(
            select(_schema_table.c.version).where(_schema_table.c.component == "security")
        ).scalar_one_or_none()
        if found is None:
            with contextlib.suppress(IntegrityError):  # another process created it at the same moment
                conn.execute(insert(_schema_table).values(component="security", version=SCHEMA_VERSION))
        elif found < SCHEMA_VERSION:
            for step in _UPGRADES[found - 1 :]:
                step(conn)
            conn.execute(
                update(_schema_table).where(_schema_table.c.component == "security").values(version=SCHEMA_VERSION)
            )
        elif found > SCHEMA_VERSION:
            raise MedsightError(
                f"the users database has schema version {found}, newer than this medsight ({SCHEMA_VERSION}); "
                "upgrade medsight"
            )


def default_database_url(data_dir: str | Path) -> str:
    """The SQLite file under the service's data folder, used when no database URL is configured."""
    return f"sqlite:///{Path(data_dir).resolve() / 'medsight.db'}"


def open_user_directory(data_dir: str | Path, database_url: str | None = None) -> UserDirectory:
    """The user directory of a service: ``database_url`` if given, else SQLite under ``data_dir`` (the service's
    own database, opened the same way: WAL, migrations)."""
    from medsight.serving.database import open_database

    return UserDirectory(open_database(database_url, Path(data_dir)))


# ---- FastAPI -------------------------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="a token printed by `medsight users token NAME`")


def _unauthorized(reason: str, *, invalid: bool) -> HTTPException:
    challenge = 'Bearer realm="medsight"'
    if invalid:
        challenge += f', error="invalid_token", error_description="{reason}"'
    return HTTPException(status_code=401, detail=reason, headers={"WWW-Authenticate": challenge})


AuthHook = Callable[[Request, str, int, str], None]


class Authorizer:
    """Builds the FastAPI dependencies that admit a request only with a valid token of a sufficient role.

    ``on_refused(request, actor, status, reason)`` is called for each refusal (the API audits them).
    """

    def __init__(self, users: UserDirectory, *, on_refused: AuthHook | None = None) -> None:
        self.users = users
        self.on_refused = on_refused

    def require(self, role: str) -> Callable[..., Principal]:
        """A dependency returning the :class:`Principal`; 401 without a valid token, 403 below ``role``."""
        check_role(role)

        def dependency(
            request: Request,
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        ) -> Principal:
            if credentials is None:
                self._refused(request, "-", 401, "missing bearer token")
                raise _unauthorized("missing bearer token (Authorization: Bearer <token>)", invalid=False)
            try:
                principal = self.users.check(credentials.credentials)
            except AuthFailure as exc:
                self._refused(request, "-", 401, str(exc))
                raise _unauthorized(str(exc), invalid=True) from None
            if not principal.may(role):
                reason = f"role {principal.role!r} may not do this; it needs {role!r} or above"
                self._refused(request, principal.user, 403, reason)
                raise HTTPException(
                    status_code=403,
                    detail=reason,
                    headers={"WWW-Authenticate": 'Bearer realm="medsight", error="insufficient_scope"'},
                )
            request.state.principal = principal
            return principal

        return dependency

    def _refused(self, request: Request, actor: str, status: int, reason: str) -> None:
        if self.on_refused is not None:
            self.on_refused(request, actor, status, reason)
