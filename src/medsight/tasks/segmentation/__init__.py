"""Segmentation, self-configuring in the manner of nnU-Net: a folder in, a planned, trained and post-processed model
out (``train``), scored with CIs into a model card (``evaluate``), loaded once to segment NIfTI, PNG/TIFF and DICOM
series with masks in the input's own geometry (``load`` → :class:`SegmentationModel`).

Modules by phase: ``plan`` (options, typed plan, planner), ``data`` (folders, folds, preprocessing and its cache),
``augment`` (patch sampling), ``network``, ``train``, ``inference`` (sliding window, post-processing), ``predict``
(the warm model and its typed result), ``evaluate``, ``metrics``, ``card`` and ``overlay``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsight.tasks.contract import TrainOptions
from medsight.tasks.segmentation.plan import SegmentationOptions, SegmentationPlan
from medsight.training.bundle import Bundle

if TYPE_CHECKING:
    from medsight.tasks.segmentation.predict import SegmentationModel

__all__ = ["TASK", "SegmentationOptions", "SegmentationPlan", "SegmentationTask"]


class SegmentationTask:
    """The segmentation task's contract object; each phase lives in its own module, imported when used."""

    name = "segmentation"
    Options: type[TrainOptions] = SegmentationOptions

    def recognises(self, spec: str) -> bool:
        from medsight.tasks.segmentation.data import recognises

        return recognises(spec)

    def train(self, data: str, out: Path, options: TrainOptions) -> dict[str, Any]:
        from medsight.tasks.segmentation.train import train

        if not isinstance(options, SegmentationOptions):
            options = SegmentationOptions.from_mapping(options.given(), self.name)
        return train(data, out, options)

    def evaluate(self, bundle: Path, data: str, split: str, out: Path, n_boot: int) -> dict[str, Any]:
        from medsight.tasks.segmentation.evaluate import evaluate

        return evaluate(bundle, data, split, out, n_boot)

    def load(self, bundle: Bundle) -> SegmentationModel:
        from medsight.tasks.segmentation.predict import SegmentationModel

        return SegmentationModel(bundle)


TASK = SegmentationTask()
