"""Segmentation, self-configuring in the manner of nnU-Net: a folder in, a planned, trained and post-processed model
out (``train``), scored with CIs into a model card (``evaluate``), loaded once to segment NIfTI, PNG/TIFF and DICOM
series with masks in the input's own geometry (``load`` → :class:`SegmentationModel`).

Modules by phase: ``plan`` (options, typed plan, planner), ``data`` (folders, folds, preprocessing and its cache),
``augment`` (patch sampling), ``network``, ``train``, ``inference`` (sliding window, post-processing), ``predict``
(the warm model and its typed result), ``evaluate``, ``metrics``, ``card`` and ``overlay``.
"""

from __future__ import annotations

from medsight.tasks.contract import PackageTask, TrainOptions
from medsight.tasks.segmentation.plan import SegmentationOptions, SegmentationPlan

__all__ = ["TASK", "SegmentationOptions", "SegmentationPlan", "SegmentationTask"]


class SegmentationTask(PackageTask):
    """The segmentation task's contract object; each phase lives in its own module, imported when used."""

    name = "segmentation"
    Options: type[TrainOptions] = SegmentationOptions
    model_class = "SegmentationModel"


TASK = SegmentationTask()
