"""``medsight ensemble BUNDLE BUNDLE ... --data DATA --out BUNDLE``: several segmentation models of one fold as one."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsight.commands._arguments import output_folder, refuse_inputs_inside


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ensemble",
        help="combine segmentation bundles of one fold into one that averages their probabilities",
        description="Combine segmentation bundles trained on the same fold (e.g. 'medsight train' with other "
        "--seed values) into one bundle whose network averages the members' softmax probabilities, as nnU-Net "
        "averages its models. The members must read images the same way and share a validation split; the "
        "ensemble's post-processing and review threshold are chosen again on that split from DATA. The result is "
        "an ordinary bundle for predict, evaluate, stream and the service. See docs/segmentation.md.",
    )
    p.add_argument("bundles", type=Path, nargs="+", help="two or more segmentation bundles of one fold")
    p.add_argument("--data", required=True, help="the data the bundles were trained on (as for 'medsight train')")
    p.add_argument("--out", type=output_folder("bundle.json"), required=True, help="the ensemble bundle's folder")
    flips = p.add_mutually_exclusive_group()
    flips.add_argument("--mirror", dest="flips", action="store_true", help="predict averaged over mirrored copies")
    flips.add_argument("--no-mirror", dest="flips", action="store_false", help="predict in one pass")
    p.set_defaults(func=run, flips=None)


def run(args: argparse.Namespace) -> int:
    refuse_inputs_inside(args.out, *args.bundles, args.data)
    from medsight.tasks.segmentation.ensemble import combine

    meta = combine(args.bundles, args.data, args.out, args.flips)
    print(f"validation Dice {meta['metrics']['val']['dice']:.4f} ({len(args.bundles)} members)")
    print(f"bundle: {args.out}")
    return 0
