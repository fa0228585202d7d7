"""``medsight evaluate BUNDLE DATA --split test --out DIR``: metrics with CIs and the model card."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsight import tasks
from medsight.evaluation.metrics import N_BOOTSTRAP
from medsight.training.bundle import load_bundle


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a bundle: metrics.json and card.html",
        description="Evaluate BUNDLE on a split of DATA: every metric with a 95%% bootstrap CI, the operating "
        "point chosen on validation, calibration, subgroup audit and explanation examples, written to "
        "DIR/metrics.json, DIR/card.json and a self-contained DIR/card.html.",
    )
    p.add_argument("bundle", type=Path, help="bundle folder written by 'medsight train'")
    p.add_argument("data", help="data source (as for 'medsight train')")
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument("--out", required=True, type=Path, help="output folder (replaced atomically)")
    p.add_argument(
        "--bootstrap", type=int, default=N_BOOTSTRAP, help=f"bootstrap resamples for CIs (default {N_BOOTSTRAP})"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    bundle = load_bundle(args.bundle)
    result = tasks.get(bundle.task).evaluate(args.bundle, args.data, args.split, args.out, args.bootstrap)
    metrics = result.get("metrics", {})
    shown = ", ".join(
        f"{k} {v['value']:.4f} [{v['ci95'][0]:.4f}, {v['ci95'][1]:.4f}]"
        for k, v in metrics.items()
        if isinstance(v, dict) and v.get("value") is not None and v.get("ci95", [None])[0] is not None
    )
    print(f"{args.split}: {shown}")
    print(f"metrics: {args.out / 'metrics.json'}")
    print(f"card: {args.out / 'card.html'}")
    return 0
