"""End-to-end jobs per task (train → bundle, evaluate → card, predict → results), dispatched by task name."""

from __future__ import annotations

import importlib
from types import ModuleType

from medsight.errors import MedsightError

TASKS = ("classification", "segmentation", "detection", "outcome")


def pipeline(task: str) -> ModuleType:
    """The module implementing ``train``/``evaluate``/``predict`` for ``task``."""
    if task not in TASKS:
        raise MedsightError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    try:
        return importlib.import_module(f"medsight.pipelines.{task}")
    except ModuleNotFoundError as exc:
        if exc.name == f"medsight.pipelines.{task}":
            raise MedsightError(f"task {task!r} is not available in this version of medsight") from exc
        raise


def detect_task(spec: str) -> str:
    """Guess the task from the data source: each pipeline's ``recognises(spec)`` is asked in turn."""
    for task in ("segmentation", "detection", "outcome"):
        try:
            module = importlib.import_module(f"medsight.pipelines.{task}")
        except ModuleNotFoundError:
            continue
        recognise = getattr(module, "recognises", None)
        if recognise is not None and recognise(spec):
            return task
    return "classification"
