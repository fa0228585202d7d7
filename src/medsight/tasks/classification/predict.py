"""The warm classification model: a bundle loaded once (ONNX Runtime session, preprocessing, calibration,
operating point) that predicts typed results many times, and writes their artefacts only when asked."""

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
from medsight.explain.gradcam import gradcam, overlay
from medsight.io.images import is_dicom_file
from medsight.runtime.onnx_export import OnnxPredictor
from medsight.runtime.results import Heatmap, Result
from medsight.tasks.classification.data import read_inputs
from medsight.tasks.classification.network import gradcam_layer, probabilities
from medsight.tasks.classification.plan import ClassificationPlan
from medsight.training.bundle import Bundle


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
        return f"{self.decision} (p = {p:.3f})"

    def payload(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"probabilities": dict(self.probabilities), "decision": self.decision}
        if self.operating_point is not None:
            entry["operating_point"] = dict(self.operating_point)
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
        results: list[Result] = []
        for k, (path, image, p) in enumerate(zip(inputs, images, probs, strict=True)):
            result = self._result(path, k, image, p)
            if explain:
                target = 1 if self.task_type == "binary" else int(np.argmax(p))
                heat = gradcam(self.network, gradcam_layer(self.network), image[None], [target])[0]
                result.heatmap = Heatmap(heat, self.label_names[target], "Grad-CAM")
            results.append(result)
        return results

    def _result(self, path: Path, index: int, image: np.ndarray, p: np.ndarray) -> ClassificationResult:
        names, op = self.label_names, self.operating
        decision: str | list[str]
        point = None
        if self.task_type == "binary":
            decision = names[int(p[1] >= op["threshold"])]
            point = {"threshold": op["threshold"], "method": op["method"], "on": names[1]}
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
