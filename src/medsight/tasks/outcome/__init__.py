"""Outcome prediction from chest X-rays plus clinical fields: an image-only CNN, a clinical-only logistic
regression and two fusions side by side on one patient-level split; a fusion is deployed only when it beats both
parts on validation.

Data: ``<covid_cxr_lung_boxes folder>#survival`` / ``#icu``, or an outcome task ``.json`` (see
``medsight.data.clinical``). Phases: :mod:`.plan` (options, typed plan), :mod:`.data`, :mod:`.train`,
:mod:`.evaluate`, :mod:`.predict` (the warm model and its typed results), :mod:`.card`; :mod:`.network` and
:mod:`.models` hold the CNN and the fitted models after it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medsight.errors import MedsightError
from medsight.tasks.contract import Model, TrainOptions
from medsight.tasks.outcome.plan import OutcomeOptions, OutcomePlan
from medsight.training.bundle import Bundle

__all__ = ["TASK", "OutcomeOptions", "OutcomePlan", "OutcomeTask"]


class OutcomeTask:
    """The outcome task's contract object (see :class:`medsight.tasks.contract.Task`)."""

    name = "outcome"
    Options: type[TrainOptions] = OutcomeOptions

    def recognises(self, spec: str) -> bool:
        from medsight.tasks.outcome.data import recognises

        return recognises(spec)

    def train(self, data: str, out: Path, options: TrainOptions) -> dict[str, Any]:
        from medsight.tasks.outcome.train import train

        if not isinstance(options, OutcomeOptions):
            raise MedsightError(f"the outcome task takes OutcomeOptions, not {type(options).__name__}")
        return train(data, out, options)

    def evaluate(self, bundle: Path, data: str, split: str, out: Path, n_boot: int) -> dict[str, Any]:
        from medsight.tasks.outcome.evaluate import evaluate

        return evaluate(bundle, data, split, out, n_boot)

    def load(self, bundle: Bundle) -> Model:
        from medsight.tasks.outcome.predict import OutcomeModel

        return OutcomeModel(bundle)


TASK = OutcomeTask()
