"""The CLI starts without the heavy libraries: registering every command must not import torch and friends."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "sklearn", "scipy", "monai", "fastapi", "sqlalchemy", "onnxruntime", "matplotlib")


def test_building_the_parser_imports_no_heavy_library() -> None:
    code = (
        "import json, sys; from medsight.cli import build_parser; build_parser(); "
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
