"""What detection training takes (:class:`DetectionOptions`) and what it decides from the data (:class:`DetectionPlan`).

The planner follows nnU-Net's ExperimentPlanner: each decision is one overridable ``determine_*`` step, so a
variant (another anchor rule, a wider network) subclasses the planner instead of editing the training code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from medsight.tasks.contract import Plan, TrainOptions, check_image_size

DEFAULT_IMAGE_SIZE = 256
DEFAULT_EPOCHS = 30
DEFAULT_BATCH_SIZE = 4
DEFAULT_LR = 1e-3
#: A default run (no --epochs, no --time-budget) trains at most this long: see determine_time_budget.
DEFAULT_TIME_BUDGET_S = 900.0


@dataclass(kw_only=True)
class DetectionOptions(TrainOptions):
    """The options every task takes, plus the side of the square model input and the split seed."""

    image_size: int | None = None
    #: Seed of the derived train/val/test split (default $MEDSIGHT_SPLIT_SEED or 0); never the training seed.
    split_seed: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_image_size(self.image_size)


@dataclass
class NetworkPlan(Plan):
    """Keyword arguments of :func:`medsight.tasks.detection.network.retinanet` (recorded as the network kwargs)."""

    spatial_dims: int = 2
    n_input_channels: int = 1
    num_classes: int = 1
    num_anchors: int = 3
    block_inplanes: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    layers: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    conv1_t_stride: int = 2
    returned_layers: list[int] = field(default_factory=lambda: [1, 2, 3])
    fpn_channels: int = 64
    size_divisible: int = 32


@dataclass
class DetectorPlan(Plan):
    """MONAI RetinaNetDetector settings: ATSS matching, hard-negative sampling, box selection, sliding window."""

    atss_candidates: int = 4
    sampled_anchors_per_image: int = 64
    positive_fraction: float = 0.3
    hard_negative_pool: int = 20
    min_negatives: int = 16
    score_threshold: float = 0.02
    topk_candidates_per_level: int = 1000
    nms_threshold: float = 0.22
    detections_per_image: int = 50
    window_overlap: float = 0.25


@dataclass
class DetectionPlan(Plan):
    """Everything training decided; stored in ``bundle.json`` and read back with ``bundle.plan(DetectionPlan)``."""

    kind: str  # "lesions" (FROC/CPM select) or "objects" (mAP@0.5 selects)
    image_size: int
    network: NetworkPlan
    detector: DetectorPlan
    feature_map_scales: list[int]
    anchor_shapes: list[list[float]]  # (rows, cols) at the first pyramid level, one per anchor
    epochs: int
    time_budget_s: float | None
    batch_size: int
    lr: float
    weight_decay: float
    warmup_epochs: int
    grad_clip: float
    negatives_per_epoch: int  # images without boxes sampled afresh each epoch, beside every image with boxes
    iterations_per_epoch: int
    flip: bool  # random horizontal flip (never for lateral objects such as lungs)
    selection: str  # validation metric that picks the epoch: "cpm" or "map50"

    def describe(self) -> str:
        """One line for the console before training starts."""
        return (
            f"plan: {self.image_size} px, RetinaNet FPN {self.network.fpn_channels}, anchors {self.anchor_shapes}, "
            f"{self.epochs} epochs x {self.iterations_per_epoch} iterations (batch {self.batch_size}, "
            f"{self.negatives_per_epoch} negatives/epoch), lr {self.lr:g}, selection on val {self.selection}"
            + (f", time budget {self.time_budget_s:.0f} s" if self.time_budget_s else "")
        )


@dataclass
class DetectionPlanner:
    """Makes a :class:`DetectionPlan` from the options and what the training split holds.

    ``box_sizes`` are (rows, cols) of the training boxes at the planned image size; ``n_positive``/``n_negative``
    count training images with and without boxes.
    """

    options: DetectionOptions
    kind: str
    n_classes: int

    def determine_image_size(self) -> int:
        return int(self.options.image_size or DEFAULT_IMAGE_SIZE)

    def determine_network(self) -> NetworkPlan:
        return NetworkPlan(num_classes=self.n_classes)

    def determine_feature_map_scales(self, network: NetworkPlan) -> list[int]:
        """Stride of each FPN level relative to the first one (the FPN adds one max-pooled level on top)."""
        return [2**i for i in range(len(network.returned_layers) + 1)]

    def determine_anchor_shapes(self, box_sizes: np.ndarray, scales: list[int], image_size: int) -> list[list[float]]:
        """Three base anchor shapes from the 25th/50th/75th percentile box size, scaled so the middle pyramid
        level matches them; the other levels then cover 0.5x and 2x and beyond."""
        sizes = np.asarray(box_sizes, float).reshape(-1, 2)
        if len(sizes) == 0:
            sizes = np.full((1, 2), image_size / 8.0)
        mid = scales[len(scales) // 2]
        return [
            [float(v) for v in np.maximum(np.percentile(sizes, q, axis=0) / mid, 2.0).round(1)] for q in (25, 50, 75)
        ]

    def determine_detector(self) -> DetectorPlan:
        return DetectorPlan()

    def determine_negatives_per_epoch(self, n_positive: int, n_negative: int) -> int:
        """As many images without boxes as with (at least 8), so normal images teach the background."""
        return min(n_negative, max(n_positive, 8))

    def determine_schedule(self) -> tuple[int, int, float]:
        """Epochs, batch size and peak learning rate."""
        o = self.options
        return (o.epochs or DEFAULT_EPOCHS, o.batch_size or DEFAULT_BATCH_SIZE, o.lr or DEFAULT_LR)

    def determine_time_budget(self) -> float | None:
        """The user's budget; else, for a default run (no --epochs), :data:`DEFAULT_TIME_BUDGET_S`.

        Measured learning curve (COVID lung boxes, 192 px, 2 shared cores, ``benchmarks/covid_lungs.py``): the best
        validation mAP@0.5 came at epoch 5 of 9 (about 370 s) and test AP@0.5 was 0.99 per lung after 663 s, so a
        15-minute default leaves room for the curve to flatten; the engine re-plans the epochs to fit it (so the
        schedule still anneals) and warns when it cuts the run short.
        """
        if self.options.time_budget_s is not None:
            return self.options.time_budget_s
        return None if self.options.epochs is not None else DEFAULT_TIME_BUDGET_S

    def determine_selection(self) -> str:
        return "cpm" if self.kind == "lesions" else "map50"

    def plan(self, box_sizes: np.ndarray, n_positive: int, n_negative: int) -> DetectionPlan:
        image_size = self.determine_image_size()
        network = self.determine_network()
        scales = self.determine_feature_map_scales(network)
        negatives = self.determine_negatives_per_epoch(n_positive, n_negative)
        epochs, batch_size, lr = self.determine_schedule()
        return DetectionPlan(
            kind=self.kind,
            image_size=image_size,
            network=network,
            detector=self.determine_detector(),
            feature_map_scales=scales,
            anchor_shapes=self.determine_anchor_shapes(box_sizes, scales, image_size),
            epochs=epochs,
            time_budget_s=self.determine_time_budget(),
            batch_size=batch_size,
            lr=lr,
            weight_decay=1e-4,
            warmup_epochs=2,
            grad_clip=10.0,
            negatives_per_epoch=negatives,
            iterations_per_epoch=max(1, math.ceil((n_positive + negatives) / batch_size)),
            flip=self.kind == "lesions",
            selection=self.determine_selection(),
        )
