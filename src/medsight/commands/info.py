"""``medsight info PATH``: what DICOM is in a file, folder or tree, without showing who it belongs to.

Studies, series, modality, size and geometry are printed; patient name, ID, birth date, dates, accession
number and UIDs only with ``--show-phi``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from medsight.errors import MedsightError
from medsight.io.dicom import ScanResult, Series, Study, scan, series_layout

#: Unreadable files named one per line when nothing in a folder could be read (each with its problem).
SHOWN_IN_ERROR = 20


def register(subparsers: Any) -> None:
    """Add the ``info`` subcommand."""
    parser = subparsers.add_parser(
        "info",
        help="summarise the DICOM studies and series in a file, folder or tree",
        description=(
            "Scan PATH for DICOM, group it into studies and series and print modality, size and geometry "
            "(spacing from slice positions, orientation, origin in LPS mm). No patient identifier is printed "
            "unless --show-phi is given."
        ),
    )
    parser.add_argument("path", help="a DICOM file, or a folder searched recursively")
    parser.add_argument(
        "--show-phi",
        action="store_true",
        help="also print identifiers: patient name/ID/birth date, study date, accession number, UIDs",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Scan, summarise, print: 0 when every DICOM file was read, 1 when some could not be (the rest is still
    summarised and each unreadable file named with its problem), 2 on bad input (MedsightError): no such path, a
    single file that cannot be read, or nothing readable at all."""
    result = scan(args.path, strict=False)
    if result.n_instances == 0:
        if len(result.unreadable) == 1:
            file, problem = result.unreadable[0]
            raise MedsightError(problem, file)
        unreadable = f", {len(result.unreadable)} unreadable DICOM files" if result.unreadable else ""
        named = [f"\n  {file}: {problem}" for file, problem in result.unreadable[:SHOWN_IN_ERROR]]
        if len(result.unreadable) > SHOWN_IN_ERROR:
            named.append(f"\n  ... and {len(result.unreadable) - SHOWN_IN_ERROR} more")
        raise MedsightError(
            f"no DICOM objects found ({len(result.skipped)} other files{unreadable}){''.join(named)}", args.path
        )
    summary = summarise(result, show_phi=args.show_phi)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(render(summary))
    return 1 if result.unreadable else 0


def summarise(result: ScanResult, *, show_phi: bool = False) -> dict[str, Any]:
    """A JSON-ready summary of a scan; identifiers only with ``show_phi``."""
    return {
        "path": str(result.root),
        "dicom_files": result.n_instances,
        "skipped_files": len(result.skipped),
        "unreadable_files": [{"file": str(path), "problem": problem} for path, problem in result.unreadable],
        "studies": [_study(study, n, show_phi) for n, study in enumerate(result.studies, start=1)],
    }


def _study(study: Study, n: int, show_phi: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"study": n, "description": study.description, "series_count": len(study.series)}
    if show_phi:
        out["phi"] = {
            "patient_name": study.patient_name,
            "patient_id": study.patient_id,
            "patient_birth_date": study.patient_birth_date,
            "study_date": study.study_date,
            "accession_number": study.accession_number,
            "study_instance_uid": study.study_instance_uid,
        }
    out["series"] = [_series(s, show_phi) for s in study.series]
    return out


def _series(series: Series, show_phi: bool) -> dict[str, Any]:
    first = series.instances[0]
    out: dict[str, Any] = {
        "number": series.series_number,
        "description": series.description,
        "modality": series.modality,
        "sop_class": ", ".join(series.sop_class_names),
        "transfer_syntax": ", ".join(series.transfer_syntax_names),
        "instances": len(series.instances),
        "frames": len(series.frames),
    }
    if series.duplicates:
        out["duplicate_files"] = len(series.duplicates)
    if show_phi:
        out["series_instance_uid"] = series.series_instance_uid
    if not series.is_image:
        return out
    out["size"] = [first.columns, first.rows, len(series.frames)]
    try:
        layout = series_layout(series, allow_irregular=True)
    except MedsightError as exc:
        out["geometry"] = None
        out["note"] = exc.problem
        return out
    g = layout.geometry
    out["size"] = [first.columns, first.rows, len(layout.frames)]
    if g is None:
        out["geometry"] = None
    else:
        out["geometry"] = {
            "spacing_mm": [round(v, 6) for v in g.spacing],
            "origin_lps_mm": [round(v, 4) for v in g.origin],
            "direction": [round(v, 6) for v in g.direction],
            "orientation": g.orientation_code(),
            "plane": g.plane(),
            "slice_spacing_from": "positions" if len(layout.frames) > 1 else "header (single slice)",
        }
    notes = [n for n in layout.notes if g is not None]
    if notes:
        out["note"] = "; ".join(notes)
    return out


def render(summary: dict[str, Any]) -> str:
    """Human-readable text of :func:`summarise`'s output."""
    lines = [
        f"{summary['path']}: {summary['dicom_files']} DICOM files in {len(summary['studies'])} "
        f"stud{'y' if len(summary['studies']) == 1 else 'ies'}"
        + (f", {summary['skipped_files']} other files skipped" if summary["skipped_files"] else "")
        + (f", {len(summary['unreadable_files'])} unreadable" if summary["unreadable_files"] else "")
    ]
    for study in summary["studies"]:
        description = study["description"] or "(no description)"
        lines.append(f"Study {study['study']}: {description}, {study['series_count']} series")
        for key, value in study.get("phi", {}).items():
            lines.append(f"  {key}: {value}")
        for s in study["series"]:
            lines.append(
                f"  Series {s['number'] if s['number'] is not None else '?'} "
                f"[{s['modality'] or '?'}] {s['description'] or '(no description)'}: "
                f"{s['instances']} instance(s), {s['frames']} frame(s); "
                f"{s['sop_class']}; {s['transfer_syntax']}"
            )
            if "series_instance_uid" in s:
                lines.append(f"    series_instance_uid: {s['series_instance_uid']}")
            if "size" in s:
                cols, rows, slices = s["size"]
                lines.append(f"    size: {cols} x {rows} x {slices} (columns x rows x slices)")
            g = s.get("geometry")
            if g:
                sx, sy, sz = g["spacing_mm"]
                lines.append(f"    spacing: {sx:g} x {sy:g} x {sz:g} mm (slice spacing from {g['slice_spacing_from']})")
                lines.append(f"    orientation: {g['orientation']} ({g['plane']}); origin LPS: {g['origin_lps_mm']}")
            elif "size" in s:
                lines.append("    geometry: none (no patient position/orientation)")
            if s.get("duplicate_files"):
                lines.append(f"    duplicate files ignored: {s['duplicate_files']}")
            if s.get("note"):
                lines.append(f"    note: {s['note']}")
    if summary["unreadable_files"]:
        lines.append("Unreadable DICOM files (not summarised):")
        lines += [f"  {u['file']}: {u['problem']}" for u in summary["unreadable_files"]]
    return "\n".join(lines)
