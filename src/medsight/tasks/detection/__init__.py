"""Detection (MONAI RetinaNet): lesions with FROC/CPM (mini-MIAS) and objects with mAP@0.5 (COCO, e.g. COVID lungs).

Phases: ``plan`` (options, typed plan, planner), ``data`` (reading and preparing images and boxes), ``network``
(RetinaNet, detector, ONNX heads), ``train``, ``evaluate``, ``predict`` (warm model, typed results), ``card``.
Phase modules are imported when used, so recognising a data source stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsight.tasks.contract import TrainOptions
from medsight.tasks.detection.plan import DetectionOptions, DetectionPlan

if TYPE_CHECKING:
    from medsight.tasks.detection.predict import DetectionModel
    from medsight.training.bundle import Bundle

__all__ = ["TASK", "DetectionOptions", "DetectionPlan", "DetectionTask"]


class DetectionTask:
    """The detection task's contract object (see :class:`medsight.tasks.contract.Task`)."""

    name = "detection"
    Options: type[TrainOptions] = DetectionOptions

    def recognises(self, spec: str) -> bool:
        from medsight.tasks.detection.data import recognises

        return recognises(spec)

    def train(self, data: str, out: Path, options: TrainOptions) -> dict[str, Any]:
        from medsight.tasks.detection.train import train

        if not isinstance(options, DetectionOptions):
            raise TypeError(f"detection takes DetectionOptions, not {type(options).__name__}")
        return train(data, Path(out), options)

    def evaluate(self, bundle: Path, data: str, split: str, out: Path, n_boot: int) -> dict[str, Any]:
        from medsight.tasks.detection.evaluate import evaluate

        return evaluate(Path(bundle), data, split, Path(out), n_boot)

    def load(self, bundle: Bundle) -> DetectionModel:
        from medsight.tasks.detection.predict import DetectionModel

        return DetectionModel(bundle)


TASK = DetectionTask()
