"""The warm classification model: a bundle loaded once (ONNX Runtime session, preprocessing, calibration,
operating point, conformal sets and deferral rule) that predicts typed results many times, and writes their
artefacts only when asked.

Every binary or multi-class result carries its conformal prediction set and ``defer_to_radiologist`` with the
reason (:mod:`medsight.evaluation.selective`): the rule was fitted on validation when the bundle was trained and is
only applied here.
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

from medsight.evaluation.plots import png_image
from medsight.evaluation.selective import SelectivePrediction
from medsight.explain.gradcam import gradcam, overlay
from medsight.io.images import is_dicom_file
from medsight.runtime.onnx_export import OnnxPredictor
from medsight.runtime.results import NO_DEFERRAL_RULE, Deferral, Heatmap, Result
from medsight.tasks.classification.data import read_inputs
from medsight.tasks.classification.network import gradcam_layer, probabilities
from medsight.tasks.classification.plan import ClassificationPlan
from medsight.training.bundle import BUNDLE_JSON, Bundle

#: Why a multi-label result has no prediction set: conformal sets here are over one label per case.
MULTILABEL_NO_SET = "no prediction set for multi-label models (conformal sets here assume one label per case)"


def decided_labels(task_type: str, probs: np.ndarray, operating: dict[str, Any]) -> np.ndarray:
    """The label index decided for each case of a single-label task: the operating point on p(positive class)
    (binary) or arg-max."""
    if task_type == "binary":
        k = positive_index(operating)
        return np.where(np.asarray(probs)[:, k] >= float(operating["threshold"]), k, 1 - k).astype(int)
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
    #: The prepared model input (kept for overlays; not serialised).
    image: np.ndarray | None = field(default=None, repr=False)
    #: Where the input was read from (for DICOM results; not serialised).
    source: Path | None = field(default=None, repr=False)

    def summary(self) -> str:
        if isinstance(self.decision, list):
            return "labels: " + (", ".join(self.decision) or "none")
        p = self.probabilities.get(self.decision, float("nan"))
        defer = " - defer to radiologist" if self.deferral is not None and self.deferral.defer_to_radiologist else ""
        return f"{self.decision} (p = {p:.3f}){defer}"

    def payload(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"probabilities": dict(self.probabilities), "decision": self.decision}
        if self.operating_point is not None:
            entry["operating_point"] = dict(self.operating_point)
        if self.deferral is None:
            reason = MULTILABEL_NO_SET if isinstance(self.decision, list) else NO_DEFERRAL_RULE["defer_reason"]
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
        #: Conformal sets and the deferral rule fitted on validation (None: multi-label, or an older bundle).
        self.selective = None if stored is None else SelectivePrediction.from_json(stored, where)
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
        results: list[Result] = []
        for k, (path, image, p) in enumerate(zip(inputs, images, probs, strict=True)):
            result = self._result(path, k, image, p)
            result.deferral = deferrals[k]
            if explain:
                target = positive_index(self.operating) if self.task_type == "binary" else int(np.argmax(p))
                heat = gradcam(self.network, gradcam_layer(self.network), image[None], [target])[0]
                result.heatmap = Heatmap(heat, self.label_names[target], "Grad-CAM")
            results.append(result)
        return results

    def deferrals(self, probs: np.ndarray) -> list[Deferral | None]:
        """Each case's prediction set and deferral under the bundle's stored rule (None where there is none)."""
        if self.selective is None or self.task_type == "multilabel":
            return [None] * len(probs)
        decided = decided_labels(self.task_type, probs, self.operating)
        a = self.selective.assess(probs, decided)
        target = 1 - self.selective.conformal.alpha
        return [
            Deferral([self.label_names[j] for j in np.flatnonzero(s)], float(c), bool(r), r, target)
            for s, c, r in zip(a.sets, a.confidence, a.reasons, strict=True)
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
            decision = names[int(np.argmax(p))]
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
        for result in results:
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
            if result.source is not None and result.source.is_file() and is_dicom_file(result.source):
                result.dicom.update(self._dicom(result, folder))

    def _dicom(self, result: ClassificationResult, folder: Path) -> dict[str, str]:
        """A TID 1500 SR of the class probabilities and, with a heatmap, a Secondary Capture of it over the
        full-resolution image, so a PACS viewer shows both beside the study."""
        from medsight.io.dicom import read_datasets, read_dicom_image
        from medsight.serving.dicom_objects import Finding, write_secondary_capture, write_sr

        assert result.source is not None
        meta = self.bundle.meta
        source = read_datasets([result.source])[0]
        model_name = f"medsight {meta['data']['source']} classifier"
        findings = [Finding(label=name, probability=float(p)) for name, p in result.probabilities.items()]
        written = {"sr": f"{result.stem}_findings_sr.dcm"}
        write_sr(findings, [source], folder / written["sr"], model_name, str(meta["versions"]["medsight"]))
        if result.heatmap is not None:
            picture = read_dicom_image(result.source, voi=True)
            if picture.ndim == 2:
                full = torch.nn.functional.interpolate(
                    torch.as_tensor(result.heatmap.array)[None, None],
                    size=picture.shape,
                    mode="bilinear",
                    align_corners=False,
                )[0, 0].numpy()
                rgb = overlay(picture[None].astype(np.float32), np.clip(full, 0, 1))
                written["secondary_capture"] = f"{result.stem}_gradcam_sc.dcm"
                write_secondary_capture(rgb, source, folder / written["secondary_capture"])
        return written
