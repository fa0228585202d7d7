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


class DestinationUnavailable(MedsightError):
    """A result destination (PACS, DICOMweb, FHIR, HL7) could not be reached, broke off or failed on its side
    (connection refused, timeout, HTTP 5xx, HL7 AE): nothing is wrong with what was sent, so the queue retries."""


class DestinationRejected(MedsightError):
    """A destination understood and refused what was sent (HTTP 4xx/409, HL7 AR, a failure status): sending the same
    again will not help, so it is not retried."""


class StorageUnavailable(MedsightError):
    """The store could not write an instance (disk full, an I/O error): nothing is wrong with the instance, so the
    sender may retry later (C-STORE 0xA700, STOW-RS FailureReason 0xA700)."""


class DuplicateInstance(MedsightError):
    """An instance whose SOP Instance UID the store already holds in another study: the acknowledged instance is
    kept and the newcomer refused (C-STORE and STOW-RS 0x0111, Duplicate SOP Instance)."""


class NonFiniteOutput(MedsightError):
    """A model's output (scores, probabilities) holds NaN or infinite values: the metrics cannot be computed, and
    during training it means the run diverged (the engine says so)."""
