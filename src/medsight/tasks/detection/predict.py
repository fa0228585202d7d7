"""The warm detection model: the bundle's detector loaded once (ONNX Runtime head maps decoded by MONAI, or the
PyTorch network when the bundle has no ONNX), run on many inputs; typed box results with a per-image uncertainty
and the review flag (``uncertainty.py``); overlays and DICOM SR."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsight.errors import MedsightError
from medsight.evaluation.plots import png_image
from medsight.io.atomic import write_bytes
from medsight.io.images import dicom_image_file, read_image
from medsight.runtime.results import Result
from medsight.tasks.detection import test_time, uncertainty
from medsight.tasks.detection.data import prepare
from medsight.tasks.detection.network import Detections, OrtHeads, build_detector, detect
from medsight.tasks.detection.overlay import draw_boxes
from medsight.tasks.detection.plan import DetectionPlan
from medsight.training.bundle import Bundle

BOX_CONVENTION = "[x1, y1, x2, y2] pixels of the input image (x = column, y = row)"


@dataclass
class BoxFinding:
    """One detection at or above the operating point, in the pixels of the input image."""

    label: str
    score: float
    box: list[float]  # [x1, y1, x2, y2]

    @property
    def centre(self) -> list[float]:
        return [round((self.box[0] + self.box[2]) / 2, 2), round((self.box[1] + self.box[3]) / 2, 2)]

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "score": self.score, "box": list(self.box), "centre": self.centre}


@dataclass
class DetectionResult(Result):
    """The findings of one 2D input; ``image`` (C, H, W as read) and ``path`` stay in memory for ``save``."""

    image_size: tuple[int, int] = (0, 0)  # (width, height) of the image read
    threshold: float = 0.5
    findings: list[BoxFinding] = field(default_factory=list)
    #: Test-time augmentation disagreement in [0, 1] (``uncertainty.py``): the largest score change of a finding.
    uncertainty: float | None = None
    #: Uncertainty above the review threshold chosen on validation at training; None when the bundle has none.
    flag_for_review: bool | None = None
    image: np.ndarray | None = field(default=None, repr=False, compare=False)
    path: Path | None = field(default=None, repr=False, compare=False)

    def summary(self) -> str:
        top = "; ".join(f"{f.label} {f.score:.2f} at {f.box}" for f in self.findings[:3])
        text = f"{len(self.findings)} finding(s) at score >= {self.threshold:.3f}" + (f": {top}" if top else "")
        return text + (f"; flagged for review (uncertainty {self.uncertainty:.3f})" if self.flag_for_review else "")

    def payload(self) -> dict[str, Any]:
        return {
            "image_size": [int(v) for v in self.image_size],
            "box_convention": BOX_CONVENTION,
            "threshold": self.threshold,
            "findings": [f.to_json() for f in self.findings],
            "uncertainty": self.uncertainty,
            "flag_for_review": self.flag_for_review,
        }


class DetectionModel:
    """A detection bundle loaded once: plan, labels, operating point and the detector (ORT heads when exported)."""

    def __init__(self, bundle: Bundle) -> None:
        if bundle.task != "detection":
            raise MedsightError(f"a {bundle.task} bundle, not a detection one", bundle.path)
        self.bundle = bundle
        self.plan = bundle.plan(DetectionPlan)
        self.labels = bundle.label_names
        self.threshold = float(bundle.meta["operating_point"]["threshold"])
        self.review_threshold: float | None = (bundle.meta.get("uncertainty") or {}).get("threshold")
        self.flip_merged = test_time.kept(bundle.meta, self.plan.flip)
        onnx_file = (bundle.meta.get("onnx") or {}).get("file")
        if onnx_file and (bundle.path / onnx_file).is_file():
            network: torch.nn.Module = OrtHeads(bundle.path / onnx_file, self.plan)
            self.engine = "onnxruntime"
        else:
            network = bundle.network("cpu")
            self.engine = "pytorch"
        self.detector = build_detector(network, self.plan).eval()

    def detect(self, images: np.ndarray, scales: Sequence[tuple[float, float]]) -> list[Detections]:
        """Detections for prepared images (N, 1, S, S), boxes in the pixels of each image read."""
        return detect(self.detector, images, scales)

    def findings(
        self, images: np.ndarray, scales: Sequence[tuple[float, float]]
    ) -> tuple[list[Detections], np.ndarray]:
        """Each image's detections and its uncertainty, from two passes: the image, then the second view. Where the
        bundle kept the test-time flip (decided on validation, :mod:`.test_time`), the detections are the merged
        findings of both views; otherwise those of the image alone."""
        first = self.detect(images, scales)
        second = uncertainty.second_pass(self.detect, images, scales, self.plan.flip)
        dets = test_time.merged(first, second) if self.flip_merged else first
        return dets, uncertainty.spread(first, second)

    def read(self, inputs: Sequence[Path]) -> list[np.ndarray]:
        """Every input read and checked (2D) before any runs, so a bad file fails the call before work is done."""
        if not inputs:
            raise MedsightError("no input files given")
        raws = []
        for p in inputs:
            raw = read_image(p)
            if raw.ndim != 3:
                raise MedsightError(f"a {raw.ndim - 1}D image, but the model takes 2D images", p)
            raws.append(raw)
        return raws

    def predict(self, inputs: Sequence[Path], explain: bool = False) -> list[Result]:
        """Boxes at or above the operating point per input, with the image's uncertainty (a second, augmented pass)
        and its review flag. ``explain`` adds nothing: the boxes are the explanation."""
        paths = [Path(p) for p in inputs]
        raws = self.read(paths)
        prepared = [prepare(raw, self.plan.image_size) for raw in raws]
        images, scales = np.stack([a for a, _ in prepared]), [s for _, s in prepared]
        dets, spread = self.findings(images, scales)
        results: list[Result] = []
        for k, (path, raw, d, u) in enumerate(zip(paths, raws, dets, spread, strict=True)):
            h, w = raw.shape[1:]
            boxes = np.clip(d.boxes, 0, [w, h, w, h])
            found = [
                BoxFinding(self.labels[int(c)], round(float(s), 4), [round(float(v), 2) for v in b])
                for b, s, c in zip(boxes, d.scores, d.labels, strict=True)
                if s >= self.threshold
            ]
            results.append(
                DetectionResult(
                    input=path.name,
                    index=k,
                    image_size=(int(w), int(h)),
                    threshold=self.threshold,
                    findings=found,
                    uncertainty=float(u),
                    flag_for_review=uncertainty.flag(float(u), self.review_threshold),
                    image=raw,
                    path=path,
                )
            )
        return results

    def save(self, results: Sequence[Result], folder: Path) -> None:
        """An overlay PNG per input and, for a DICOM input with findings, a TID 1500 SR holding each box."""
        for r in results:
            assert isinstance(r, DetectionResult) and r.image is not None
            h, w = r.image.shape[1:]
            scale = min(1.0, 512 / max(h, w))
            small = torch.nn.functional.interpolate(torch.as_tensor(r.image)[None], scale_factor=scale, mode="area")[0]
            boxes = np.asarray([f.box for f in r.findings]).reshape(-1, 4)
            name = f"{r.stem}_boxes.png"
            write_bytes(folder / name, png_image(draw_boxes(small.numpy(), np.zeros((0, 4)), boxes, scale)))
            r.files["overlay"] = name
            image_file = dicom_image_file(r.path)
            if r.path is not None and image_file is not None:
                from medsight.serving.dicom_objects import for_input

                with for_input(r.path):
                    r.dicom.update(self._write_sr(r, image_file, folder))

    def _write_sr(self, r: DetectionResult, image_file: Path, folder: Path) -> dict[str, str]:
        """A TID 1500 SR with one planar-ROI measurement group per finding: label, score and its box as a closed
        polyline on the source image. Boxes are in the pixels of the image read (``image_size``); for a
        single-frame DICOM that is the stored pixel matrix, so they are DICOM 2D image coordinates (column, row;
        (0, 0) = top-left corner of the top-left pixel) as they are. The per-axis factor below maps them onto
        Columns x Rows should the image read ever differ in size."""
        from medsight.io.dicom import read_datasets
        from medsight.serving.codes import bundle_codes
        from medsight.serving.dicom_objects import Finding, write_sr
        from medsight.serving.provenance import AlgorithmIdentity

        if not r.findings:
            return {"sr": "", "note": "no finding above the operating point; no SR written"}
        source = read_datasets([image_file])[0]
        w, h = r.image_size
        fx, fy = int(source.Columns) / w, int(source.Rows) / h
        findings = [
            Finding(
                label=f.label,
                probability=min(1.0, max(0.0, f.score)),
                image_indices=(0,),
                box=(f.box[0] * fx, f.box[1] * fy, f.box[2] * fx, f.box[3] * fy),
            )
            for f in r.findings
        ]
        name = f"sr_{r.stem}.dcm"
        meta = self.bundle.meta
        write_sr(
            findings,
            [source],
            folder / name,
            identity=AlgorithmIdentity.of(self.bundle, f"medsight {meta['data']['source']} detector"),
            codes=bundle_codes(meta),
        )
        return {
            "sr": name,
            "coordinates": "each finding's box as a closed POLYLINE (SCOORD, column/row pixels) on the source image",
        }
