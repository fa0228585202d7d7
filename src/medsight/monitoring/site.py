"""The shift report of data from another site against a bundle's training fingerprint (``medsight evaluate``), for
segmentation, classification and outcome bundles (detection is not covered).

Labelled data (a segmentation folder; a classification manifest, .npz or MedMNIST name; an outcome task): the new
site's fingerprint includes label prevalence (pixel shares of each class; the share of cases in each class); the
external metrics (the evaluation just run) sit beside the internal ones (an internal evaluation's ``metrics.json``
when given, else the bundle's own validation metrics); with ``recalibrate`` = N, temperature scaling is fitted on N
cases and the ECE is measured before and after on the rest. Unlabelled inputs (image files, DICOM series folders): the
fingerprint of the inputs and of what the model predicts on them (class shares) against the training labels' shares.

Classification and outcome images are fingerprinted as the model sees them (resized, each rescaled to [0, 1]), so a
change of size or a pure brightness offset is not reported (the model never sees either), while contrast, gamma,
inversion, texture and class balance are.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medsight.data.fingerprint_stats import Sample, array_samples, distribution_fingerprint, output_features
from medsight.errors import MedsightError
from medsight.evaluation.shift import case_recalibration, recalibration, shift_report, write_shift_report
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


#: The tasks the shift report covers.
COVERED = ("segmentation", "classification", "outcome")

#: What a labelled site's fingerprint and recalibration give: (fingerprint, source words, recalibration or None).
Site = tuple[dict[str, Any], str, dict[str, Any] | None]


def _require_covered(bundle: Bundle, tasks: Sequence[str] = COVERED) -> None:
    if bundle.task not in tasks:
        raise MedsightError(
            f"the shift report covers {', '.join(tasks[:-1])} and {tasks[-1]} bundles, not {bundle.task} ones",
            bundle.path,
        )


def labelled_site_report(
    bundle_path: Path,
    data: str,
    split: str,
    out: Path,
    external: dict[str, Any] | None = None,
    recalibrate: int = 0,
    internal: Path | None = None,
    n_boot: int = 200,
) -> dict[str, Any]:
    """Shift report of ``split`` of the labelled data set ``data``; ``external`` is the evaluation's result (its
    metrics, and for binary classification the class they are for). ``n_boot``: resamples of the recalibration's
    ECE CIs (classification and outcome)."""
    bundle = load_bundle(bundle_path)
    _require_covered(bundle)
    reference = training_fingerprint(bundle)
    if bundle.task == "classification":
        current, current_source, recalibrated = _classification_site(bundle, data, split, recalibrate, external, n_boot)
    elif bundle.task == "outcome":
        current, current_source, recalibrated = _outcome_site(bundle, data, split, recalibrate, n_boot)
    else:
        current, current_source, recalibrated = _segmentation_site(bundle, data, split, recalibrate)
    inner, inner_source = _internal(bundle, internal)
    report = shift_report(
        reference,
        current,
        reference_source=f"{bundle.meta['data']['source']} (training cases)",
        current_source=current_source,
        external=(external or {}).get("metrics"),
        internal=inner,
        internal_source=inner_source,
        recalibrated=recalibrated,
    )
    write_shift_report(out, report)
    return report


def _segmentation_site(bundle: Bundle, data: str, split: str, recalibrate: int) -> Site:
    """A segmentation folder's split: per-case fingerprint, and per-pixel recalibration on its first cases."""
    from medsight.tasks.segmentation.data import load_case, open_dataset
    from medsight.tasks.segmentation.evaluate import split_ids
    from medsight.tasks.segmentation.predict import SegmentationModel

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
    return current, f"{ds.name} ({split})", recalibrated


def _classification_site(
    bundle: Bundle, spec: str, split: str, recalibrate: int, external: dict[str, Any] | None, n_boot: int
) -> Site:
    """A classification data set's split, prepared as the model expects; recalibration of the deployed
    probabilities, its ECE for the class the evaluation's binary metrics are for."""
    from medsight.data.splits import recorded_split_seed
    from medsight.tasks.classification.data import load_like
    from medsight.tasks.classification.predict import ClassificationModel, positive_index

    data = load_like(bundle, spec, seed=recorded_split_seed(bundle.meta))
    part = data.split(split)
    current = distribution_fingerprint(array_samples(part.images, part.labels), bundle.label_names, data.modality)
    if not recalibrate:
        return current, f"{data.name} ({split})", None
    model = ClassificationModel(bundle)
    positive = None
    if model.task_type == "binary":
        name = (external or {}).get("positive_class") or bundle.meta.get("positive_class")
        positive = model.label_names.index(name) if name in model.label_names else positive_index(model.operating)
    probs = model.probabilities(part.images)
    recalibrated = case_recalibration(
        probs, part.labels, recalibrate, model.task_type, positive, part.patient_ids, n_boot
    )
    return current, f"{data.name} ({split})", recalibrated


def _outcome_site(bundle: Bundle, spec: str, split: str, recalibrate: int, n_boot: int) -> Site:
    """An outcome data set's split: the images' fingerprint with the outcome as the class; recalibration of the
    deployed model's risk (image, clinical or fusion, as the bundle selected), by patient."""
    from medsight.data.splits import recorded_split_seed
    from medsight.tasks.outcome import data as outcome_data
    from medsight.tasks.outcome.models import two_class
    from medsight.tasks.outcome.predict import OutcomeModel

    model = OutcomeModel(bundle)
    data = outcome_data.load(spec)
    parts = data.split(recorded_split_seed(bundle.meta))
    if split not in parts:
        raise MedsightError(f"unknown split {split!r} (train, val or test)", spec)
    idx = parts[split]
    images = outcome_data.read_images([data.images[i] for i in idx], model.size)
    y = np.asarray(data.y[idx]).astype(int)
    modality = str(bundle.meta["data"].get("modality", "unknown"))
    current = distribution_fingerprint(array_samples(images, y), bundle.label_names, modality)
    if not recalibrate:
        return current, f"{data.name} ({split})", None
    table = data.table.iloc[idx].reset_index(drop=True)
    logits, emb = model.image_outputs(images)
    risk = model.fitted.probabilities(logits, emb, model.fitted.encoder.transform(table))[model.selection.selected]
    groups = [data.patient_ids[i] for i in idx]
    recalibrated = case_recalibration(two_class(risk), y, recalibrate, "binary", 1, groups, n_boot)
    return current, f"{data.name} ({split})", recalibrated


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
    labels'. A ``DriftMonitor`` given as ``monitor`` is updated with each input and its output on the way, as the
    service would. Segmentation and classification bundles (an outcome model needs clinical fields per case)."""
    from medsight.tasks.segmentation.predict import SegmentationModel, read_input

    bundle = load_bundle(bundle_path)
    _require_covered(bundle, ("segmentation", "classification"))
    reference = training_fingerprint(bundle)
    paths = [p for given in inputs for p in discover_inputs(Path(given))]
    if not paths:
        raise MedsightError("no images or DICOM series found", Path(inputs[0]) if inputs else None)
    if bundle.task == "classification":
        current = _classification_inputs(bundle, paths, model if predict else None, predict, monitor)
        return _write_input_report(bundle, reference, current, int(current["n_cases"]), out)
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
    return _write_input_report(bundle, reference, current, len(paths), out)


def _classification_inputs(
    bundle: Bundle, paths: Sequence[Path], model: Any, predict: bool, monitor: Any
) -> dict[str, Any]:
    """The fingerprint of image files (a DICOM series folder gives its files) prepared as the model expects, with
    the class (or labels) the model decides for each as its predicted shares."""
    from medsight.io.images import is_dicom_file
    from medsight.tasks.classification.data import read_inputs
    from medsight.tasks.classification.predict import ClassificationModel, decided_labels

    files = [
        f
        for p in paths
        for f in ([p] if p.is_file() else sorted(x for x in p.iterdir() if x.is_file() and is_dicom_file(x)))
    ]
    spec = bundle.input
    images = read_inputs(files, int(spec["spatial_dims"]), spec["spatial_size"], int(spec["n_channels"]))
    outputs: list[np.ndarray] | None = None
    if predict:
        model = model if model is not None else ClassificationModel(bundle)
        probs = model.probabilities(images)
        if model.task_type == "multilabel":
            outputs = list((probs >= np.asarray(model.operating["thresholds"])).astype(int))
        else:
            outputs = [np.asarray(k) for k in decided_labels(model.task_type, probs, model.operating)]
    if monitor is not None:
        monitor.update(list(images), outputs)
    current = distribution_fingerprint(array_samples(images), bundle.label_names, "unknown")
    for decided in outputs or []:
        for name, share in output_features(decided, bundle.label_names).items():
            current["cases"].setdefault(name, []).append(share)
    return current


def _write_input_report(
    bundle: Bundle, reference: dict[str, Any], current: dict[str, Any], n_inputs: int, out: Path
) -> dict[str, Any]:
    """The unlabelled inputs' report: predicted shares named as such, written to ``out``."""
    report = shift_report(
        reference,
        current,
        reference_source=f"{bundle.meta['data']['source']} (training cases)",
        current_source=f"{n_inputs} input(s)",
    )
    for f in report["features"]:
        if f["feature"].startswith("prevalence_"):
            f["feature"] = "predicted " + f["feature"]
            f["note"] = "the share the model predicts against the share in the training labels"
    report["flagged"] = [f["feature"] for f in report["features"] if f["flagged"]]
    write_shift_report(out, report)
    return report
