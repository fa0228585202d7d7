"""The warm classification model: a bundle loaded once (ONNX Runtime session, preprocessing, calibration,
operating point, conformal sets and deferral rule) that predicts typed results many times, and writes their
artefacts only when asked.

Every result carries its conformal prediction set and ``defer_to_radiologist`` with the reason
(:mod:`medsight.evaluation.selective`): the rule was fitted on validation when the bundle was trained and is only
applied here. A multi-label result has a set per label (``label_sets``: labels certainly present, certainly absent,
uncertain); it is deferred when any label is uncertain (or a certain answer differs from the label's decision at the
operating point), and its reasons name those labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from medsight.evaluation.conformal import certain
from medsight.evaluation.plots import png_image
from medsight.evaluation.selective import MultilabelSelective, SelectivePrediction, multilabel_confidence
from medsight.explain.gradcam import overlay
from medsight.io.images import dicom_image_file
from medsight.runtime.onnx_export import OnnxPredictor
from medsight.runtime.results import NO_DEFERRAL_RULE, Deferral, Heatmap, Result
from medsight.tasks.classification.data import read_inputs
from medsight.tasks.classification.network import explain as gradcam_maps
from medsight.tasks.classification.network import probabilities
from medsight.tasks.classification.plan import ClassificationPlan
from medsight.training.bundle import BUNDLE_JSON, Bundle

#: Why a multi-label result from a bundle trained before per-label conformal prediction has no sets.
MULTILABEL_NO_RULE = (
    "the bundle holds no per-label conformal rule (trained before multi-label deferral); retrain to get label sets "
    "and deferral"
)


def decided_labels(task_type: str, probs: np.ndarray, operating: dict[str, Any]) -> np.ndarray:
    """The label index decided for each case of a single-label task: the operating point on p(positive class)
    (binary), the ordinal decoding chosen on validation (ordinal grades), or arg-max."""
    if task_type == "binary":
        k = positive_index(operating)
        return np.where(np.asarray(probs)[:, k] >= float(operating["threshold"]), k, 1 - k).astype(int)
    if "decoding" in operating:
        from medsight.tasks.classification.ordinal import decode

        return decode(np.asarray(probs), str(operating["decoding"]))
    return np.asarray(probs).argmax(1).astype(int)


def positive_index(operating: dict[str, Any]) -> int:
    """Which class a binary operating point's threshold applies to (label 1 in bundles that predate the field)."""
    return int(operating.get("positive_index", 1))


@dataclass
class ClassificationResult(Result):
    """Calibrated class probabilities and the decision at the bundle's operating point."""

    probabilities: dict[str, float] = field(default_factory=dict)
    #: One label (binary, multi-class) or the labels at or above their thresholds (multi-label).
    decision: str | list[str] = ""
    #: Binary only: the threshold applied to p(``on``) and how it was chosen.
    operating_point: dict[str, Any] | None = None
    #: Multi-label only: the labels certainly present, certainly absent and uncertain under the per-label
    #: conformal sets (None without a stored rule).
    label_sets: dict[str, list[str]] | None = None
    #: The prepared model input (kept for overlays; not serialised).
    image: np.ndarray | None = field(default=None, repr=False)
    #: Where the input was read from (for DICOM results; not serialised).
    source: Path | None = field(default=None, repr=False)

    def summary(self) -> str:
        defer = " - defer to radiologist" if self.deferral is not None and self.deferral.defer_to_radiologist else ""
        if isinstance(self.decision, list):
            unsure = (self.label_sets or {}).get("uncertain") or []
            named = f" (uncertain: {', '.join(unsure)})" if defer and unsure else ""
            return "labels: " + (", ".join(self.decision) or "none") + defer + named
        p = self.probabilities.get(self.decision, float("nan"))
        return f"{self.decision} (p = {p:.3f}){defer}"

    def payload(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"probabilities": dict(self.probabilities), "decision": self.decision}
        if self.operating_point is not None:
            entry["operating_point"] = dict(self.operating_point)
        if self.label_sets is not None:
            entry["label_sets"] = {k: list(v) for k, v in self.label_sets.items()}
        if self.deferral is None:
            reason = MULTILABEL_NO_RULE if isinstance(self.decision, list) else NO_DEFERRAL_RULE["defer_reason"]
            entry |= {**NO_DEFERRAL_RULE, "defer_reason": reason}
        return entry


class ClassificationModel:
    """A classification bundle, loaded once. ``predict`` writes nothing; ``save`` writes the artefacts."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.plan = bundle.plan(ClassificationPlan)
        self.task_type = str(bundle.meta["task_type"])
        self.label_names = bundle.label_names
        spec = bundle.input
        self.spatial_dims = int(spec["spatial_dims"])
        self.spatial_size = [int(s) for s in spec["spatial_size"]]
        self.n_channels = int(spec["n_channels"])
        self.temperature = float(bundle.meta["calibration"]["temperature"])
        self.operating = dict(bundle.meta["operating_point"])
        stored = bundle.meta.get("selective_prediction")
        where = str(bundle.path / BUNDLE_JSON)
        #: Conformal sets and the deferral rule fitted on validation (None: an older bundle, or multi-label).
        self.selective: SelectivePrediction | None = None
        #: Multi-label: the per-label conformal rule fitted on validation (None: single-label, or an older bundle).
        self.multilabel_selective: MultilabelSelective | None = None
        if stored is not None and self.task_type == "multilabel":
            self.multilabel_selective = MultilabelSelective.from_json(stored, where)
        elif stored is not None:
            self.selective = SelectivePrediction.from_json(stored, where)
        self.session = OnnxPredictor(bundle.onnx_path)

    @cached_property
    def network(self) -> nn.Module:
        """The PyTorch network, loaded on first use: Grad-CAM needs gradients, which ONNX Runtime does not give."""
        return self.bundle.network("cpu")

    def logits(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        """Raw logits of prepared images through ONNX Runtime (the deployed path), in batches."""
        if len(images) == 0:
            return np.zeros((0, len(self.label_names)), np.float32)
        return np.concatenate([self.session.run(images[i : i + batch]) for i in range(0, len(images), batch)])

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of prepared images."""
        return probabilities(self.logits(images), self.task_type, self.temperature)

    def predict(self, inputs: Sequence[Path], explain: bool = False) -> list[Result]:
        inputs = [Path(p) for p in inputs]
        images = read_inputs(inputs, self.spatial_dims, self.spatial_size, self.n_channels)
        probs = self.probabilities(images)
        deferrals = self.deferrals(probs)
        label_sets = self.label_sets(probs)
        results: list[Result] = []
        # Grad-CAM is one backward pass per input: the long part of a large --explain run, so it shows progress
        cases = tqdm(
            zip(inputs, images, probs, strict=True), desc="explain", unit="input", total=len(inputs),
            disable=not explain or len(inputs) < 4,
        )  # fmt: skip
        for k, (path, image, p) in enumerate(cases):
            result = self._result(path, k, image, p)
            result.deferral = deferrals[k]
            result.label_sets = label_sets[k]
            if explain:
                target = (
                    positive_index(self.operating)
                    if self.task_type == "binary"
                    else int(decided_labels(self.task_type, p[None], self.operating)[0])
                )
                heat = gradcam_maps(self.network, image[None], [target])[0]
                result.heatmap = Heatmap(heat, self.label_names[target], "Grad-CAM")
            results.append(result)
        return results

    def deferrals(self, probs: np.ndarray) -> list[Deferral | None]:
        """Each case's prediction set and deferral under the bundle's stored rule (None where there is none).
        Multi-label: the set is the labels certainly present, the confidence that of the least sure label."""
        if self.multilabel_selective is not None:
            rule = self.multilabel_selective
            decided = self.decisions(probs)
            m = rule.assess(probs, self.label_names, decided)
            conf = multilabel_confidence(probs, decided)
            target = 1 - rule.conformal.alpha
            return [
                Deferral([self.label_names[j] for j in np.flatnonzero(row)], float(c), bool(r), r, target)
                for row, c, r in zip(m.present, conf, m.reasons, strict=True)
            ]
        if self.selective is None:
            return [None] * len(probs)
        decided = decided_labels(self.task_type, probs, self.operating)
        a = self.selective.assess(probs, decided)
        target = 1 - self.selective.conformal.alpha
        return [
            Deferral([self.label_names[j] for j in np.flatnonzero(s)], float(c), bool(r), r, target)
            for s, c, r in zip(a.sets, a.confidence, a.reasons, strict=True)
        ]

    def decisions(self, probs: np.ndarray) -> np.ndarray:
        """Multi-label: ``(n, L)`` booleans, each label at or above its operating-point threshold."""
        return np.asarray(np.asarray(probs) >= np.asarray(self.operating["thresholds"], float))

    def label_sets(self, probs: np.ndarray) -> list[dict[str, list[str]] | None]:
        """Multi-label: each case's labels certainly present, certainly absent and uncertain (None where no rule)."""
        if self.multilabel_selective is None:
            return [None] * len(probs)
        sets = self.multilabel_selective.conformal.predict_sets(probs)
        sure, names = certain(sets), self.label_names
        return [
            {
                "present": [names[k] for k in np.flatnonzero(sure[i] & sets[i, :, 1])],
                "absent": [names[k] for k in np.flatnonzero(sure[i] & sets[i, :, 0])],
                "uncertain": [names[k] for k in np.flatnonzero(~sure[i])],
            }
            for i in range(len(sets))
        ]

    def _result(self, path: Path, index: int, image: np.ndarray, p: np.ndarray) -> ClassificationResult:
        names, op = self.label_names, self.operating
        decision: str | list[str]
        point = None
        if self.task_type == "binary":
            k = positive_index(op)
            decision = names[k if p[k] >= op["threshold"] else 1 - k]
            point = {"threshold": op["threshold"], "method": op["method"], "on": names[k]}
        elif self.task_type == "multilabel":
            decision = [n for n, v, t in zip(names, p, op["thresholds"], strict=True) if v >= t]
        else:
            decision = names[int(decided_labels(self.task_type, p[None], op)[0])]
        return ClassificationResult(
            input=path.name,
            index=index,
            probabilities={n: float(v) for n, v in zip(names, p, strict=True)},
            decision=decision,
            operating_point=point,
            image=image,
            source=path,
        )

    def save(self, results: Sequence[Result], folder: Path) -> None:
        """Heatmaps as a PNG overlay and .npy; for DICOM inputs a TID 1500 SR and a Secondary Capture overlay."""
        for result in tqdm(results, desc="write", unit="input", disable=len(results) < 4):
            if not isinstance(result, ClassificationResult):
                raise TypeError(f"not a classification result: {type(result).__name__}")
            if result.heatmap is not None and result.image is not None:
                rgb = overlay(result.image, result.heatmap.array)
                scale = max(1, 224 // rgb.shape[0])
                result.files["heatmap_image"] = f"{result.stem}_gradcam.png"
                result.files["heatmap_array"] = f"{result.stem}_gradcam.npy"
                (folder / result.files["heatmap_image"]).write_bytes(
                    png_image(np.kron(rgb, np.ones((scale, scale, 1), np.uint8)))
                )
                np.save(folder / result.files["heatmap_array"], result.heatmap.array)
            image_file = dicom_image_file(result.source)
            if image_file is not None:
                from medsight.serving.dicom_objects import for_input

                with for_input(result.source or image_file):
                    result.dicom.update(self._dicom(result, image_file, folder))

    def _dicom(self, result: ClassificationResult, image_file: Path, folder: Path) -> dict[str, str]:
        """A TID 1500 SR of the class probabilities and, with a heatmap, a Secondary Capture of it over the
        full-resolution image, so a PACS viewer shows both beside the study."""
        from medsight.io.dicom import read_datasets, read_dicom_image
        from medsight.serving.codes import bundle_codes
        from medsight.serving.dicom_objects import Finding, write_secondary_capture, write_sr
        from medsight.serving.provenance import AlgorithmIdentity

        meta = self.bundle.meta
        source = read_datasets([image_file])[0]
        model_name = f"medsight {meta['data']['source']} classifier"
        findings = [Finding(label=name, probability=float(p)) for name, p in result.probabilities.items()]
        written = {"sr": f"{result.stem}_findings_sr.dcm"}
        write_sr(
            findings,
            [source],
            folder / written["sr"],
            identity=AlgorithmIdentity.of(self.bundle, model_name),
            codes=bundle_codes(meta),
        )
        if result.heatmap is not None:
            picture = read_dicom_image(image_file, voi=True)  # rows x columns, or x 3 for colour (ultrasound)
            channels_first = picture[None] if picture.ndim == 2 else np.moveaxis(picture, -1, 0)
            full = torch.nn.functional.interpolate(
                torch.as_tensor(result.heatmap.array)[None, None],
                size=picture.shape[:2],
                mode="bilinear",
                align_corners=False,
            )[0, 0].numpy()
            rgb = overlay(channels_first.astype(np.float32), np.clip(full, 0, 1))
            written["secondary_capture"] = f"{result.stem}_gradcam_sc.dcm"
            write_secondary_capture(rgb, source, folder / written["secondary_capture"])
        return written
