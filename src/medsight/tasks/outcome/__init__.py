"""Outcome prediction from chest X-rays plus clinical fields: an image-only CNN, a clinical-only logistic
regression and two fusions side by side on one patient-level split; a fusion is deployed only when it beats both
parts on validation.

Data: ``<covid_cxr_lung_boxes folder>#survival`` / ``#icu``, or an outcome task ``.json`` (see
``medsight.data.clinical``). Phases: :mod:`.plan` (options, typed plan), :mod:`.data`, :mod:`.train`,
:mod:`.evaluate`, :mod:`.predict` (the warm model and its typed results), :mod:`.card`; :mod:`.network` and
:mod:`.models` hold the CNN and the fitted models after it.
"""

from __future__ import annotations

from medsight.tasks.contract import PackageTask, TrainOptions
from medsight.tasks.outcome.plan import OutcomeOptions, OutcomePlan

__all__ = ["TASK", "OutcomeOptions", "OutcomePlan", "OutcomeTask"]


class OutcomeTask(PackageTask):
    """The outcome task's contract object (see :class:`medsight.tasks.contract.Task`)."""

    name = "outcome"
    Options: type[TrainOptions] = OutcomeOptions
    model_class = "OutcomeModel"


TASK = OutcomeTask()
