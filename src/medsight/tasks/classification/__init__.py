"""Classification (binary, multi-class, multi-label; 2D and 3D): the task's contract object and its phases.

``data`` reads the sources, ``plan`` decides (options, typed plan, planner), ``train`` runs the engine and writes
the bundle, ``evaluate`` + ``card`` score it, ``predict`` is the warm model. ``network`` is re-exported here
because the outcome task's image branch reuses the ResNet.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsight.tasks.classification.network import NETWORK, build_network, gradcam_layer, plan_network
from medsight.tasks.classification.plan import ClassificationOptions, ClassificationPlan
from medsight.tasks.contract import TrainOptions
from medsight.training.bundle import Bundle

if TYPE_CHECKING:
    from medsight.tasks.classification.predict import ClassificationModel

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


class ClassificationTask:
    """The classification task as the :class:`medsight.tasks.Task` protocol sees it."""

    name = "classification"
    Options: type[TrainOptions] = ClassificationOptions

    def recognises(self, spec: str) -> bool:
        """Classification takes what no other task recognises (images with labels), so it never claims first."""
        return False

    def train(self, data: str, out: Path, options: TrainOptions) -> dict[str, Any]:
        from medsight.tasks.classification.train import train

        if not isinstance(options, ClassificationOptions):
            raise TypeError(f"classification takes ClassificationOptions, not {type(options).__name__}")
        return train(data, out, options)

    def evaluate(self, bundle: Path, data: str, split: str, out: Path, n_boot: int) -> dict[str, Any]:
        from medsight.tasks.classification.evaluate import evaluate

        return evaluate(bundle, data, split, out, n_boot)

    def load(self, bundle: Bundle) -> ClassificationModel:
        from medsight.tasks.classification.predict import ClassificationModel

        return ClassificationModel(bundle)


TASK = ClassificationTask()
