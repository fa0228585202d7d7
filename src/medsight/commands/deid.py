"""``medsight deid IN OUT``: de-identify DICOM files to PS3.15 with a report that proves it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from medsight.errors import MedsightError

#: CLI flag -> option name in medsight.privacy.profile.OPTIONS, with its help.
FLAGS = {
    "--retain-modified-dates": (
        "retain_modified_dates",
        "keep longitudinal temporal information: dates shifted by one keyed offset per patient",
    ),
    "--retain-full-dates": ("retain_full_dates", "keep dates and times unmodified"),
    "--retain-patient-characteristics": (
        "retain_patient_characteristics",
        "keep sex, age, size, weight and the like (for subgroup audits)",
    ),
    "--retain-device-identity": ("retain_device_identity", "keep device serial numbers, station names"),
    "--retain-institution-identity": ("retain_institution_identity", "keep institution names and addresses"),
    "--retain-uids": ("retain_uids", "keep the original UIDs"),
    "--retain-safe-private": ("retain_safe_private", "keep private attributes on the shipped safe list"),
    "--clean-descriptors": ("clean_descriptors", "keep descriptions (series, protocol...) with identifiers scrubbed"),
    "--clean-structured-content": ("clean_structured_content", "keep SR content and acquisition context, cleaned"),
    "--clean-graphics": ("clean_graphics", "keep overlays, curves and graphic annotations, cleaned"),
}


def register(subparsers: Any) -> None:
    """Add the ``deid`` subcommand."""
    parser = subparsers.add_parser(
        "deid",
        help="de-identify DICOM files (PS3.15 Basic Profile and options)",
        description=(
            "De-identify every DICOM file under IN into OUT (named by new UIDs) following DICOM PS3.15 "
            "Annex E, Table E.1-1, and write deid_report.json/.html. Never writes into IN. Exit status 1 "
            "when some files were rejected. See docs/privacy.md."
        ),
    )
    parser.add_argument("input", type=Path, metavar="IN", help="DICOM file or folder (read only)")
    parser.add_argument("output", type=Path, metavar="OUT", help="output folder (outside IN)")
    group = parser.add_argument_group("PS3.15 options")
    for flag, (_, help_text) in FLAGS.items():
        group.add_argument(flag, action="store_true", help=help_text)
    parser.add_argument(
        "--clean-pixels",
        action="store_true",
        help="blank burned-in text in regions given by the pixel rules (pixel_rules.json)",
    )
    parser.add_argument(
        "--key-file",
        type=Path,
        default=None,
        help="secret key file (hex); created 0600 if missing. $MEDSIGHT_DEID_KEY (hex) wins. "
        "Default ~/.medsight/deid.key",
    )
    parser.add_argument(
        "--reid-table",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write original→pseudonym CSV here (PHI: must be outside IN and OUT)",
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, metavar="N", help="worker processes (default: every core)"
    )
    parser.add_argument(
        "--report", type=Path, default=None, metavar="DIR", help="folder for deid_report.json/.html (default: OUT)"
    )
    parser.add_argument(
        "--audit-log",
        type=Path,
        default=None,
        metavar="PATH",
        help="append one line per run here (default ~/.medsight/deid_audit.log)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """De-identify; 0 when every file was written, 1 when some were rejected."""
    from medsight.privacy.pseudonyms import KEY_ENV, load_key
    from medsight.privacy.run import DEFAULT_AUDIT_LOG, check_paths, deidentify

    options = [name for flag, (name, _) in FLAGS.items() if getattr(args, flag[2:].replace("-", "_"))]
    if args.retain_modified_dates and args.retain_full_dates:
        raise MedsightError("choose one of --retain-modified-dates and --retain-full-dates")
    if args.workers < 1:
        raise MedsightError("--workers must be 1 or more")
    key_file = None if os.environ.get(KEY_ENV) else args.key_file
    check_paths(args.input, args.output, args.reid_table, key_file)
    key = load_key(key_file)
    result = deidentify(
        args.input,
        args.output,
        key=key,
        options=options,
        clean_pixels=args.clean_pixels,
        workers=args.workers,
        reid_table=args.reid_table,
        report_dir=args.report,
        audit_log=args.audit_log or DEFAULT_AUDIT_LOG,
        progress=not (args.no_progress or args.quiet),
    )
    counts = result.report.counts
    print(
        f"de-identified {counts['written']} of {counts['files_seen']} files into {args.output} "
        f"({result.report.seconds:.1f} s)"
    )
    print(f"report: {result.report_paths[0]} and {result.report_paths[1]}")
    if counts["flagged"]:
        print(f"{counts['flagged']} files flagged for burned-in text; {counts['needs_review']} need review")
    if result.reid_table is not None:
        print(f"re-identification table: {result.reid_table} (keep it secret)")
    if counts["rejected"]:
        print(f"{counts['rejected']} files rejected: see the report")
        return 1
    return 0
