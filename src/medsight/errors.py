"""One error type for bad input, so the CLI can print one clear line and exit non-zero."""

from __future__ import annotations

from pathlib import Path


class MedsightError(Exception):
    """A problem with the user's input or environment (not a bug).

    The message names the file (when there is one) and the problem, and never a patient identifier.
    """

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
