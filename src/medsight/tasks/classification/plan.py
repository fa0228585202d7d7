"""What a classification run takes (options) and what it decides from the data and this machine (the plan).

The planner works like nnU-Net's ``ExperimentPlanner``: one overridable ``determine_*`` step per decision, each
reading the data and the options, so a variant overrides one step instead of copying the planning.

Time: a default ``medsight train`` should finish in about ten minutes (:data:`DEFAULT_RUN_S`) on the 2-core CPU
this project is developed on, and say so before it starts. Ten minutes is what the MedMNIST benchmarks were
always given (540 s of training per run) and what ``make demo`` and a user waiting at a terminal accept; in it
the previous defaults (40 epochs, batch 128, lr 2e-3) fit for PneumoniaMNIST and BreastMNIST at 28 px (about 13 s
and 5 s per epoch), so their quality is unchanged. Larger sets (a MedMNIST 3D set of 1,188 volumes of 28³ took
50-70 s per epoch, 45 minutes for 40 epochs) get fewer epochs: the planner times a few training iterations on
the real data first, announces the epochs that fit and the time they take, and the engine's :class:`TimeBudget`
keeps the run inside the budget, re-planning after every epoch from the epoch time it measures itself (the first
epoch is the learning-rate warm-up, so the cosine decay is laid out on the real epoch time, and a burst of load
while the planner measured neither cuts the run short nor lets it overrun). ``--epochs`` and ``--time-budget``
override the plan.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from medsight.data.dataset import ClassificationData
from medsight.distributed import ddp
from medsight.errors import MedsightError
from medsight.tasks.classification import network, ordinal
from medsight.tasks.classification.steps import Speed, measure_speed
from medsight.tasks.contract import Plan, TrainOptions
from medsight.training.engine import averaging_decay
from medsight.transforms import augmentation

log = logging.getLogger("medsight.train")

ClassBalance = Literal["auto", "on", "off"]
Switch = Literal["auto", "on", "off"]

#: A default run (data, planning, training, calibration, export) should take about this long: 10 minutes.
DEFAULT_RUN_S = 600.0
#: The most seeds a recipe is trained from for the ensemble (issue 13), and the slack the planned time keeps for them.
MAX_SEED_MEMBERS = 3
SEED_MEMBER_MARGIN = 1.25
#: Seconds kept for what follows training (calibration, the operating point, ONNX export and its check).
AFTER_TRAINING_S = 15.0


@dataclass(kw_only=True)
class ClassificationOptions(TrainOptions):
    """The options classification takes beyond every task's (seed, epochs, time budget, batch size, lr)."""

    #: Choose the operating point reaching this validation sensitivity (default: Youden's J).
    target_sensitivity: float | None = None
    #: Weight the loss by inverse class frequency: "auto" (default) when the classes are imbalanced.
    class_balance: ClassBalance | None = None
    #: Binary: the label that counts as positive (the finding); default what the data set declares.
    positive: str | None = None
    #: Conformal miscoverage: prediction sets hold the true label with probability >= 1 - alpha (default 0.1).
    alpha: float | None = None
    #: Seed of the derived train/val/test split (default $MEDSIGHT_SPLIT_SEED or 0); never the training seed.
    split_seed: int | None = None
    #: Fine-tune from this bundle's weights (same task, labels and network; training/warm_start.py).
    init: Path | None = None
    #: The ensemble of the recipes trained (mean logits): "auto" (default) competes on validation, "on" keeps
    #: it, "off" never builds it (half the inference cost).
    ensemble: Switch | None = None
    #: Test-time augmentation (the mean of the image, its mirror and small shifts; :class:`network.ViewAverage`):
    #: "auto" (default) is decided on validation, "on" keeps it, "off" never uses it (one forward pass per image).
    tta: Switch | None = None
    #: Seeds each recipe is trained from for the ensemble (:func:`recipes.seed_members`); default planned: as many
    #: as the time limit holds without cutting an epoch, up to :data:`MAX_SEED_MEMBERS`.
    seed_members: int | None = None
    #: Mixup's Beta parameter α (0: off); default the planner's (:attr:`ClassificationPlanner.default_mixup`).
    mixup: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha is not None and not 0 < self.alpha < 1:
            raise MedsightError(f"--alpha must lie strictly between 0 and 1 (got {self.alpha})")
        if self.target_sensitivity is not None and not 0 < self.target_sensitivity < 1:
            raise MedsightError(f"--target-sensitivity must lie between 0 and 1 (got {self.target_sensitivity})")
        if self.class_balance is not None and self.class_balance not in ("auto", "on", "off"):
            raise MedsightError(f"--class-balance must be auto, on or off (got {self.class_balance!r})")
        if self.ensemble is not None and self.ensemble not in ("auto", "on", "off"):
            raise MedsightError(f"--ensemble must be auto, on or off (got {self.ensemble!r})")
        if self.tta is not None and self.tta not in ("auto", "on", "off"):
            raise MedsightError(f"--tta must be auto, on or off (got {self.tta!r})")
        if self.seed_members is not None and not 1 <= self.seed_members <= MAX_SEED_MEMBERS:
            raise MedsightError(f"--seed-members must be 1 to {MAX_SEED_MEMBERS} (got {self.seed_members})")
        if (self.seed_members or 1) > 1 and (self.ensemble == "off" or self.init is not None):
            raise MedsightError(
                "--seed-members above 1 needs a new ensemble: seed members only join one, and "
                + (
                    "--ensemble off builds none"
                    if self.ensemble == "off"
                    else "fine-tuning (--init) keeps its parent's network"
                )
            )
        if self.mixup is not None and not 0 <= self.mixup <= 10:
            raise MedsightError(f"--mixup must be 0 (off) or a Beta parameter up to 10 (got {self.mixup})")


@dataclass
class NetworkPlan(Plan):
    """The MONAI ResNet's keyword arguments, typed (see :func:`network.plan_network`)."""

    block: str
    layers: list[int]
    block_inplanes: list[int]
    spatial_dims: int
    n_input_channels: int
    conv1_t_size: int
    conv1_t_stride: int
    no_max_pool: bool
    num_classes: int
    name: str = network.NETWORK

    def kwargs(self) -> dict[str, Any]:
        """What the network's constructor takes (everything but ``name``)."""
        return {k: v for k, v in self.to_json().items() if k != "name"}

    def describe(self) -> str:
        widths = "-".join(map(str, self.block_inplanes))
        blocks = "-".join(map(str, self.layers))
        return f"{self.spatial_dims}D ResNet {widths} ({blocks} blocks)"


@dataclass
class ClassificationPlan(Plan):
    """Everything a classification run decided before training, stored in ``bundle.json`` as ``plan``."""

    task_type: str
    network: NetworkPlan
    width: int
    batch_size: int
    lr: float
    weight_decay: float
    schedule: str
    warmup_epochs: int
    #: The most epochs the engine runs (the time budget may stop it sooner) and how many should fit.
    epochs: int
    expected_epochs: int
    patience: int
    time_budget_s: float | None
    balanced_loss: bool
    class_balance: str
    augmentation: str
    target_sensitivity: float | None
    device: str
    iterations_per_epoch: int
    #: Measured before training on the real data: seconds per training iteration and per validation pass.
    seconds_per_iteration: float
    validation_seconds: float
    #: What the planned epochs should take, and why the epochs and budget are what they are.
    expected_seconds: float
    timing: str
    warnings: list[str] = dataclasses.field(default_factory=list)
    #: Ordered grades (an ordinal task), the loss the bundle's model was trained with, and the candidates that
    #: training compared on validation (every loss with every class-balance choice; :mod:`.recipes`).
    ordinal: bool = False
    loss: str = "cross-entropy"
    losses: list[str] = dataclasses.field(default_factory=list)
    balance_choices: list[bool] = dataclasses.field(default_factory=list)
    #: Decay of the exponential weight average validated beside the trained weights each epoch (the better is kept;
    #: ``engine.AveragedWeights``); None: no average (bundles from before it).
    weight_average_decay: float | None = None
    #: Seeds each recipe was trained from: the further ones join the ensemble only (:mod:`.recipes`); 1 in
    #: bundles from before seed members.
    seed_members: int = 1
    #: Mixup's Beta parameter α (``steps.make_step``); 0: off, as in bundles from before it.
    mixup_alpha: float = 0.0

    @property
    def seconds_per_epoch(self) -> float:
        return self.iterations_per_epoch * self.seconds_per_iteration + self.validation_seconds

    def summary(self) -> str:
        """The plan in one paragraph, for the log before training starts."""
        n = max(1, len(self.losses)) * max(1, len(self.balance_choices)) * self.seed_members
        budget = f"time budget {self.time_budget_s / 60:.1f} min" if self.time_budget_s else "no time budget"
        if self.time_budget_s and n > 1:
            budget += " per model"
        return (
            f"plan: {self.network.describe()}, batch {self.batch_size}, lr {self.lr:g} (AdamW, {self.warmup_epochs} "
            f"warm-up epoch + {self.schedule}), {self.describe_loss()}"
            f"{f', mixup α {self.mixup_alpha:g}' if self.mixup_alpha else ''}, early stopping after {self.patience} "
            f"epochs without improvement, {self.describe_epochs()} on {self.device}. Measured "
            f"{1 / max(self.seconds_per_iteration, 1e-9):.2f} iterations/s: {self.iterations_per_epoch} iterations "
            f"+ {self.validation_seconds:.1f} s validation = {self.seconds_per_epoch:.1f} s per epoch; expected "
            f"training time about {self.expected_seconds / 60:.1f} min ({budget}; {self.timing})"
        )

    def describe_loss(self) -> str:
        """The loss, or the recipes that training compares on validation (each in its share of the budget)."""
        n = max(1, len(self.losses)) * max(1, len(self.balance_choices))
        seeds = f", each from {self.seed_members} seeds for the ensemble" if self.seed_members > 1 else ""
        if n == 1:
            loss = ("class-balanced " if self.balanced_loss else "") + (
                "BCE" if self.task_type == "multilabel" else self.loss
            )
            return loss + seeds
        balance = "plain and class-balanced x " if len(self.balance_choices) > 1 else ""
        return f"{n} recipes compared on validation ({balance}{' and '.join(self.losses or [self.loss])}){seeds}"

    def describe_epochs(self) -> str:
        if self.expected_epochs >= self.epochs:
            return f"{self.epochs} epochs"
        return f"up to {self.epochs} epochs (about {self.expected_epochs} fit)"


class ClassificationPlanner:
    """Makes a :class:`ClassificationPlan` from the data, the options and a measurement of this machine.

    Defaults (kept whenever the time allows, so quality does not drop): 40 epochs, batch 128, lr 2e-3, width 16,
    patience 12, class-balanced loss for imbalanced single-label data.
    """

    default_epochs = 40
    default_batch_size = 128
    default_lr = 2e-3
    default_width = 16
    #: Mixup α of a default run: 0, off (benchmarks/mixup_ablation.py compared it on validation).
    default_mixup = 0.0
    weight_decay = 1e-4
    patience = 12
    warmup_epochs = 1
    schedule = "cosine"
    default_run_s = DEFAULT_RUN_S

    def __init__(
        self, data: ClassificationData, options: ClassificationOptions, device: str, started: float | None = None
    ) -> None:
        self.data = data
        self.options = options
        self.device = device
        #: When the run started (time.monotonic()), so the default budget counts loading and planning too.
        self.started = time.monotonic() if started is None else started
        self.train = data.split("train")

    # --------------------------------------------------------------------------------------------- steps

    def determine_network(self, width: int) -> NetworkPlan:
        d = self.data
        kwargs = network.plan_network(d.spatial_dims, d.spatial_size, d.n_channels, d.n_outputs, width)
        return NetworkPlan(**kwargs)

    def determine_width(self) -> int:
        return self.default_width

    def determine_batch_size(self) -> int:
        """The user's, else 128 (never more than the training set, so every epoch has a full step)."""
        if self.options.batch_size is not None:
            return self.options.batch_size
        return max(1, min(self.default_batch_size, len(self.train)))

    def determine_lr(self) -> float:
        return self.options.lr if self.options.lr is not None else self.default_lr

    def determine_class_balance(self) -> tuple[bool, str]:
        """(balanced loss?, why): on/off as asked, else balanced when the classes are imbalanced."""
        choice = self.options.class_balance or "auto"
        if choice == "auto":
            balanced = network.is_imbalanced(self.data.task_type, self.train.labels)
            return balanced, f"auto ({'imbalanced' if balanced else 'balanced'} classes)"
        return choice == "on", choice

    def determine_balance_choices(self) -> list[bool]:
        """The class-balance settings training compares on validation: both under ``auto`` on imbalanced
        single-label data (balancing can cost accuracy: :mod:`.recipes`), else the one asked or implied."""
        choice = self.options.class_balance or "auto"
        if choice == "auto" and network.is_imbalanced(self.data.task_type, self.train.labels):
            return [False, True]
        return [self.determine_class_balance()[0]]

    def determine_losses(self) -> list[str]:
        """Ordinal grades compare plain cross-entropy with soft ordinal labels on validation; others train one."""
        if self.data.task_type == "multilabel":
            return ["bce"]
        return list(ordinal.LOSSES) if self.data.ordinal else ["cross-entropy"]

    def determine_mixup(self) -> float:
        """Mixup's α: the user's, else :attr:`default_mixup` (decided on validation: docs/benchmarks.md)."""
        return float(self.options.mixup if self.options.mixup is not None else self.default_mixup)

    def determine_augmentation(self) -> str:
        return repr(augmentation(self.data.modality, self.data.spatial_dims, self.options.seed).transforms)

    def determine_speed(self, net: NetworkPlan, batch_size: int, lr: float, balanced: bool) -> Speed:
        """Time a few training iterations of the planned network on the real training data."""
        from medsight.training.seed import seed_everything

        seed_everything(self.options.seed)
        model = network.build_network(net.kwargs())
        loss = network.loss_fn(self.data.task_type, self.train.labels, balanced)
        augment = augmentation(self.data.modality, self.data.spatial_dims, self.options.seed + 1)
        val = self.data.splits.get("val", self.train)
        return measure_speed(
            model, loss, self.train.images, self.train.labels, augment, val.images, batch_size, lr, self.device
        )

    def determine_epochs_and_budget(
        self, seconds_per_epoch: float, elapsed: float, share: int = 1
    ) -> tuple[int, int, float | None, str, list[str]]:
        """(most epochs, epochs expected to fit, training time budget, why, warnings) from the measured seconds
        per epoch.

        - ``--epochs`` given: those epochs, and the budget only if ``--time-budget`` is given too.
        - ``--time-budget`` given: up to the default epochs, as many as fit in it.
        - neither: up to the default epochs, as many as fit in the default run (:data:`DEFAULT_RUN_S`, less what
          loading and planning already took and what follows training); that remainder is the time budget.
        With a budget the engine re-plans the epochs from its own epoch times, so the expected epochs are what the
        planner announces, not a cap. The ``share`` models a run trains (the recipes compared on validation, and
        their seed members) split a budget evenly (the figures returned are per model); given epochs are each
        model's.
        """
        given_epochs, given_budget = self.options.epochs, self.options.time_budget_s
        if given_budget is not None:
            given_budget = given_budget / share
        per_epoch = max(seconds_per_epoch, 1e-6)
        warnings: list[str] = []
        if given_epochs is not None:
            why = "epochs as given" + (", time budget as given" if given_budget else "")
            if given_budget and given_epochs * per_epoch > given_budget:
                fit = max(1, int(given_budget // per_epoch))
                warnings.append(
                    f"{given_epochs} epochs need about {given_epochs * per_epoch / 60:.1f} min but the time budget "
                    f"is {given_budget / 60:.1f} min: expect about {fit} epochs"
                )
                return given_epochs, fit, given_budget, why, warnings
            return given_epochs, given_epochs, given_budget, why, warnings
        if given_budget is not None:
            budget, source = given_budget, "the given time budget"
        else:
            budget = max(60.0, self.default_run_s - elapsed - AFTER_TRAINING_S) / share
            source = f"the default run of {self.default_run_s / 60:.0f} min"
        if share > 1:
            source += f" shared by {share} models"
        fit = int(budget // per_epoch)
        most = self.default_epochs
        if fit >= most:
            return most, most, budget, f"the default {most} epochs fit {source}", warnings
        epochs = max(1, fit)
        warnings.append(
            f"only {epochs} of the default {self.default_epochs} epochs fit {source} (about {per_epoch:.0f} s per "
            f"epoch here; {self.default_epochs} would take {self.default_epochs * per_epoch / 60:.0f} min): the model "
            "may be under-trained; give --time-budget or --epochs to train longer"
        )
        return most, epochs, budget, f"about {epochs} epochs fit {source}", warnings

    def determine_seed_members(
        self, epochs: int, expected_epochs: int, budget: float | None, seconds_per_epoch: float, recipes: int
    ) -> tuple[int, str]:
        """(seeds each recipe trains from, why): the number asked, else as many as the time limit holds with every
        model keeping all its planned epochs (with :data:`SEED_MEMBER_MARGIN` to spare), up to
        :data:`MAX_SEED_MEMBERS`. One where nothing would use them (``--ensemble off``, fine-tuning, which keeps
        its parent's network) or where no time limit is known (``--epochs`` alone asks for exactly one run)."""
        asked = self.options.seed_members
        if asked is not None:
            return asked, f"{asked} seeds per recipe as asked"
        if self.options.ensemble == "off" or self.options.init is not None or budget is None:
            return 1, "one seed per recipe"
        if expected_epochs < epochs:
            return 1, "one seed per recipe (the time limit does not hold more)"
        held = int(budget // (SEED_MEMBER_MARGIN * epochs * max(seconds_per_epoch, 1e-6)))
        seeds = max(1, min(MAX_SEED_MEMBERS, held))
        if seeds == 1:
            return 1, "one seed per recipe (the time limit does not hold more)"
        return seeds, f"{seeds} seeds per recipe fit the time limit (the further ones join the ensemble)"

    # ------------------------------------------------------------------------------------------------ plan

    def plan(self) -> ClassificationPlan:
        width = self.determine_width()
        net = self.determine_network(width)
        batch_size = self.determine_batch_size()
        lr = self.determine_lr()
        balanced, balance_why = self.determine_class_balance()
        balance_choices, losses = self.determine_balance_choices(), self.determine_losses()
        if len(balance_choices) > 1:
            balance_why += ": plain and class-balanced compared on validation"
        recipes = len(balance_choices) * len(losses)
        speed = self.determine_speed(net, batch_size, lr, balanced)
        iterations = math.ceil(len(self.train) / batch_size)
        # every epoch validates twice: the trained weights and their average (engine.AveragedWeights)
        validation_seconds = 2 * speed.validation_seconds
        per_epoch = iterations * speed.seconds_per_iteration + validation_seconds
        elapsed = time.monotonic() - self.started
        epochs, expected_epochs, budget, why, warnings = self.determine_epochs_and_budget(per_epoch, elapsed, recipes)
        # each data-parallel rank measured its own speed, but all must train the same models: rank 0's count holds
        seeds, seeds_why = ddp.broadcast(
            list(self.determine_seed_members(epochs, expected_epochs, budget, per_epoch, recipes))
        )
        share = recipes * seeds
        if seeds > 1:
            epochs, expected_epochs, budget, why, warnings = self.determine_epochs_and_budget(per_epoch, elapsed, share)
            why += f"; {seeds_why}"
        expected = share * (expected_epochs * per_epoch if budget is None else min(expected_epochs * per_epoch, budget))
        return ClassificationPlan(
            task_type=self.data.task_type,
            network=net,
            width=width,
            batch_size=batch_size,
            lr=lr,
            weight_decay=self.weight_decay,
            schedule=self.schedule,
            warmup_epochs=self.warmup_epochs,
            epochs=epochs,
            expected_epochs=expected_epochs,
            patience=self.patience,
            time_budget_s=None if budget is None else round(float(budget), 1),
            balanced_loss=balanced,
            class_balance=balance_why,
            augmentation=self.determine_augmentation(),
            target_sensitivity=self.options.target_sensitivity,
            device=self.device,
            iterations_per_epoch=iterations,
            weight_average_decay=round(averaging_decay(iterations), 4),
            seconds_per_iteration=round(speed.seconds_per_iteration, 4),
            validation_seconds=round(validation_seconds, 2),
            expected_seconds=round(expected, 1),
            timing=why,
            warnings=warnings,
            ordinal=self.data.ordinal,
            loss=losses[0],
            losses=losses,
            balance_choices=balance_choices,
            seed_members=seeds,
            mixup_alpha=self.determine_mixup(),
        )
