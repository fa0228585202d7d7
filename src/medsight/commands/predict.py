"""``medsight predict BUNDLE FILE... --out DIR``: a thin layer over the runtime (load once, predict, write)."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsight import runtime
from medsight.commands._arguments import output_folder, refuse_inputs_inside, whole
from medsight.errors import MedsightError
from medsight.io import modality

#: What this command's output folder always holds (predictions.json; report.json in archive mode): another folder
#: is not replaced.
WRITES = ("predictions.json", "report.json")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict on new images with a bundle",
        description="Run BUNDLE on PNG, JPEG, TIFF, BMP, GIF, WebP, PPM/PGM, DICOM (file or series folder), NIfTI or "
        "npz inputs and write DIR/predictions.json (calibrated probabilities, the decision at the bundle's operating "
        "point, masks, boxes or risks; for classification the conformal prediction set, per label for multi-label "
        "models, and whether to defer to the radiologist) plus, with --explain, a heatmap per input. DICOM inputs "
        "also get DICOM results (TID 1500 SR, SEG, Secondary Capture).",
    )
    p.add_argument("bundle", type=Path, help="bundle folder written by 'medsight train'")
    p.add_argument("inputs", nargs="+", type=Path, metavar="FILE", help="images to predict on")
    p.add_argument("--out", required=True, type=output_folder(*WRITES), help="output folder (replaced atomically)")
    p.add_argument("--explain", action="store_true", help="also write a heatmap (e.g. Grad-CAM) per input")
    p.add_argument(
        "--workers",
        type=whole(1),
        metavar="N",
        help="archive mode: FILE is one folder, predicted file by file on N workers (N > 1: Ray, see docs/scale.md) "
        "into DIR/results/<key>/ with DIR/report.json; resumable (a re-run skips finished files)",
    )
    p.add_argument("--address", metavar="ADDR", help="archive mode on the existing Ray cluster at ADDR")
    p.add_argument(
        "--series",
        metavar="NUMBER|UID",
        help="for a DICOM folder holding several image series (a scout beside the axial CT, a study exported flat): "
        "read the series with this Series Number (or Series Instance UID); without it such a folder is refused "
        "with a list of its series ('medsight info FOLDER' lists them too)",
    )
    p.add_argument(
        "--any-modality",
        action="store_true",
        help="predict on DICOM inputs whose Modality the model was not trained on (refused by default: a chest "
        "X-ray model given a CT slice still answers confidently)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    refuse_inputs_inside(args.out, args.bundle, *args.inputs)
    if args.workers is not None or args.address is not None:
        if args.series is not None:
            raise MedsightError("--series chooses a series of one input folder; archive mode predicts every file")
        return _run_archive(args)
    from medsight.io.dicom import choose_series

    model = runtime.load(args.bundle)
    with choose_series(args.series):  # the modality check, the prediction and the DICOM results read one series
        if not args.any_modality:
            modality.check(modality.trained_on(model.bundle.meta), args.inputs)
        results = model.predict(args.inputs, explain=args.explain)
        runtime.write_predictions(model, results, args.out)
    for r in results:
        heatmap = f"; heatmap {args.out / r.files['heatmap_image']}" if "heatmap_image" in r.files else ""
        print(f"{r.input}: {r.summary()}{heatmap}")
    print(f"results: {args.out}")
    return 0


def _run_archive(args: argparse.Namespace) -> int:
    """Archive mode: stream one folder through the model, resumable, with one report at the end."""
    from medsight.distributed.predict import predict_archive

    if len(args.inputs) != 1:
        raise MedsightError("with --workers or --address give one archive folder, not several inputs")
    report = predict_archive(
        args.bundle,
        args.inputs[0],
        args.out,
        args.workers or 1,
        args.address,
        args.explain,
        not args.quiet,
        any_modality=args.any_modality,
    )
    print(
        f"predicted {report['processed_this_run']} files ({report['finished_earlier']} finished by an earlier run) "
        f"in {report['seconds']:.1f} s; counts {report['counts']}"
    )
    print(f"report: {args.out / 'report.json'}")
    return 1 if report["counts"].get("failed") else 0
