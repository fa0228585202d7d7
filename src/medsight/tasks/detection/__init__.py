"""Detection (MONAI RetinaNet): lesions with FROC/CPM (mini-MIAS) and objects with mAP@0.5 (COCO, e.g. COVID lungs).

Phases: ``plan`` (options, typed plan, planner), ``data`` (reading and preparing images and boxes), ``network``
(RetinaNet, detector, ONNX heads), ``train``, ``evaluate``, ``predict`` (warm model, typed results), ``card``.
Phase modules are imported when used, so recognising a data source stays cheap.
"""

from __future__ import annotations

from medsight.tasks.contract import PackageTask, TrainOptions
from medsight.tasks.detection.plan import DetectionOptions, DetectionPlan

__all__ = ["TASK", "DetectionOptions", "DetectionPlan", "DetectionTask"]


class DetectionTask(PackageTask):
    """The detection task's contract object (see :class:`medsight.tasks.contract.Task`)."""

    name = "detection"
    Options: type[TrainOptions] = DetectionOptions
    model_class = "DetectionModel"


TASK = DetectionTask()
