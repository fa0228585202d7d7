"""``medsight stream BUNDLE SOURCE --out DIR``: segment a cine loop frame by frame, showing frames/s live."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsight.commands._arguments import between, output_folder, refuse_inputs_inside, whole
from medsight.runtime.stream import stream

#: What this command's output folder always holds (the run's summary): another folder is not replaced.
WRITES = ("stream.json",)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stream",
        help="segment a cine loop (ultrasound) frame by frame",
        description="Segment every frame of SOURCE (a DICOM multi-frame object such as an ultrasound cine loop, a "
        "video file, or a folder of frames) with a 2D segmentation BUNDLE as the frames arrive, showing frames/s "
        "live, and write DIR/overlay.mp4 (the frames with the masks drawn), DIR/frames.csv (one row per frame: "
        "segmentation time and area per label in pixels) and DIR/stream.json (frames/s, time per frame p50/p95).",
    )
    p.add_argument("bundle", type=Path, help="a 2D segmentation bundle written by 'medsight train'")
    p.add_argument("source", type=Path, help="DICOM multi-frame file, video file, or folder of frames")
    p.add_argument("--out", required=True, type=output_folder(*WRITES), help="output folder (replaced atomically)")
    p.add_argument("--no-video", action="store_true", help="do not write the overlaid video")
    p.add_argument("--tta", action="store_true", help="average mirrored test-time passes (slower)")
    p.add_argument("--max-frames", type=whole(1), help="stop after this many frames")
    p.add_argument(
        "--fps",
        type=between(1.0, 240.0),
        help="the overlay video's frames/s (default: the source's own rate: the DICOM frame time or cine rate, the "
        "video's rate; 30 for a folder of frames)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="run the int8 model (ONNX Runtime static quantisation, calibrated once on the bundle's training images "
        "and cached; see docs/ultrasound.md)",
    )
    p.add_argument(
        "--data",
        type=Path,
        help="with --int8: where the bundle's training data are now, if they moved since training (calibration)",
    )
    p.add_argument(
        "--any-modality",
        action="store_true",
        help="stream a DICOM source whose Modality the model was not trained on (refused by default, as by predict)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    refuse_inputs_inside(args.out, args.bundle, args.source)
    if not args.any_modality and args.source.is_file():
        from medsight.io import modality
        from medsight.training.bundle import load_bundle

        modality.check(modality.trained_on(load_bundle(args.bundle).meta), [args.source])
    report = stream(
        args.bundle,
        args.source,
        args.out,
        video=not args.no_video,
        max_frames=args.max_frames,
        tta=args.tta,
        int8=args.int8,
        data=args.data,
        fps=args.fps,
    )
    print(
        f"{report.frames} frames in {report.seconds:.1f} s: {report.frames_per_second:.1f} frames/s "
        f"(segmentation p50 {report.segment_ms['p50']:.1f} ms per frame, {report.engine})"
    )
    print(f"results: {args.out}")
    return 0
