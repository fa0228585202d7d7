"""The run's proof: a JSON and a self-contained HTML report, and one audit-log line per run.

Neither holds PHI: attribute actions are counted per table row, outputs are named by their de-identified
path, and inputs by their index in the sorted input list and a keyed hash of their path (paths often hold
a name, an ID or a birth date). Only a report written to a folder outside OUT that the user names also
lists input paths. The audit line holds options, counts, timing and the key's fingerprint only.
"""

from __future__ import annotations

import html
import json
import os
from collections import Counter
from collections.abc import Callable
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

    input: str  # path relative to IN: never written to a report inside OUT
    index: int = 0
    status: str = "rejected"  # written, skipped, rejected, quarantined, not processed
    reason: str | None = None
    output: str | None = None
    modality: str = ""
    masked_words: int = 0
    needs_review: bool = False
    actions: dict[str, int] = field(default_factory=dict)  # "rowid|code" -> count
    flags: list[str] = field(default_factory=list)
    cleaned_by: str | None = None
    review: list[str] = field(default_factory=list)
    reid: dict[str, tuple[str, str]] = field(default_factory=dict)


def shown_path(rel: str) -> str:
    """A path as the report lists it: bytes of a name that are not UTF-8 (a Latin-1 ``M\\xfcller.dcm`` from a
    Windows or CD export, read as surrogates) written as ``\\xNN``, so writing the report never fails on them."""
    try:
        return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name decodes to
        return rel.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class RunReport:
    """The aggregated run, as written to deid_report.json."""

    options: list[str]
    clean_pixels: bool
    key_id: str
    workers: int
    started: str
    text_detection: str = "off"
    burned_in_risk_accepted: bool = False
    identity_rule: str = "id+issuer"  # how one person is recognised (--patient-key)
    interrupted: bool = False
    seconds: float = 0.0
    inputs: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    flagged: list[dict[str, Any]] = field(default_factory=list)
    duplicate_groups: list[list[int]] = field(default_factory=list)  # input indexes; only the report's ids leave
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    attributes: list[dict[str, Any]] = field(default_factory=list)
    outside_table: list[dict[str, Any]] = field(default_factory=list)

    def add(self, results: list[FileResult], input_id: Callable[[str], str], with_paths: bool = False) -> None:
        """Fold per-file results (sorted by index) into the report; inputs named by index and keyed hash."""
        counts: Counter[str] = Counter()
        ids: dict[int, str] = {}
        for r in results:
            ids[r.index] = input_id(r.input)
            entry: dict[str, Any] = {"index": r.index, "id": ids[r.index], "status": r.status}
            if r.reason:
                entry["reason"] = r.reason
            if r.output:
                entry["output"] = r.output
            if with_paths:
                entry["path"] = shown_path(r.input)
            self.inputs.append(entry)
            brief = {k: v for k, v in entry.items() if k != "status"}
            if r.status in ("skipped", "rejected", "quarantined"):
                getattr(self, r.status).append(brief)
            if r.status != "written":
                continue
            counts.update(r.actions)
            if r.flags or r.review:
                self.flagged.append(
                    {
                        "output": r.output,
                        "modality": r.modality,
                        "reasons": r.flags + r.review,
                        "cleaned_by_rule": r.cleaned_by,
                        "ocr_masked_words": r.masked_words,
                        "needs_review": r.needs_review,
                    }
                )
        self.duplicates = [
            {"inputs": [{"index": i, "id": ids[i]} for i in group]} for group in self.duplicate_groups if group
        ]
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
            if row in rules
        ]
        self.outside_table = [
            {"vr": row.split(":", 1)[1], "applied": dict(sorted(acts.items()))}
            for row, acts in sorted(per_row.items())
            if row.startswith("outside:")
        ]

    @property
    def counts(self) -> dict[str, int]:
        """Headline numbers (also the audit line's)."""
        status = Counter(i["status"] for i in self.inputs)
        return {
            "files_seen": len(self.inputs),
            "written": status["written"],
            "skipped": status["skipped"],
            "rejected": status["rejected"],
            "quarantined": status["quarantined"],
            "not_processed": status["not processed"],
            "flagged": len(self.flagged),
            "pixels_cleaned": sum(1 for f in self.flagged if f["cleaned_by_rule"] or f["ocr_masked_words"]),
            "needs_review": sum(1 for f in self.flagged if f["needs_review"]),
            "duplicates": len(self.duplicates),
        }

    def as_dict(self) -> dict[str, Any]:
        """The JSON document."""
        data = asdict(self)
        data.pop("duplicate_groups")
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
                ["text detection (OCR)", data["text_detection"]],
                ["burned-in risk accepted", data["burned_in_risk_accepted"]],
                ["identity rule", data["identity_rule"]],
                ["interrupted", "YES" if data["interrupted"] else "no"],
                *[[k.replace("_", " "), v] for k, v in counts.items()],
            ],
        ),
        "<h2>Files flagged for burned-in text</h2>",
        _table(
            ["output", "modality", "reasons", "cleaned by rule", "OCR words masked", "needs a person's review"],
            [
                [
                    f["output"],
                    f["modality"],
                    "; ".join(f["reasons"]),
                    f["cleaned_by_rule"] or "",
                    f["ocr_masked_words"],
                    "YES" if f["needs_review"] else "no",
                ]
                for f in data["flagged"]
            ],
        ),
        *[
            part
            for title, key in (
                ("Files quarantined (text may be burned into the pixels; not written)", "quarantined"),
                ("Files rejected (DICOM that could not be de-identified; not written)", "rejected"),
                ("Files skipped (not DICOM, DICOMDIR, duplicates, links met twice)", "skipped"),
            )
            for part in (
                f"<h2 class='warn'>{html.escape(title)}</h2>",
                _table(
                    ["input #", "input id", *(["path"] if any("path" in r for r in data[key]) else []), "reason"],
                    [
                        [r["index"], r["id"], *([r["path"]] if "path" in r else []), r.get("reason", "")]
                        for r in data[key]
                    ],
                ),
            )
        ],
        "<h2>Inputs sharing one SOP Instance UID</h2>",
        _table(["inputs (#: id)"], [[", ".join(f"#{i['index']}: {i['id']}" for i in d["inputs"])]
                                    for d in data["duplicates"]]),
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
            "interrupted": report.interrupted,
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
