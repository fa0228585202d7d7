"""``medsight users``: the people and tokens allowed into the service's HTTP API.

``add NAME --role R`` creates a user, ``token NAME`` prints a new token once (only its hash is kept),
``password NAME`` sets the log-in password of the review workstation (read from stdin; only a scrypt hash is
kept), ``revoke TOKEN_ID`` stops a token, ``list`` shows users and their tokens' ids and states, never a secret.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsight.commands._arguments import positive
from medsight.serving.roles import ROLE_HELP, ROLES

if TYPE_CHECKING:
    from medsight.serving.security import UserDirectory

#: The service's data folder when none is given (relative to the working directory).
DEFAULT_DATA_DIR = "medsight_service"


def register(subparsers: Any) -> None:
    """Add the ``users`` subcommand and its actions."""
    parser = subparsers.add_parser(
        "users",
        help="manage the service's users and bearer tokens",
        description=(
            "Users and tokens for the service's HTTP API. Roles: "
            + "; ".join(f"{r}: {ROLE_HELP[r]}" for r in ROLES)
            + ". Tokens are stored as SHA-256 hashes; `token` prints the secret once."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data-dir",
            default=DEFAULT_DATA_DIR,
            help=f"the service's data folder holding its SQLite database (default: ./{DEFAULT_DATA_DIR})",
        )
        p.add_argument("--database-url", help="a SQLAlchemy URL instead of SQLite in the data folder")
        p.add_argument(
            "--config", type=Path, help="the service's site configuration: its data folder and database are used"
        )

    add = actions.add_parser("add", help="create a user")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    common(add)
    token = actions.add_parser("token", help="create a token for a user and print it (once)")
    token.add_argument("name")
    token.add_argument("--expires-days", type=positive, help="lifetime in days (default: until revoked)")
    common(token)
    password = actions.add_parser(
        "password",
        help="set a user's log-in password (workstation); read from stdin, or asked twice on a terminal",
    )
    password.add_argument("name")
    password.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin"
    )
    common(password)
    revoke = actions.add_parser("revoke", help="revoke a token by its id (the part before the dot)")
    revoke.add_argument("token_id")
    common(revoke)
    listing = actions.add_parser("list", help="list users and their tokens (ids and states only)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    common(listing)
    parser.set_defaults(func=run)


def _when(stamp: float | None) -> str | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds")


def _read_password(from_stdin: bool) -> str:
    """The new password: the first line of stdin when piped (or asked), else typed twice without echo."""
    from medsight.errors import MedsightError

    if from_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("new password: ")
    if getpass.getpass("again: ") != first:
        raise MedsightError("the two passwords differ; nothing changed")
    return first


def run(args: argparse.Namespace) -> int:
    """Do the action; 0 on success (a bad name, role or token id raises MedsightError, exit 2)."""
    data_dir, database_url = args.data_dir, args.database_url
    if args.config is not None:
        from medsight.serving.config import load_config

        site = load_config(args.config)
        data_dir = site.service.data_dir
        database_url = site.database.sqlalchemy_url()
    from medsight.serving.security import open_user_directory  # the database layer: loaded when used

    users: UserDirectory = open_user_directory(data_dir, database_url)
    if args.action == "add":
        users.add_user(args.name, args.role)
        print(f"user {args.name} added ({args.role}); create a token with: medsight users token {args.name}")
    elif args.action == "token":
        expires = None if args.expires_days is None else args.expires_days * 86400.0
        secret = users.create_token(args.name, expires_in_s=expires)
        print(f"token for {args.name} (shown once; send it as 'Authorization: Bearer <token>'):")
        print(secret)
    elif args.action == "password":
        users.set_password(args.name, _read_password(args.password_stdin))
        print(f"password of {args.name} set; log in at /api/login (the workstation's log-in page)")
    elif args.action == "revoke":
        users.revoke(args.token_id)
        print(f"token {args.token_id} revoked")
    else:
        now = time.time()
        listed: list[dict[str, Any]] = [
            {
                "name": u.name,
                "role": u.role,
                "created": _when(u.created_at),
                "tokens": [
                    {
                        "id": t.token_id,
                        "state": t.state(now),
                        "created": _when(t.created_at),
                        "expires": _when(t.expires_at),
                    }
                    for t in u.tokens
                ],
            }
            for u in users.list_users()
        ]
        if args.json:
            print(json.dumps(listed, indent=2))
        else:
            for u in listed:
                print(f"{u['name']} ({u['role']}), created {u['created']}")
                for t in u["tokens"]:
                    until = f", expires {t['expires']}" if t["expires"] else ""
                    print(f"  token {t['id']}: {t['state']}, created {t['created']}{until}")
            if not listed:
                print("no users yet; add one with: medsight users add NAME --role admin")
    return 0
