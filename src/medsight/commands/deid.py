"""``medsight deid IN OUT``: de-identify DICOM files to PS3.15 with a report that proves it."""

from __future__ import annotations

import argparse
import os
import sys
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
            "Annex E, Table E.1-1, and write deid_report.json/.html. Never writes into IN. Files that may "
            "carry burned-in text are quarantined (not written) unless a pixel rule cleaned them or "
            "--accept-burned-in-risk is given. Exit status: 0 every DICOM file written (non-DICOM files "
            "skipped), 1 some DICOM files rejected, 3 some quarantined, 2 bad input, 130 interrupted. "
            "See docs/privacy.md."
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
        "--accept-burned-in-risk",
        action="store_true",
        help="write files that may carry burned-in text (listed for review) instead of quarantining them",
    )
    parser.add_argument(
        "--detect-text",
        choices=("off", "flag", "mask"),
        default="off",
        help="read the pixels with OCR (tesseract): 'flag' quarantines files where text is read, 'mask' also "
        "blanks the words found (recall below 100%%: see docs/privacy.md)",
    )
    parser.add_argument(
        "--on-duplicate",
        choices=("keep", "first"),
        default="keep",
        help="inputs sharing a SOP Instance UID: keep all (<uid>.dupN.dcm) or only the first (default keep)",
    )
    parser.add_argument(
        "--patient-key",
        choices=("id+issuer", "id"),
        default="id+issuer",
        help="who is one patient: Patient ID with its Issuer (default; the same ID from two issuers is two "
        "patients) or Patient ID alone (files lacking the issuer join the others)",
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
        "--address",
        metavar="ADDR",
        help="run the --workers N workers on the Ray cluster at ADDR (e.g. ray://head:10001; needs Ray, see "
        "docs/scale.md); IN, OUT and the key must be reachable from every node",
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder for deid_report.json/.html (default: OUT, where inputs are named by index and keyed hash; "
        "a folder outside OUT also lists input paths). Never inside IN",
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
    """De-identify; see the exit statuses in the description."""
    from medsight.privacy.pseudonyms import KEY_ENV, load_key
    from medsight.privacy.run import DEFAULT_AUDIT_LOG, check_paths, deidentify

    options = [name for flag, (name, _) in FLAGS.items() if getattr(args, flag[2:].replace("-", "_"))]
    if args.retain_modified_dates and args.retain_full_dates:
        raise MedsightError("choose one of --retain-modified-dates and --retain-full-dates")
    if args.workers < 1:
        raise MedsightError("--workers must be 1 or more")
    key_file = None if os.environ.get(KEY_ENV) else args.key_file
    audit_log = args.audit_log or DEFAULT_AUDIT_LOG
    check_paths(args.input, args.output, args.reid_table, key_file, args.report, audit_log)
    result = deidentify(
        args.input,
        args.output,
        key=lambda: load_key(key_file),  # created on the first run that has DICOM to de-identify
        options=options,
        clean_pixels=args.clean_pixels,
        accept_burned_in=args.accept_burned_in_risk,
        ocr_mode=args.detect_text,
        on_duplicate=args.on_duplicate,
        patient_key=args.patient_key,
        workers=args.workers,
        reid_table=args.reid_table,
        report_dir=args.report,
        audit_log=audit_log,
        progress=not (args.no_progress or args.quiet),
        address=args.address,
    )
    counts = result.report.counts
    print(
        f"de-identified {counts['written']} of {counts['files_seen']} files into {args.output} "
        f"({result.report.seconds:.1f} s)"
    )
    print(f"report: {result.report_paths[0]} and {result.report_paths[1]}")
    if result.resumed:
        print(f"{result.resumed} files were finished by an earlier run into {args.output} and not redone")
    if counts["skipped"]:
        print(f"{counts['skipped']} files skipped (not DICOM, DICOMDIR, duplicates): see the report")
    if counts["duplicates"]:
        print(f"{counts['duplicates']} SOP Instance UIDs shared by several inputs (--on-duplicate {args.on_duplicate})")
    if counts["flagged"]:
        print(f"{counts['flagged']} written files flagged for burned-in text; {counts['needs_review']} need review")
    if result.reid_table is not None:
        print(f"re-identification table: {result.reid_table} (keep it secret)")
    if result.report.interrupted:
        print(
            f"interrupted: {counts['not_processed']} files not processed; the report covers what was done",
            file=sys.stderr,
        )
        return 130
    if counts["rejected"]:
        print(f"{counts['rejected']} DICOM files rejected (could not be de-identified): see the report")
    if counts["quarantined"]:
        print(
            f"{counts['quarantined']} files quarantined (text may be burned into their pixels; not written): "
            "see the report, add a pixel rule, or pass --accept-burned-in-risk"
        )
    # both are told; the status names the graver (a file that could not be de-identified at all)
    return 1 if counts["rejected"] else 3 if counts["quarantined"] else 0
