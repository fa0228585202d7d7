"""Fixtures of the review tests: the service tests' real PostgreSQL (started by the tests) is reused."""

from __future__ import annotations

from serving.conftest import postgres_server, postgres_url

__all__ = ["postgres_server", "postgres_url"]
