"""Classification (binary, multi-class, multi-label; 2D and 3D): the task's contract object and its phases.

``data`` reads the sources, ``plan`` decides (options, typed plan, planner), ``train`` runs the engine and writes
the bundle, ``evaluate`` + ``card`` score it, ``predict`` is the warm model. ``network`` is re-exported here
because the outcome task's image branch reuses the ResNet.
"""

from __future__ import annotations

from medsight.tasks.classification.network import NETWORK, build_network, gradcam_layer, plan_network
from medsight.tasks.classification.plan import ClassificationOptions, ClassificationPlan
from medsight.tasks.contract import PackageTask, TrainOptions

__all__ = [
    "NETWORK",
    "TASK",
    "ClassificationOptions",
    "ClassificationPlan",
    "ClassificationTask",
    "build_network",
    "gradcam_layer",
    "plan_network",
]


class ClassificationTask(PackageTask):
    """The classification task as the :class:`medsight.tasks.Task` protocol sees it."""

    name = "classification"
    Options: type[TrainOptions] = ClassificationOptions
    model_class = "ClassificationModel"

    def recognises(self, spec: str) -> bool:
        """Classification takes what no other task recognises (images with labels), so it never claims first."""
        return False


TASK = ClassificationTask()
