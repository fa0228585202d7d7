"""``medsight compare NEW OLD DATA --out DIR``: does the new bundle beat the old on the same cases?"""

from __future__ import annotations

import argparse
from pathlib import Path

from medsight.commands._arguments import MIN_BOOTSTRAP, output_folder, refuse_inputs_inside, whole
from medsight.defaults import N_BOOTSTRAP


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare two bundles on the same cases with paired tests",
        description="Score NEW and OLD on the same cases of DATA (the frozen validation split of a feedback export "
        "by default) and say whether NEW beats OLD: paired bootstrap of each metric's difference with a 95% CI, "
        "DeLong's test for a binary classifier's AUC, McNemar's test for accuracy, the Wilcoxon signed-rank test "
        "for per-case Dice. Writes DIR/compare.json and DIR/compare.html (with plots). Exit status 0 whatever the "
        "verdict; the verdict is printed and in compare.json. See docs/feedback.md.",
    )
    p.add_argument("new", type=Path, help="the candidate bundle (e.g. fine-tuned with 'medsight train --init OLD')")
    p.add_argument("old", type=Path, help="the bundle in use")
    p.add_argument("data", help="data source both can read (as for 'medsight evaluate')")
    p.add_argument("--split", default="val", help="split to compare on (default val: the frozen feedback split)")
    p.add_argument(
        "--out",
        type=output_folder("compare.json"),
        help="output folder (default: compare_out)",
        default=Path("compare_out"),
    )
    p.add_argument(
        "--bootstrap",
        type=whole(MIN_BOOTSTRAP),
        default=N_BOOTSTRAP,
        help=f"bootstrap resamples for CIs, at least {MIN_BOOTSTRAP} (default {N_BOOTSTRAP})",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    refuse_inputs_inside(args.out, args.new, args.old, args.data)
    from medsight.feedback.compare import compare
    from medsight.feedback.compare_report import write_report

    result = compare(args.new, args.old, args.data, args.split, args.bootstrap)
    page = write_report(args.out, result)
    print(result["verdict"]["text"])
    if result.get("caveat"):
        print(f"note: {result['caveat']}")
    print(f"report: {page}")
    return 0
