"""Drift monitor and shift report on real data from another scanner: the four Udacity brain MR DICOM series (full
brains, 320x280x22 at 0.69x0.69x5 mm, SIEMENS / Imaging Biometrics) against the default Hippocampus model's training
fingerprint (MSD Hippocampus crops, ~35x50x36 at 1 mm), with the Hippocampus held-out cases as the same-site control.

Run: ``MEDSIGHT_DATA=../shared/data MEDSIGHT_THREADS=1 .venv/bin/python benchmarks/trust_hippo_udacity.py
--bundle /tmp/hippo_default --out benchmark_out/trust_hippo_udacity``. The bundle is copied, never modified; when it
predates the recorded fingerprint, the fingerprint is recomputed from its training cases with the same code.
Writes ``benchmarks/results/trust_hippo_udacity.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from support.provenance import provenance
from support.seg_record import RESULTS, machine

from medsight import config
from medsight.data.fingerprint_stats import distribution_fingerprint
from medsight.evaluation.shift import compare
from medsight.io.atomic import write_json
from medsight.monitoring import DriftMonitor, training_fingerprint
from medsight.monitoring.reference import segmentation_samples
from medsight.monitoring.site import discover_inputs, input_report
from medsight.tasks.segmentation.data import open_dataset
from medsight.tasks.segmentation.predict import SegmentationModel
from medsight.training.bundle import load_bundle


def _rows(features: list[Any]) -> list[dict[str, Any]]:
    return [f if isinstance(f, dict) else f.to_json() for f in features]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, default=Path("/tmp/hippo_default"))
    parser.add_argument("--series", type=Path, default=config.data_root() / "udacity_brain_mr_dicom" / "Study3")
    parser.add_argument("--out", type=Path, default=Path("benchmark_out/trust_hippo_udacity"))
    parser.add_argument("--no-predict", action="store_true", help="compare inputs only (skip the model's outputs)")
    parser.add_argument(
        "--no-flips", action="store_true", help="predict without test-time mirroring (8x faster on a 3D series)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.monotonic()

    with tempfile.TemporaryDirectory() as tmp:
        bundle_path = Path(tmp) / "bundle"
        shutil.copytree(args.bundle, bundle_path)  # the given bundle is never modified
        bundle = load_bundle(bundle_path)
        recorded = "distribution" in bundle.meta["data"]
        reference = training_fingerprint(bundle)

        # same-site control: the held-out Hippocampus cases against the training fingerprint
        ds = open_dataset(config.data_root() / "msd_hippocampus")
        held_out = list(bundle.meta["data"]["test_ids"])
        control = distribution_fingerprint(segmentation_samples(ds, held_out), bundle.label_names, ds.modality)
        control_rows = _rows(compare(reference, control))

        # the shift report, as 'medsight evaluate BUNDLE STUDY --shift-only' writes it, with the drift monitor fed
        # series by series on the way (each series a study, as the service would call it); one inference per series
        model = None if args.no_predict else SegmentationModel(bundle)
        if model is not None and args.no_flips:
            model.plan = dataclasses.replace(model.plan, test_time_flips=False)
        monitor = DriftMonitor(reference, model=str(bundle.meta["data"]["source"]))
        series = discover_inputs(args.series)
        report = input_report(
            bundle_path, [args.series], args.out / "shift", not args.no_predict, model=model, monitor=monitor
        )
        drift = monitor.check()

    wall = time.monotonic() - started
    print(drift.summary())
    print(f"shift report: flagged {report['flagged']}")
    print(f"same-site control (held-out Hippocampus): flagged {[r['feature'] for r in control_rows if r['flagged']]}")
    write_json(
        RESULTS / "trust_hippo_udacity.json",
        {
            "what": "drift monitor and shift report: Udacity brain MR DICOM series vs the Hippocampus training "
            "fingerprint; held-out Hippocampus cases as the same-site control",
            "bundle": str(args.bundle),
            "fingerprint": "recorded in the bundle" if recorded else "recomputed from the bundle's training cases",
            "n_series": len(series),
            "test_time_flips": None if args.no_predict else not args.no_flips,
            "drift": drift.to_json(),
            "shift_report": report,
            "same_site_control": {
                "n_cases": len(held_out),
                "flagged": [r["feature"] for r in control_rows if r["flagged"]],
                "features": control_rows,
            },
            "wall_s": round(wall, 1),
            "machine": machine(),
            **provenance("trust_hippo_udacity.py"),
        },
    )


if __name__ == "__main__":
    main()
