"""What a test needs from the machine: a tool that ``make test`` installs, or something it cannot install.

A tool ``make tools`` installs (dcmtk, dciodvfy, Orthanc, PostgreSQL, tesseract...) missing is a failure under CI
(``.ci/run`` sets ``CI=1``) and a loud skip on a developer's machine, as the shared data is in ``conftest.py``.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def unavailable(message: str) -> NoReturn:
    """Fail under CI; skip, saying why, elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def tool(name: str, package: str = "dcmtk") -> str:
    """The path of a command-line tool ``make tools`` installs (by absolute path or on the PATH)."""
    path = name if os.path.isabs(name) and os.path.exists(name) else shutil.which(name)
    if path is None:
        unavailable(f"{name} not found: apt-get install {package} (make tools does)")
    return path
