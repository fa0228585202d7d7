"""The training recipes a classification run compares, and the rule that picks one on the validation split.

Two choices are not left to a fixed default, because which one wins depends on the task (issue 13):

* **class balance**: class-balanced cross-entropy raised validation AUC on PneumoniaMNIST and BreastMNIST, but it
  moves decisions towards rare classes, which can cost accuracy, the other figure MedMNIST reports. With
  ``--class-balance auto`` on imbalanced data both are trained and the validation split decides;
* **the loss of ordinal grades**: plain cross-entropy or soft ordinal labels (:mod:`.ordinal`);
* **one model or the ensemble of all**: when several recipes are trained, the mean of their logits
  (:class:`~medsight.tasks.classification.network.LogitAverage`) competes too, listed last (the least simple).
  Where the time limit holds more models than recipes, each recipe is also trained from further seeds (seed
  members, planned in :mod:`.plan`); they join the ensemble only and never compete alone, so that more models do
  not mean more single candidates for a small validation split to pick between by chance.

The rule, fixed before any run: the recipe with the best validation score of the reported decision metric
(quadratic weighted kappa for ordinal grades, accuracy at the operating point otherwise) wins; a recipe within
:data:`TIE` of the best is tied, and ties go to the higher validation AUC, then to the simpler recipe (listed
first: plain before balanced, cross-entropy before soft ordinal). The test split is never read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

#: Scores within this of the best count as tied (as in benchmarks/classification_ablation.py).
TIE = 0.002


@dataclass(frozen=True)
class Recipe:
    """One candidate: the loss (``cross-entropy``, ``soft-ordinal`` or ``bce``) and whether classes are weighted;
    or, with ``members``, the ensemble of those recipes' models (its loss and balance are the first member's, which
    a fine-tuning run of the ensemble uses)."""

    loss: str
    balanced: bool
    members: tuple[Recipe, ...] = ()
    #: Which seed member this is: 0 trains from the run's seed, k from ``seed + SEED_STRIDE * k`` (:func:`seed_of`).
    seed_member: int = 0

    @property
    def name(self) -> str:
        if self.members:
            return "ensemble (mean logits) of " + " + ".join(m.name for m in self.members)
        name = ("class-balanced " if self.balanced else "") + self.loss
        return name + (f", seed member {self.seed_member + 1}" if self.seed_member else "")


def ensemble(members: Sequence[Recipe]) -> Recipe:
    """The candidate that averages the logits of the ``members``' models."""
    if len(members) < 2:
        raise ValueError("an ensemble needs at least two recipes")
    return Recipe(members[0].loss, members[0].balanced, tuple(members))


def candidates(losses: Sequence[str], balance: Sequence[bool]) -> list[Recipe]:
    """Every loss with every balance choice, simplest first."""
    return [Recipe(loss, b) for loss in losses for b in balance]


def seed_members(recipes: Sequence[Recipe], n_seeds: int) -> list[Recipe]:
    """The further seed members of ``recipes`` when each is trained from ``n_seeds`` seeds (seed 0 excluded)."""
    return [replace(r, seed_member=k) for k in range(1, n_seeds) for r in recipes]


#: Seed member k trains from ``seed + SEED_STRIDE * k``: runs asked with neighbouring ``--seed`` values never share one.
SEED_STRIDE = 1000


def seed_of(recipe: Recipe, seed: int) -> int:
    """The training seed of ``recipe`` in a run started with ``seed``."""
    return seed + SEED_STRIDE * recipe.seed_member


def selection_metric(task_type: str, ordinal: bool) -> str:
    """The validation metric recipes are compared on: what the model card reports for its decisions."""
    if ordinal:
        return "qwk"
    return "auc" if task_type == "multilabel" else "accuracy"


def choose(recipes: Sequence[Recipe], val_metrics: Sequence[dict[str, float]], metric: str) -> int:
    """Index of the winning recipe by the rule above (NaN scores count as worst)."""

    def score(m: dict[str, float], key: str) -> float:
        v = m.get(key)
        return -math.inf if v is None or math.isnan(float(v)) else float(v)

    best = max(score(m, metric) for m in val_metrics)
    tied = [i for i, m in enumerate(val_metrics) if score(m, metric) >= best - TIE]
    return max(tied, key=lambda i: (score(val_metrics[i], "auc"), -i))


def record(
    recipes: Sequence[Recipe], val_metrics: Sequence[dict[str, float]], metric: str, chosen: int, why: str
) -> dict[str, Any]:
    """What bundle.json keeps of the choice: every candidate's validation scores, the winner and the rule."""
    keys = ("qwk", "accuracy", "auc", "mae")
    kept = recipes[chosen]
    return {
        "chosen": kept.name,
        "loss": kept.loss,
        "balanced": kept.balanced,
        "ensemble": [m.name for m in kept.members] or None,
        "metric": metric,
        "decided_on": "val",
        "why_compared": why,
        "rule": f"best validation {metric}; within {TIE} is a tie, won by the higher validation AUC, then the "
        "simpler recipe",
        "candidates": [
            {"recipe": r.name, **{k: round(float(m[k]), 4) for k in keys if k in m and not math.isnan(float(m[k]))}}
            for r, m in zip(recipes, val_metrics, strict=True)
        ],
    }
