"""docs/benchmarks.md agrees with benchmarks/results/*.json (issue 9, section 3: every figure from a file)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "benchmarks.md"


def _report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmarks_report", ROOT / "benchmarks" / "support" / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _known_figures(report: ModuleType) -> set[str]:
    """Every figure of every results file (earlier runs kept under ``previous`` too), at 1 to 4 decimals."""
    known: set[str] = set()
    for doc in report.load_all().values():
        for _, value, ci in report.figures(doc, include_previous=True):
            numbers = [value] + (list(ci) if isinstance(ci, list) else [])
            for x in numbers:
                if isinstance(x, int | float) and not isinstance(x, bool):
                    for d in range(0, 5):
                        known.add(f"{x:.{d}f}")
    return known


def test_generated_section_is_current() -> None:
    report = _report()
    text = DOC.read_text()
    assert report.BEGIN in text, "docs/benchmarks.md has no generated section: run benchmarks/support/report.py"
    assert report.splice(text, report.render()) == text, "stale: run .venv/bin/python benchmarks/support/report.py"


def test_every_bold_figure_in_the_prose_is_in_a_results_file() -> None:
    report = _report()
    prose = DOC.read_text().split(report.BEGIN)[0]
    known = _known_figures(report)
    missing = []
    for bold in re.findall(r"\*\*(.+?)\*\*", prose):
        for number in re.findall(r"(?<![\w.])\d+\.\d+", bold):
            if number not in known:
                missing.append(f"{number} (in **{bold}**)")
    assert not missing, "bold figures in docs/benchmarks.md found in no results file: " + ", ".join(missing)


def test_every_results_file_records_its_command_commit_and_date() -> None:
    report = _report()
    files = report.load_all()
    assert files, "no results files"
    for name, doc in files.items():
        provenance = report._provenance(doc)
        assert provenance, f"{name}.json records no command"
        for p in provenance:
            for key in ("command", "commit", "date"):
                assert p.get(key), f"{name}.json: provenance lacks {key}"


def test_the_renderer_lists_a_figure_with_its_ci(tmp_path: Path) -> None:
    report = _report()
    doc = {"command": "x", "commit": "abc", "date": "d", "metrics": {"auc": {"value": 0.9123, "ci95": [0.9, 0.93]}}}
    rows = list(report.figures(json.loads(json.dumps(doc))))
    assert rows == [("metrics.auc", 0.9123, [0.9, 0.93])]
