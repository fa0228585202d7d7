"""The run's proof: a JSON and a self-contained HTML report, and one audit-log line per run.

Neither holds PHI: attribute actions are counted per table row, files are named by their de-identified
output path, and rejected inputs by their path relative to the input folder (name your folders without
identifiers). The audit line holds options, counts, timing and the key's fingerprint only.
"""

from __future__ import annotations

import html
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medsight import __version__
from medsight.io.atomic import write_json, write_text
from medsight.privacy.profile import Profile

PROFILE_NAME = "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile (Table E.1-1)"


@dataclass
class FileResult:
    """What happened to one input file (no PHI except ``reid``, which only feeds the reid table)."""

    input: str
    output: str | None = None
    error: str | None = None
    modality: str = ""
    actions: dict[str, int] = field(default_factory=dict)  # "rowid|code" -> count
    flags: list[str] = field(default_factory=list)
    cleaned_by: str | None = None
    review: list[str] = field(default_factory=list)
    reid: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass
class RunReport:
    """The aggregated run, as written to deid_report.json."""

    options: list[str]
    clean_pixels: bool
    key_id: str
    workers: int
    started: str
    seconds: float = 0.0
    files_seen: int = 0
    written: int = 0
    rejected: list[dict[str, str]] = field(default_factory=list)
    flagged: list[dict[str, Any]] = field(default_factory=list)
    duplicates: int = 0
    attributes: list[dict[str, Any]] = field(default_factory=list)

    def add(self, results: list[FileResult]) -> None:
        """Fold per-file results into the report."""
        counts: Counter[str] = Counter()
        seen_outputs: set[str] = set()
        for r in results:
            self.files_seen += 1
            if r.error is not None:
                self.rejected.append({"input": r.input, "reason": r.error})
                continue
            self.written += 1
            if r.output in seen_outputs:
                self.duplicates += 1
            seen_outputs.add(str(r.output))
            counts.update(r.actions)
            if r.flags or r.review:
                needs_review = bool(r.review) or r.cleaned_by is None or any("Recognizable" in f for f in r.flags)
                self.flagged.append(
                    {
                        "output": r.output,
                        "modality": r.modality,
                        "reasons": r.flags + r.review,
                        "cleaned_by_rule": r.cleaned_by,
                        "needs_review": needs_review,
                    }
                )
        rules = {rule.id: rule for rule in Profile.load().rules}
        per_row: dict[str, dict[str, int]] = {}
        for key, n in counts.items():
            row, code = key.split("|", 1)
            per_row.setdefault(row, {})[code] = per_row.get(row, {}).get(code, 0) + n
        self.attributes = [
            {
                "tag": rules[row].tag,
                "name": rules[row].name,
                "basic_profile": rules[row].basic,
                "applied": dict(sorted(acts.items())),
            }
            for row, acts in sorted(per_row.items())
        ]

    @property
    def counts(self) -> dict[str, int]:
        """Headline numbers (also the audit line's)."""
        return {
            "files_seen": self.files_seen,
            "written": self.written,
            "rejected": len(self.rejected),
            "flagged": len(self.flagged),
            "pixels_cleaned": sum(1 for f in self.flagged if f["cleaned_by_rule"]),
            "needs_review": sum(1 for f in self.flagged if f["needs_review"]),
            "duplicates": self.duplicates,
        }

    def as_dict(self) -> dict[str, Any]:
        """The JSON document."""
        data = asdict(self)
        return {"tool": f"medsight {__version__} deid", "profile": PROFILE_NAME, "counts": self.counts, **data}


def write_reports(report: RunReport, folder: Path) -> tuple[Path, Path]:
    """Write deid_report.json and deid_report.html into ``folder`` (atomically)."""
    data = report.as_dict()
    json_path = write_json(folder / "deid_report.json", data)
    html_path = write_text(folder / "deid_report.html", render_html(data))
    return json_path, html_path


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(data: dict[str, Any]) -> str:
    """A self-contained page (inline CSS, no scripts, no external links)."""
    counts = data["counts"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>medsight de-identification report"
        "</title><style>body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #bbb;padding:.25em .5em;text-align:left;font-size:.9em}"
        "th{background:#eee}.warn{color:#a40}</style></head><body>",
        "<h1>De-identification report</h1>",
        f"<p>{html.escape(data['tool'])}; {html.escape(data['profile'])}.</p>",
        _table(
            ["item", "value"],
            [
                ["started", data["started"]],
                ["seconds", data["seconds"]],
                ["options", ", ".join(data["options"]) or "none (Basic Profile only)"],
                ["clean pixels", data["clean_pixels"]],
                ["key id", data["key_id"]],
                ["workers", data["workers"]],
                *[[k.replace("_", " "), v] for k, v in counts.items()],
            ],
        ),
        "<h2>Files flagged for burned-in text</h2>",
        _table(
            ["output", "modality", "reasons", "cleaned by rule", "needs a person's review"],
            [
                [
                    f["output"],
                    f["modality"],
                    "; ".join(f["reasons"]),
                    f["cleaned_by_rule"] or "",
                    "YES" if f["needs_review"] else "no",
                ]
                for f in data["flagged"]
            ],
        ),
        "<h2 class='warn'>Files rejected (not written)</h2>",
        _table(["input", "reason"], [[r["input"], r["reason"]] for r in data["rejected"]]),
        "<h2>Actions per attribute (Table E.1-1 rows met in the data)</h2>",
        _table(
            ["tag", "name", "basic profile", "applied (code: count)"],
            [
                [a["tag"], a["name"], a["basic_profile"], ", ".join(f"{k}: {v}" for k, v in a["applied"].items())]
                for a in data["attributes"]
            ],
        ),
        "</body></html>\n",
    ]
    return "".join(parts)


def append_audit(path: Path, report: RunReport) -> None:
    """Append one JSON line (options, counts, time, key fingerprint; no PHI, no paths).

    An append of one short line with O_APPEND is atomic on POSIX, so concurrent runs never interleave.
    """
    line = json.dumps(
        {
            "time": report.started,
            "tool": f"medsight {__version__} deid",
            "options": report.options,
            "clean_pixels": report.clean_pixels,
            "key_id": report.key_id,
            "workers": report.workers,
            "seconds": report.seconds,
            **report.counts,
        },
        sort_keys=True,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
