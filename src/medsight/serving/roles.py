"""Who may do what in the service: the roles, from least to most privileged (no database, no web imports)."""

from __future__ import annotations

#: Roles from least to most privileged; each role may do everything the roles before it may.
ROLES: tuple[str, ...] = ("viewer", "radiologist", "admin")

#: What each role is for (shown by ``medsight users``).
ROLE_HELP = {
    "viewer": "read studies and results (QIDO-RS, WADO-RS)",
    "radiologist": "read, and write verdicts",
    "admin": "read, write, store (STOW-RS), trigger completion, manage users",
}
