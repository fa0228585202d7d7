"""``medsight evaluate BUNDLE DATA --split test --out DIR``: metrics with CIs and the model card."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medsight import tasks
from medsight.commands._arguments import MIN_BOOTSTRAP, output_folder, refuse_inputs_inside, whole
from medsight.defaults import N_BOOTSTRAP
from medsight.errors import MedsightError

#: What this command's output folder always holds (metrics.json; shift.json under --shift-only): another folder
#: is not replaced.
WRITES = ("metrics.json", "shift.json")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a bundle: metrics.json and card.html",
        description="Evaluate BUNDLE on a split of DATA: every metric with a 95% bootstrap CI, the operating "
        "point chosen on validation, calibration, subgroup audit and explanation examples, written to "
        "DIR/metrics.json, DIR/card.json and a self-contained DIR/card.html.",
    )
    p.add_argument("bundle", type=Path, help="bundle folder written by 'medsight train'")
    p.add_argument("data", help="data source (as for 'medsight train')")
    p.add_argument(
        "--split",
        default="test",
        help="split to evaluate (default test); a test split holding a case the bundle was trained or validated on "
        "(recognised by its pixels, in any folder or format) is refused",
    )
    p.add_argument("--out", required=True, type=output_folder(*WRITES), help="output folder (replaced atomically)")
    p.add_argument(
        "--bootstrap",
        type=whole(MIN_BOOTSTRAP),
        default=N_BOOTSTRAP,
        help=f"bootstrap resamples for CIs, at least {MIN_BOOTSTRAP} (default {N_BOOTSTRAP})",
    )
    p.add_argument(
        "--positive",
        metavar="LABEL",
        help="binary classification: report sensitivity, AUC, PPV... for this label (default: the bundle's positive "
        "class, which the data set declares, e.g. malignant for BreastMNIST)",
    )
    shift = p.add_argument_group("other sites (segmentation, classification and outcome bundles; docs/trust.md)")
    shift.add_argument(
        "--shift",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write DIR/shift.html + shift.json: how DATA differ from the training fingerprint, each feature with its "
        "statistic and threshold, and the metrics beside the internal ones (default: on when DATA is not the "
        "bundle's training data)",
    )
    shift.add_argument(
        "--recalibrate",
        type=whole(0),
        default=0,
        metavar="N",
        help="fit temperature scaling on N labelled cases of DATA and report the ECE before and after on the rest",
    )
    shift.add_argument(
        "--internal", type=Path, default=None, help="metrics.json (or its folder) of the internal evaluation"
    )
    shift.add_argument(
        "--shift-only",
        action="store_true",
        help="DATA are unlabelled inputs (image files, DICOM series folders): write only the shift report, with the "
        "class shares the model predicts against the training labels'",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    refuse_inputs_inside(args.out, args.bundle, args.data)
    from medsight.training.bundle import load_bundle  # torch: imported when the command runs

    bundle = load_bundle(args.bundle)
    if getattr(args, "shift_only", False):
        from medsight.monitoring.site import input_report

        report = input_report(args.bundle, [Path(args.data)], args.out)
        print(f"shift: {'flagged ' + ', '.join(report['flagged']) if report['shifted'] else 'none flagged'}")
        print(f"shift report: {args.out / 'shift.html'}")
        return 0
    positive = getattr(args, "positive", None)
    if positive is not None:
        if bundle.task != "classification":
            raise MedsightError(f"the {bundle.task} task does not take --positive (it applies to classification)")
        from medsight.tasks.classification.evaluate import evaluate as evaluate_classification

        result = evaluate_classification(args.bundle, args.data, args.split, args.out, args.bootstrap, positive)
    else:
        result = tasks.get(bundle.task).evaluate(args.bundle, args.data, args.split, args.out, args.bootstrap)
    metrics = result.get("metrics", {})
    shown = ", ".join(
        f"{k} {v['value']:.4f} [{v['ci95'][0]:.4f}, {v['ci95'][1]:.4f}]"
        for k, v in metrics.items()
        if isinstance(v, dict) and v.get("value") is not None and v.get("ci95", [None])[0] is not None
    )
    print(f"{args.split}: {shown}")
    if result.get("leakage"):
        print(f"leakage check: {leakage_line(result['leakage'])}")
    print(f"metrics: {args.out / 'metrics.json'}")
    print(f"card: {args.out / 'card.html'}")
    if _wants_shift(args, bundle.meta, result):
        from medsight.monitoring.site import labelled_site_report

        try:
            report = labelled_site_report(
                args.bundle,
                args.data,
                args.split,
                args.out,
                result,
                getattr(args, "recalibrate", 0),
                args.internal,
                n_boot=args.bootstrap,
            )
        except MedsightError as exc:
            if _shift_asked(args):
                raise
            # on by default only: the evaluation stands; say why there is no shift report (e.g. an older bundle)
            print(f"shift: not written ({exc}); give --shift to make this an error")
            return 0
        print(f"shift: {'flagged ' + ', '.join(report['flagged']) if report['shifted'] else 'none flagged'}")
        print(f"shift report: {args.out / 'shift.html'}")
    return 0


def _shift_asked(args: argparse.Namespace) -> bool:
    """Whether the user asked for the shift report (``--shift`` or ``--recalibrate``) rather than got it by default."""
    return bool(getattr(args, "shift", None)) or int(getattr(args, "recalibrate", 0) or 0) > 0


def _wants_shift(args: argparse.Namespace, meta: dict[str, Any], result: dict[str, Any] | None = None) -> bool:
    """``--shift``/``--no-shift`` when given; else on for a segmentation, classification or outcome bundle evaluated
    on other data (segmentation: another folder; the others: a data set of another name than the training one)."""
    given: bool | None = getattr(args, "shift", None)
    recalibrate = int(getattr(args, "recalibrate", 0) or 0)
    if given is not None or recalibrate:
        return bool(given) or recalibrate > 0
    if meta["task"] in ("classification", "outcome"):
        name = (result or {}).get("data")
        return name is not None and str(name) != str(meta["data"]["source"])
    root = Path(str(meta["data"].get("root", "")))
    return meta["task"] == "segmentation" and root.resolve() != Path(args.data).expanduser().resolve()


def leakage_line(report: dict[str, Any]) -> str:
    """The leakage check's outcome in words: counts only, never a name."""
    n, split = report.get("n_checked"), report.get("split")
    if report.get("status") == "unverified":
        return "NOT VERIFIED: the bundle records no content hashes of its training cases (retrain it to verify)"
    if report.get("n_seen") is None:
        return str(report.get("status"))
    if report["n_seen"] == 0:
        return (
            f"none of the {n} {split} case(s) was seen in training "
            f"(compared with the content hashes of {report['n_training_cases']} {report['compared_with']} cases)"
        )
    return f"{report['n_seen']} of the {n} {split} case(s) were seen in training: {report['status']}"
