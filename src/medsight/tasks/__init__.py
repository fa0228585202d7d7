"""Tasks (classification, segmentation, detection, outcome): each a package implementing :class:`Task`.

``get(name)`` returns a task's contract object; ``detect(spec)`` asks each task whether it recognises a data source.
"""

from __future__ import annotations

import importlib

from medsight.errors import MedsightError
from medsight.tasks.contract import Model, PackageTask, Plan, Task, TrainOptions

TASKS = ("classification", "segmentation", "detection", "outcome")
#: Asked in this order; classification takes what no other task recognises (images + labels).
DETECTION_ORDER = ("segmentation", "detection", "outcome")

__all__ = ["DETECTION_ORDER", "TASKS", "Model", "PackageTask", "Plan", "Task", "TrainOptions", "detect", "get"]


def get(name: str) -> Task:
    """The contract object of task ``name``."""
    if name not in TASKS:
        raise MedsightError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    module = importlib.import_module(f"medsight.tasks.{name}")
    task = getattr(module, "TASK", None)
    if not isinstance(task, Task):
        raise TypeError(f"medsight.tasks.{name}.TASK does not implement the Task protocol")
    return task


def detect(spec: str) -> str:
    """The task whose data ``spec`` is: the first task that recognises it, else classification."""
    for name in DETECTION_ORDER:
        if get(name).recognises(spec):
            return name
    return "classification"
