"""``medsight feedback export --model NAME --out DIR``: the readers' verdicts as a training data set."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsight.commands._arguments import output_folder, refuse_inputs_inside


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "feedback",
        help="turn the readers' verdicts into training data",
        description="Work with the verdicts radiologists gave in the review workstation. See docs/feedback.md.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    e = actions.add_parser(
        "export",
        help="write a model's reviewed cases as a data set 'medsight train' reads",
        description="Write the reviewed findings of MODEL (a route name) as a data set 'medsight train' reads, "
        "with the readers' labels: for a classification route DIR/manifest.csv and DIR/images/*.npy (pixels only); "
        "for a segmentation route an images/ + labels/ pairs folder with the readers' masks; for a detection route "
        "COCO (DIR/annotations.json) with the readers' boxes; always DIR/export.json (what was exported and what "
        "was left out, and why). The split comes from the model's frozen split in the service's data folder: a "
        "patient keeps the side it was first given in every later export. Patient identifiers are replaced by "
        "keyed pseudonyms. Train on it with 'medsight train DIR --init BUNDLE'.",
    )
    e.add_argument("--model", required=True, help="the model's name: its route in the site configuration")
    e.add_argument(
        "--out", required=True, type=output_folder("export.json"), help="folder to write (replaced atomically)"
    )
    e.add_argument("--config", type=Path, help="the service's site configuration (default: the built-in one)")
    e.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    refuse_inputs_inside(args.out, args.config)
    from medsight.feedback.export import export

    summary = export(args.config, args.model, args.out)
    split = summary["by_split"]
    print(
        f"exported {summary['cases']} case(s) of {summary['model']}: "
        + ", ".join(f"{s} {sum(split[s].values())}" for s in ("train", "val"))
        + f" ({summary['frozen_split']['new_units']} new unit(s) assigned to the frozen split)"
    )
    for why, n in summary["left_out"].items():
        print(f"left out: {n} finding(s): {why}")
    entry = {"classification": "manifest.csv", "detection": "annotations.json"}.get(str(summary.get("task")), "")
    print(f"data set: {args.out / entry if entry else args.out}")
    return 0
