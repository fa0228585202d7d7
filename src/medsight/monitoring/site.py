"""The shift report of data from another site against a bundle's training fingerprint (``medsight evaluate``).

Labelled data (a segmentation folder): the new site's fingerprint includes label prevalence; the external metrics
(the evaluation just run) sit beside the internal ones (an internal evaluation's ``metrics.json`` when given, else
the bundle's own validation metrics); with ``recalibrate`` = N, temperature scaling is fitted on N cases and the ECE
is measured before and after on the rest. Unlabelled inputs (image files, DICOM series folders): the fingerprint of
the inputs and of what the model predicts on them (class shares) against the training labels' shares.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medsight.data.fingerprint_stats import Sample, distribution_fingerprint, output_features
from medsight.errors import MedsightError
from medsight.evaluation.shift import recalibration, shift_report, write_shift_report
from medsight.monitoring.reference import training_fingerprint
from medsight.training.bundle import Bundle, load_bundle

log = logging.getLogger("medsight.monitoring")


def _internal(bundle: Bundle, internal: Path | None) -> tuple[dict[str, Any], str]:
    if internal is not None:
        path = internal / "metrics.json" if internal.is_dir() else internal
        try:
            return dict(json.loads(path.read_text())["metrics"]), f"internal evaluation {path.name}"
        except (OSError, KeyError, json.JSONDecodeError) as exc:
            raise MedsightError(f"not a metrics.json from 'medsight evaluate' ({exc})", path) from exc
    return dict(bundle.meta.get("metrics", {}).get("val", {})), "the bundle's validation metrics (no CIs)"


def _require_segmentation(bundle: Bundle) -> None:
    if bundle.task != "segmentation":
        raise MedsightError(
            f"the shift report covers segmentation bundles; this is a {bundle.task} bundle", bundle.path
        )


def labelled_site_report(
    bundle_path: Path,
    data: str,
    split: str,
    out: Path,
    external: dict[str, Any] | None = None,
    recalibrate: int = 0,
    internal: Path | None = None,
) -> dict[str, Any]:
    """Shift report of ``split`` of the segmentation folder ``data``; ``external`` is the evaluation's result."""
    from medsight.tasks.segmentation.data import load_case, open_dataset
    from medsight.tasks.segmentation.evaluate import split_ids
    from medsight.tasks.segmentation.predict import SegmentationModel

    bundle = load_bundle(bundle_path)
    _require_segmentation(bundle)
    reference = training_fingerprint(bundle)
    ds = open_dataset(data)
    ids = split_ids(bundle, ds, split)
    model = SegmentationModel(bundle) if recalibrate else None
    probs: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    rois: list[np.ndarray | None] = []

    def samples() -> Iterator[Sample]:
        for cid in ids:
            case = load_case(ds, ds.case(cid))
            if model is not None and case.label is not None:
                _mask, p = model.case(case)
                probs.append(p.astype(np.float32))
                labels.append(case.label)
                rois.append(case.roi)
            yield Sample(case.image, case.spacing, case.label)

    current = distribution_fingerprint(samples(), bundle.label_names, ds.modality)
    recalibrated = recalibration(probs, labels, recalibrate, rois) if recalibrate else None
    inner, inner_source = _internal(bundle, internal)
    report = shift_report(
        reference,
        current,
        reference_source=f"{bundle.meta['data']['source']} (training cases)",
        current_source=f"{ds.name} ({split})",
        external=(external or {}).get("metrics"),
        internal=inner,
        internal_source=inner_source,
        recalibrated=recalibrated,
    )
    write_shift_report(out, report)
    return report


def discover_inputs(path: Path) -> list[Path]:
    """Image files and DICOM series folders under ``path`` (a folder of series folders gives one input each)."""
    from medsight.data.segmentation import RASTER_SUFFIXES, VOLUME_SUFFIXES
    from medsight.io.images import is_dicom_file

    if path.is_file():
        return [path]
    if not path.is_dir():
        raise MedsightError("no such file or folder", path)
    found: list[Path] = []
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if any(is_dicom_file(p) for p in files):
        found.append(path)
    found += [p for p in files if p.name.lower().endswith((*RASTER_SUFFIXES, *VOLUME_SUFFIXES))]
    for sub in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found += discover_inputs(sub)
    return found


def input_report(
    bundle_path: Path,
    inputs: Sequence[Path],
    out: Path,
    predict: bool = True,
    model: Any = None,
    monitor: Any = None,
) -> dict[str, Any]:
    """Shift report of unlabelled inputs (files or folders, DICOM series found inside); with ``predict`` the model
    (``model``, or the bundle's) runs on them and the class shares it predicts are compared with the training
    labels'. A ``DriftMonitor`` given as ``monitor`` is updated with each input and its mask on the way, as the
    service would."""
    from medsight.tasks.segmentation.predict import SegmentationModel, read_input

    bundle = load_bundle(bundle_path)
    _require_segmentation(bundle)
    reference = training_fingerprint(bundle)
    paths = [p for given in inputs for p in discover_inputs(Path(given))]
    if not paths:
        raise MedsightError("no images or DICOM series found", Path(inputs[0]) if inputs else None)
    if predict and model is None:
        model = SegmentationModel(bundle)
    if not predict:
        model = None
    modalities: set[str] = set()
    predicted: list[dict[str, float]] = []

    def samples() -> Iterator[Sample]:
        for p in paths:
            item = read_input(p)
            modality = str(getattr(item.volume, "modality", "") or "unknown")
            modalities.add(modality)
            mask = None
            if model is not None:
                segmented: Any = model.segment(item.image, item.spacing)
                mask = segmented[0] if isinstance(segmented, tuple) else segmented  # (mask, uncertainty) or mask
                predicted.append(output_features(mask, bundle.label_names))
            if monitor is not None:
                monitor.update([item], None if mask is None else [mask], modality=modality)
            yield Sample(item.image, item.spacing)

    current = distribution_fingerprint(samples(), bundle.label_names, "unknown")
    current["modality"] = modalities.pop() if len(modalities) == 1 else "mixed"
    for name in predicted[0] if predicted else []:
        current["cases"][name] = [p[name] for p in predicted]
    report = shift_report(
        reference,
        current,
        reference_source=f"{bundle.meta['data']['source']} (training cases)",
        current_source=f"{len(paths)} input(s)",
    )
    for f in report["features"]:
        if f["feature"].startswith("prevalence_"):
            f["feature"] = "predicted " + f["feature"]
            f["note"] = "the share the model predicts against the share in the training labels"
    report["flagged"] = [f["feature"] for f in report["features"] if f["flagged"]]
    write_shift_report(out, report)
    return report
