"""What the outcome task takes (:class:`OutcomeOptions`) and what it decides from the data (:class:`OutcomePlan`).

The planner works like nnU-Net's ExperimentPlanner: :meth:`OutcomePlanner.plan` calls one ``determine_*`` step per
decision, each reading the options (a value the user gave wins) and the training data, so a variant overrides one
step instead of copying the whole plan.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsight.errors import MedsightError
from medsight.evaluation.conformal import DEFAULT_ALPHA, check_alpha
from medsight.tasks.contract import Plan, TrainOptions, check_image_size
from medsight.tasks.outcome.models import FUSION_BEATS_BOTH
from medsight.tasks.outcome.network import plan_resnet

log = logging.getLogger("medsight")

DEFAULT_IMAGE_SIZE = 128
DEFAULT_EPOCHS = 30
DEFAULT_BATCH_SIZE = 32
DEFAULT_LR = 1e-3
#: About 6 s per epoch on two busy CPU cores at 128 px: 30 epochs take ~3 min, so the budget only guards slow hosts.
DEFAULT_TIME_BUDGET_S = 900.0


@dataclass(kw_only=True)
class OutcomeOptions(TrainOptions):
    """The common options plus the CNN's input size and a sensitivity-targeted operating point."""

    image_size: int | None = None
    target_sensitivity: float | None = None
    #: Conformal miscoverage: prediction sets hold the outcome with probability >= 1 - alpha (default 0.1).
    alpha: float | None = None
    #: Seed of the derived train/val/test split (default $MEDSIGHT_SPLIT_SEED or 0); never the training seed.
    split_seed: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_image_size(self.image_size)


@dataclass
class OutcomePlan(Plan):
    """What training decided; stored as ``plan`` in bundle.json, read back with ``bundle.plan(OutcomePlan)``."""

    image_size: int
    network: dict[str, Any]
    augmentation: str
    batch_size: int
    lr: float
    weight_decay: float
    warmup_epochs: int
    epochs: int
    patience: int
    time_budget_s: float | None
    class_weights: list[float]
    clinical_c: float
    embed_components: int
    selection_rule: str
    target_sensitivity: float | None
    split: str
    #: Conformal miscoverage of the prediction sets (plans written before it have the default).
    alpha: float = DEFAULT_ALPHA

    @property
    def operating_point_method(self) -> str:
        return "youden" if self.target_sensitivity is None else f"sensitivity>={self.target_sensitivity:g}"


class OutcomePlanner:
    """Makes an :class:`OutcomePlan` from the options and the training labels."""

    def __init__(self, options: OutcomeOptions, y_train: np.ndarray) -> None:
        self.options = options
        self.y_train = np.asarray(y_train, int)

    def plan(self) -> OutcomePlan:
        size = self.determine_image_size()
        return OutcomePlan(
            image_size=size,
            network=self.determine_network(size),
            augmentation="xray",
            batch_size=self.determine_batch_size(),
            lr=self.determine_lr(),
            weight_decay=1e-4,
            warmup_epochs=1,
            epochs=self.determine_epochs(),
            patience=10,
            time_budget_s=self.determine_time_budget(),
            class_weights=self.determine_class_weights(),
            clinical_c=0.3,
            embed_components=8,
            selection_rule=FUSION_BEATS_BOTH,
            target_sensitivity=self.determine_target_sensitivity(),
            split=f"patient-level 70/10/20 (StratifiedGroupKFold on the outcome), seed {self.options.seed}",
            alpha=self.determine_alpha(),
        )

    def determine_image_size(self) -> int:
        """128 px: chest X-rays downsized far enough for CPU training, large enough for lung fields."""
        size = self.options.image_size
        return DEFAULT_IMAGE_SIZE if size is None else int(size)

    def determine_network(self, image_size: int) -> dict[str, Any]:
        return plan_resnet(image_size)

    def determine_batch_size(self) -> int:
        bs = self.options.batch_size
        return int(bs) if bs is not None else max(1, min(DEFAULT_BATCH_SIZE, len(self.y_train)))

    def determine_lr(self) -> float:
        lr = self.options.lr
        return float(lr) if lr is not None else DEFAULT_LR

    def determine_epochs(self) -> int:
        epochs = self.options.epochs
        return int(epochs) if epochs is not None else DEFAULT_EPOCHS

    def determine_time_budget(self) -> float | None:
        budget = self.options.time_budget_s
        return float(budget) if budget is not None else DEFAULT_TIME_BUDGET_S

    def determine_class_weights(self) -> list[float]:
        """Inverse class frequency on train (the outcomes are imbalanced: ~20% died, ~70% went to ICU)."""
        counts = np.bincount(self.y_train, minlength=2).astype(float)
        return [float(w) for w in counts.sum() / (2 * np.maximum(counts, 1))]

    def determine_alpha(self) -> float:
        """The conformal miscoverage: 0.1 (sets that hold the outcome for 90% of patients) unless given."""
        return DEFAULT_ALPHA if self.options.alpha is None else check_alpha(self.options.alpha, "--alpha")

    def determine_target_sensitivity(self) -> float | None:
        s = self.options.target_sensitivity
        if s is not None and not 0 < s <= 1:
            raise MedsightError(f"--target-sensitivity must be in (0, 1] (got {s})")
        return s
