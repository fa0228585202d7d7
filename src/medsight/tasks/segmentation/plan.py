"""What segmentation takes (``SegmentationOptions``) and what it decides from the data (``SegmentationPlan``).

The planner follows nnU-Net's ``ExperimentPlanner`` (Isensee et al., Nature Methods 2021): each decision is one
overridable ``determine_*`` step reading the fingerprint and the steps before it, so a subclass (or an override
file) changes one rule and every later rule follows it. The rules, scaled to a compute budget:

* target spacing: the median spacing of the training cases (no resampling when every case already has it);
* normalisation by modality: CT → clip to the 0.5/99.5 percentiles of foreground intensities then z-score with
  the foreground mean and std; MRI and unknown → per-image z-score; colour (RGB) → per-image z-score per channel;
* field of view (2D images seen through a round aperture, e.g. fundus photographs; ``tasks/segmentation/fundus.py``):
  when every training image has one, each image (training and inference) is resampled so that its FOV has the
  training images' median FOV diameter, normalised per channel by ranks inside its FOV, and predictions outside the
  FOV are suppressed;
* patch size: the median image shape (after resampling), shrunk along its largest axis until it fits the
  budget's voxel count, and rounded to a multiple of the network's total downsampling;
* batch size: as many patches as the budget's voxels per step allow, at most 5% of the data set's voxels per batch
  (nnU-Net's cap), at least 2;
* topology (MONAI ``DynUNet``): downsample an axis while its feature map stays ≥ 4 voxels (and, for anisotropic
  spacing, only once it is within 2x of the finest spacing), at most 5 times; kernels 3 (1 along an axis still
  too coarse), filters doubling from the base to a cap;
* loss: Dice + cross-entropy (``DiceCELoss``); a third of the patches centred on foreground;
* schedule: on a CPU, epochs and a time budget chosen from the measured speed and learning curve on MSD
  Hippocampus (``benchmarks/results/seg_iterations.json``), so that a default run gives a usable model in a time a
  user accepts; on a GPU, nnU-Net's 1000 epochs of 250 iterations.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsight.errors import MedsightError
from medsight.tasks.contract import API_ONLY, Plan, TrainOptions

PLAN_ENV = "MEDSIGHT_SEG_PLAN"
NETWORK = "monai.networks.nets.DynUNet"
MIN_FEATURE_MAP = 4
MAX_POOLS = 5


@dataclass(kw_only=True)
class SegmentationOptions(TrainOptions):
    """The options every task takes, plus a plan-override file, the CV fold and (smoke tests only) a case cap."""

    plan: Path | None = None
    fold: int | None = None
    max_cases: int | None = field(default=None, metadata=API_ONLY)
    #: Fine-tune from this bundle: its plan and weights, with these options applied (training/warm_start.py).
    init: Path | None = None


@dataclass(frozen=True)
class DeviceBudget:
    """How much work one optimiser step and one run may cost on a kind of device."""

    patch_voxels: dict[int, int]
    step_voxels: dict[int, int]
    base_filters: int
    max_filters: dict[int, int]
    iterations_per_epoch: int
    epochs: int
    time_budget_s: float | None


#: CPU: measured on MSD Hippocampus on 2 shared cores (benchmarks/results/seg_iterations.json): about 3 iterations/s
#: with bf16 autocast on a quiet machine, 0.5-1 on a busy one; validation Dice rises with iterations (0.74 at 200,
#: 0.80 at 400 before annealing; 0.844 after 600 annealed, fp32). 40 epochs of 50 take about 11 minutes on a quiet
#: machine; the 15-minute budget keeps a busy one inside 20 minutes in all (reading, validation, ONNX export).
BUDGETS: dict[str, DeviceBudget] = {
    "cpu": DeviceBudget(
        patch_voxels={2: 128 * 128, 3: 48 * 64 * 48},
        step_voxels={2: 8 * 128 * 128, 3: 2 * 48 * 64 * 48},
        base_filters=16,
        max_filters={2: 256, 3: 128},
        iterations_per_epoch=50,
        epochs=40,
        time_budget_s=900.0,
    ),
    "cuda": DeviceBudget(
        patch_voxels={2: 512 * 512, 3: 128 * 128 * 128},
        step_voxels={2: 12 * 512 * 512, 3: 2 * 128 * 128 * 128},
        base_filters=32,
        max_filters={2: 512, 3: 320},
        iterations_per_epoch=250,
        epochs=1000,
        time_budget_s=None,
    ),
}


@dataclass(frozen=True)
class Preset:
    """A speed/accuracy trade-off applied on top of the device budget (``None``: the budget's value)."""

    description: str
    patch_voxels: dict[int, int] | None = None
    step_voxels: dict[int, int] | None = None
    base_filters: int | None = None
    max_filters: dict[int, int] | None = None
    max_pools: int = MAX_POOLS
    test_time_flips: bool = True
    overlap: float = 0.5
    window_mode: str = "gaussian"
    #: Whole image in view (2D): every image is resized, aspect kept, to about this many pixels (``None``: pixels
    #: as they are). For images whose pixels have no physical size (ultrasound screen captures, photographs), so
    #: that a CPU-sized patch sees the whole lesion and its surroundings rather than a part of them.
    image_pixels: dict[int, int] | None = None


#: ``default``: nnU-Net's rules within the device budget. ``fast``: made for live ultrasound (``medsight stream``),
#: >= 30 frames/s at 256x256 on 2 CPU cores with ONNX Runtime: every image resized, aspect kept, to about 8192
#: pixels (BUSI's median 337x400 image: 83x99), so that one window holds the whole image (won on BUSI's validation
#: folds against the image at its own pixels, benchmarks/results/busi_whole_image.json, then against about 20480
#: and 12288 pixels, benchmarks/results/busi_smaller_image.json), filters 8 doubling to 64, at most 4 poolings (5
#: levels), no test-time flips, sliding-window overlap 0.25 with constant blending (a Gaussian map is rebuilt for
#: every call, a cost per frame that buys nothing when the frame is one window) (measured in benchmarks/stream.py,
#: with the Dice it costs).
PRESETS: dict[str, Preset] = {
    "default": Preset("nnU-Net's rules within the device budget"),
    "fast": Preset(
        "real time: the whole image resized to about 8192 pixels in one window, filters 8-64, 5 levels, "
        "no test-time flips",
        patch_voxels={2: 256 * 256, 3: 32 * 48 * 32},
        step_voxels={2: 4 * 256 * 256, 3: 4 * 32 * 48 * 32},
        base_filters=8,
        max_filters={2: 64, 3: 64},
        max_pools=4,
        test_time_flips=False,
        overlap=0.25,
        window_mode="constant",
        image_pixels={2: 8192},
    ),
}


@dataclass
class NormalisationPlan(Plan):
    """``ct`` (clip + foreground z-score, per channel), ``zscore`` or ``zscore_per_channel`` (per image)."""

    scheme: str
    clip: list[list[float]] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass
class FieldOfViewPlan(Plan):
    """Scale and colour normalised by the field of view: ``diameter`` is the training FOVs' median extent
    ``[rows, columns]`` in pixels, which every image's FOV is resampled to. With it, a per-image normalisation scheme
    becomes per-channel normal scores inside the FOV (``fundus.standardise``)."""

    diameter: list[float]
    rule: str = "FOV: brightest channel above the dark surround, largest component, holes filled"


@dataclass
class NetworkPlan(Plan):
    """MONAI ``DynUNet`` keyword arguments."""

    spatial_dims: int
    in_channels: int
    out_channels: int
    kernel_size: list[list[int]]
    strides: list[list[int]]
    upsample_kernel_size: list[list[int]]
    filters: list[int]
    norm_name: list[Any] = field(default_factory=lambda: ["instance", {"affine": True}])
    act_name: list[Any] = field(default_factory=lambda: ["leakyrelu", {"inplace": True, "negative_slope": 0.01}])
    res_block: bool = False

    def kwargs(self) -> dict[str, Any]:
        return self.to_json()


@dataclass
class OptimizerPlan(Plan):
    name: str = "AdamW"
    lr: float = 2e-3
    weight_decay: float = 3e-5
    schedule: str = "poly"
    warmup_iterations: int = 50

    def describe(self) -> str:
        return (
            f"{self.name}(lr={self.lr:g}, weight_decay={self.weight_decay:g}), {self.warmup_iterations} warm-up "
            f"iterations, {self.schedule} 0.9 decay"
        )


@dataclass
class SlidingWindowPlan(Plan):
    overlap: float = 0.5
    mode: str = "gaussian"


@dataclass
class SegmentationPlan(Plan):
    """Everything training decided from the data; stored in ``bundle.json`` and used by predict and evaluate."""

    spatial_dims: int
    target_spacing: list[float]
    resample: bool
    normalisation: NormalisationPlan
    patch_size: list[int]
    batch_size: int
    network: NetworkPlan
    optimizer: OptimizerPlan
    sliding_window: SlidingWindowPlan
    iterations_per_epoch: int
    epochs: int
    time_budget_s: float | None
    loss: str = "DiceCELoss(to_onehot_y, softmax, include_background=False, batch=True): Dice + cross-entropy"
    foreground_oversampling: float = 1 / 3
    augmentation: str = "cpu"
    validate_every: int = 10
    test_time_flips: bool = True
    mixed_precision: bool = False
    cpu_bf16: bool = False
    nsd_tolerance: float = 1.0
    device_budget: str = "cpu"
    field_of_view: FieldOfViewPlan | None = None
    #: The speed/accuracy preset the plan was made with (:data:`PRESETS`): ``default`` or ``fast``.
    preset: str = "default"
    #: 2D only: every image (training and inference) is resized, aspect kept, to about this many pixels after any
    #: resampling, and predictions are resized back to the image's own grid (``None``: no such resize).
    image_pixels: int | None = None
    #: Spatial axes (0-based, of the image without its channel axis) that training flips at random and that test-time
    #: mirroring and the flip uncertainty flip (``None``: every axis, nnU-Net's rule). ``[1]`` on a 2D ultrasound
    #: image flips left-right only: the transducer stays on top, so depth (acoustic shadowing) keeps its direction.
    flip_axes: list[int] | None = None
    #: The largest in-plane rotation of training's random affine, in degrees (``None``: 180 in 2D, 30 in 3D).
    max_rotation_degrees: float | None = None

    def mirrored_axes(self) -> list[int]:
        """The spatial axes flipped in training and at test time (every axis unless ``flip_axes`` says fewer)."""
        return list(range(self.spatial_dims)) if self.flip_axes is None else [int(a) for a in self.flip_axes]

    def with_overrides(self, overrides: Mapping[str, Any]) -> SegmentationPlan:
        """A copy with ``overrides`` applied key by key (nested plans merged by key); an unknown key is an error."""
        return _apply(self, overrides, "")


def _apply(plan: Any, overrides: Mapping[str, Any], prefix: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(plan)}
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in fields:
            raise MedsightError(f"unknown plan override '{prefix}{key}' (known: {', '.join(sorted(fields))})")
        current = getattr(plan, key)
        if isinstance(current, Plan) and isinstance(value, Mapping):
            changes[key] = _apply(current, value, f"{prefix}{key}.")
        else:
            changes[key] = copy.deepcopy(value)
    return dataclasses.replace(plan, **changes)


def read_overrides(source: Path | None) -> dict[str, Any]:
    """Plan overrides from ``source`` (a JSON file) or else ``$MEDSIGHT_SEG_PLAN`` (a JSON file); none if neither.
    A preset's name (``--plan fast``) stands for ``{"preset": name}`` when no file of that name exists."""
    chosen: str | Path | None = source if source is not None else os.environ.get(PLAN_ENV)
    if chosen is None or str(chosen) == "":
        return {}
    path = Path(chosen)
    if str(chosen) in PRESETS and not path.exists():
        return {"preset": str(chosen)}
    try:
        loaded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MedsightError(f"cannot read plan overrides ({exc})", path) from exc
    if not isinstance(loaded, dict):
        raise MedsightError("plan overrides must be a JSON object", path)
    return loaded


def whole_image_factor(shape: Sequence[float], pixels: int) -> float:
    """The factor that scales ``shape``, aspect kept, to ``pixels`` pixels (the plan's ``image_pixels``): applied to
    the median shape the patch is planned on, and to every image (:func:`whole_image_shape`)."""
    return math.sqrt(pixels / float(np.prod(shape)))


def whole_image_shape(shape: Sequence[int], pixels: int) -> list[int]:
    """The shape an image of ``shape`` is resized to under ``image_pixels`` = ``pixels``."""
    factor = whole_image_factor(shape, pixels)
    return [max(1, round(s * factor)) for s in shape]


def topology_for(
    patch: Sequence[int], spacing: Sequence[float], max_pools: int = MAX_POOLS
) -> dict[str, list[list[int]]]:
    """nnU-Net's rule, simplified: kernels and strides per level from the patch size and spacing."""
    size = np.asarray(patch, dtype=float)
    sp = np.asarray(spacing, dtype=float)
    kernels: list[list[int]] = [[3 if s / sp.min() <= 2 else 1 for s in sp]]
    strides: list[list[int]] = [[1] * len(patch)]
    for _ in range(max_pools):
        ratio = sp / sp.min()
        can = (size / 2 >= MIN_FEATURE_MAP) & (ratio <= 2)
        if not can.any():
            break
        stride = [2 if c else 1 for c in can]
        strides.append(stride)
        size = size / np.asarray(stride)
        sp = sp * np.asarray(stride)
        kernels.append([3 if s / sp.min() <= 2 else 1 for s in sp])
    return {"kernels": kernels, "strides": strides}


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 matrix maths natively (AVX-512 BF16 or AMX): then bf16 autocast halves a step."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # an older torch without the probes
        return False


class SegmentationPlanner:
    """Turns a data fingerprint into a :class:`SegmentationPlan`, one overridable ``determine_*`` step per decision.

    ``overrides`` fix a decision by key before later steps use it (a patch override re-derives the topology and
    batch from it); keys that no step decides are applied at the end; an unknown key is an error naming it.
    """

    #: Keys decided by a step (the override is read there); any other known key is applied after planning.
    STEP_KEYS = (
        "preset",
        "target_spacing",
        "resample",
        "normalisation",
        "patch_size",
        "batch_size",
        "network",
        "field_of_view",
        "image_pixels",
        "flip_axes",
        "max_rotation_degrees",
    )

    def __init__(self, fp: Mapping[str, Any], device: str = "cpu", overrides: Mapping[str, Any] | None = None):
        self.fp = fp
        self.device = device
        self.kind = "cuda" if device.startswith("cuda") else "cpu"
        self.budget = BUDGETS[self.kind]
        self.dims = int(fp["spatial_dims"])
        self.overrides = dict(overrides or {})
        self.preset = PRESETS["default"]
        known = {f.name for f in dataclasses.fields(SegmentationPlan)}
        unknown = sorted(set(self.overrides) - known)
        if unknown:
            raise MedsightError(
                f"unknown plan override(s) {', '.join(map(repr, unknown))} (known: {', '.join(sorted(known))})"
            )

    # --- steps -------------------------------------------------------------------------------------------------
    def determine_preset(self) -> str:
        """``default`` unless overridden (``{"preset": "fast"}``); the later steps read its budget."""
        name = str(self.overrides.get("preset", "default"))
        if name not in PRESETS:
            raise MedsightError(f"unknown plan preset {name!r} (known: {', '.join(sorted(PRESETS))})")
        return name

    def determine_test_time(self) -> tuple[bool, SlidingWindowPlan]:
        """Test-time flips and the sliding window's overlap, as the preset says."""
        return self.preset.test_time_flips, SlidingWindowPlan(overlap=self.preset.overlap, mode=self.preset.window_mode)

    def determine_orientation(self) -> tuple[list[int] | None, float | None]:
        """The axes training flips and the largest rotation it draws: every axis and nnU-Net's range (``None``,
        ``None``) unless overridden (``flip_axes``, ``max_rotation_degrees``); a malformed override is refused."""
        axes = self.overrides.get("flip_axes")
        degrees = self.overrides.get("max_rotation_degrees")
        if axes is not None and (
            not isinstance(axes, list)
            or not all(type(a) is int and 0 <= a < self.dims for a in axes)
            or len(set(axes)) != len(axes)
        ):
            raise MedsightError(
                f"plan override flip_axes={axes!r}: a list of distinct spatial axes, each from 0 to {self.dims - 1}"
            )
        if degrees is not None and (type(degrees) not in (int, float) or not 0 <= degrees <= 180):
            raise MedsightError(f"plan override max_rotation_degrees={degrees!r}: a number of degrees from 0 to 180")
        return axes, None if degrees is None else float(degrees)

    def determine_target_spacing(self) -> list[float]:
        return [float(v) for v in self.overrides.get("target_spacing", self.fp["spacing_median"])]

    def determine_resampling(self, spacing: Sequence[float]) -> bool:
        if "resample" in self.overrides:
            return bool(self.overrides["resample"])
        return not np.allclose(self.fp["spacing_min"], spacing, rtol=0.01) or not np.allclose(
            self.fp["spacing_max"], spacing, rtol=0.01
        )

    def determine_image_pixels(self) -> int | None:
        """The pixel count every 2D image is resized to (the preset's, or ``image_pixels`` overridden; ``null``
        turns it off); ``None`` for 3D."""
        if "image_pixels" in self.overrides:
            given = self.overrides["image_pixels"]
            if given is None:
                return None
            if self.dims != 2 or isinstance(given, bool) or not isinstance(given, int) or given < 64:
                raise MedsightError(
                    f"plan override image_pixels={given!r}: a whole number of pixels, at least 64, for 2D images only"
                )
            return given
        return (self.preset.image_pixels or {}).get(self.dims) if self.dims == 2 else None

    def determine_median_shape(
        self, spacing: Sequence[float], resample: bool, image_pixels: int | None = None
    ) -> np.ndarray:
        shape = np.asarray(self.fp["shape_median"], dtype=float)
        if resample:
            shape = shape * np.asarray(self.fp["spacing_median"]) / np.asarray(spacing)
        if image_pixels:
            shape = shape * whole_image_factor(shape.tolist(), image_pixels)
        return shape

    def determine_normalisation(self) -> NormalisationPlan:
        if "normalisation" in self.overrides:
            return NormalisationPlan.from_json(self.overrides["normalisation"])
        modality = str(self.fp["modality"])
        if modality == "CT":
            stats = self.fp["foreground_intensity"]
            return NormalisationPlan(
                "ct",
                clip=[[c["p00_5"], c["p99_5"]] for c in stats],
                mean=[c["mean"] for c in stats],
                std=[max(c["std"], 1e-6) for c in stats],
            )
        return NormalisationPlan("zscore_per_channel" if modality == "RGB" else "zscore")

    def determine_field_of_view(self) -> FieldOfViewPlan | None:
        """Normalise by the FOV when the fingerprint found one in every training image (``null`` turns it off)."""
        if "field_of_view" in self.overrides:
            given = self.overrides["field_of_view"]
            return None if given is None else FieldOfViewPlan.from_json(given)
        fov = self.fp.get("field_of_view")
        return FieldOfViewPlan([float(v) for v in fov["diameter_median"]]) if self.dims == 2 and fov else None

    def determine_patch_size(self, shape: np.ndarray, spacing: Sequence[float]) -> list[int]:
        if "patch_size" in self.overrides:
            return [int(v) for v in self.overrides["patch_size"]]
        limit = (self.preset.patch_voxels or self.budget.patch_voxels)[self.dims]
        patch = np.maximum(shape.copy(), 8.0)
        while np.prod(patch) > limit:
            # shrink the axis that is largest in millimetres (nnU-Net shrinks relative to the median shape)
            axis = int(np.argmax(patch * np.asarray(spacing) / np.asarray(spacing).min()))
            patch[axis] = max(8.0, patch[axis] * 0.9)
        topo = topology_for([int(p) for p in patch], spacing, self.preset.max_pools)
        factors = np.prod(np.asarray(topo["strides"]), axis=0)
        out = [int(math.ceil(p / f) * f) for p, f in zip(patch, factors, strict=True)]
        while np.prod(out) > limit * 1.25:  # rounding up may overshoot; step the biggest axis down once more
            axis = int(np.argmax(out))
            out[axis] = max(int(factors[axis]), out[axis] - int(factors[axis]))
        return out

    def determine_batch_size(self, patch: Sequence[int], shape: np.ndarray) -> int:
        if "batch_size" in self.overrides:
            return int(self.overrides["batch_size"])
        voxels = int(np.prod(patch))
        data_voxels = float(self.fp["n_cases"]) * float(np.prod(shape))  # nnU-Net: a batch ≤ 5% of the data set
        step = (self.preset.step_voxels or self.budget.step_voxels)[self.dims]
        return max(2, min(int(step // voxels), int(0.05 * data_voxels // voxels)))

    def determine_network(self, patch: Sequence[int], spacing: Sequence[float]) -> NetworkPlan:
        topology = topology_for(patch, spacing, self.preset.max_pools)
        levels = len(topology["strides"])
        cap = (self.preset.max_filters or self.budget.max_filters)[self.dims]
        base = self.preset.base_filters or self.budget.base_filters
        network = NetworkPlan(
            spatial_dims=self.dims,
            in_channels=int(self.fp["n_channels"]),
            out_channels=len(self.fp["class_frequency"]),
            kernel_size=topology["kernels"],
            strides=topology["strides"],
            upsample_kernel_size=topology["strides"][1:],
            filters=[min(base * 2**k, cap) for k in range(levels)],
        )
        return _apply(network, self.overrides.get("network", {}), "network.")

    def determine_schedule(self) -> tuple[int, int, float | None]:
        """Iterations per epoch, epochs, and the time budget (seconds, or None for no limit)."""
        b = self.budget
        return b.iterations_per_epoch, b.epochs, b.time_budget_s

    def determine_precision(self) -> tuple[bool, bool]:
        """(CUDA fp16 autocast, CPU bf16 autocast): mixed precision wherever the hardware runs it natively."""
        return self.kind == "cuda", self.kind == "cpu" and cpu_has_bf16()

    # --- the whole plan ----------------------------------------------------------------------------------------
    def plan(self) -> SegmentationPlan:
        preset = self.determine_preset()
        self.preset = PRESETS[preset]
        flips, window = self.determine_test_time()
        spacing = self.determine_target_spacing()
        resample = self.determine_resampling(spacing)
        image_pixels = self.determine_image_pixels()
        flip_axes, max_rotation = self.determine_orientation()
        shape = self.determine_median_shape(spacing, resample, image_pixels)
        patch = self.determine_patch_size(shape, spacing)
        iterations, epochs, budget = self.determine_schedule()
        amp, bf16 = self.determine_precision()
        plan = SegmentationPlan(
            spatial_dims=self.dims,
            target_spacing=spacing,
            resample=bool(resample),
            normalisation=self.determine_normalisation(),
            patch_size=patch,
            batch_size=self.determine_batch_size(patch, shape),
            network=self.determine_network(patch, spacing),
            optimizer=OptimizerPlan(),
            sliding_window=window,
            iterations_per_epoch=iterations,
            epochs=epochs,
            time_budget_s=budget,
            augmentation=self.kind,
            mixed_precision=amp,
            cpu_bf16=bf16,
            device_budget=self.kind,
            field_of_view=self.determine_field_of_view(),
            test_time_flips=flips,
            preset=preset,
            image_pixels=image_pixels,
            flip_axes=flip_axes,
            max_rotation_degrees=max_rotation,
        )
        rest = {k: v for k, v in self.overrides.items() if k not in self.STEP_KEYS}
        return plan.with_overrides(rest)


def make_plan(
    fp: Mapping[str, Any], device: str = "cpu", overrides: Mapping[str, Any] | None = None
) -> SegmentationPlan:
    """The plan of :class:`SegmentationPlanner` for ``fp`` on ``device`` with ``overrides``."""
    return SegmentationPlanner(fp, device, overrides).plan()


def describe(plan: SegmentationPlan, fp: Mapping[str, Any]) -> list[str]:
    """The plan in plain words, one decision per line, each with its reason."""
    net = plan.network
    norm = plan.normalisation.scheme
    why_norm = {
        "ct": "CT: intensities are clipped, then z-scored (planned: the 0.5-99.5 percentiles, mean and standard "
        "deviation of the foreground; a plan override may fix them, e.g. the lung window)"
        + _ct_values(plan.normalisation),
        "zscore": f"modality {fp['modality']}: each image is z-scored on its own "
        "(MRI and ultrasound intensities have no fixed scale)",
        "zscore_per_channel": "colour images: each channel of each image is z-scored on its own",
    }.get(norm, norm)
    if plan.field_of_view is not None:
        why_norm = (
            "colour images seen through a round aperture (a field of view in every training image): each channel's "
            "pixels inside the field of view become the normal scores of their ranks (unchanged by a camera's colour "
            "curve), 0 outside; every image is resampled so that its field of view is "
            f"{_x(plan.field_of_view.diameter)} px (the training median) and nothing outside it is segmented"
        )
    precision = ", mixed precision (fp16)" if plan.mixed_precision else ""
    precision += ", bf16 autocast on the CPU" if plan.cpu_bf16 else ""
    return [
        f"data: {fp['n_cases']} training cases, {fp['spatial_dims']}D, {fp['n_channels']} channel(s), median shape "
        f"{_x(fp['shape_median'])}, median spacing {_x(fp['spacing_median'])}",
        "spacing: "
        + (
            f"resample to {_x(plan.target_spacing)} (the median spacing)"
            if plan.resample
            else f"keep {_x(plan.target_spacing)}: every case already has it, no resampling"
        ),
        f"normalisation: {why_norm}",
        *(
            [
                f"scale: every image is resized, aspect kept, to about {plan.image_pixels} pixels (whole image in "
                "view of the patch), predictions resized back to the image's own grid"
            ]
            if plan.image_pixels
            else []
        ),
        f"patch: {_x(plan.patch_size)} (the median image shape within a {plan.device_budget} budget, a multiple "
        f"of the network's downsampling), batch {plan.batch_size}",
        f"network: DynUNet with {len(net.strides)} levels, strides {net.strides[1:]}, filters {net.filters}, "
        f"instance norm, leaky ReLU ({net.in_channels} in, {net.out_channels} classes)",
        f"loss: Dice + cross-entropy; {plan.foreground_oversampling:.0%} of patches centred on foreground; "
        f"{plan.augmentation} augmentation" + _orientation_words(plan),
        f"training: {plan.iterations_per_epoch} iterations per epoch, up to {plan.epochs} epochs"
        + (f" or {plan.time_budget_s:.0f} s" if plan.time_budget_s else "")
        + f", {plan.optimizer.name} lr {plan.optimizer.lr:g}"
        + precision,
        f"inference: sliding window, overlap {plan.sliding_window.overlap}, {plan.sliding_window.mode} blending"
        + (", test-time flips" if plan.test_time_flips else ""),
        f"preset: {plan.preset} ({PRESETS[plan.preset].description if plan.preset in PRESETS else 'unknown'})",
    ]


def _orientation_words(plan: SegmentationPlan) -> str:
    """How training's flips and rotations are bounded, when a plan bounds them (nothing for nnU-Net's rule)."""
    words = []
    if plan.flip_axes is not None:
        axes = ", ".join(str(a) for a in plan.flip_axes) or "none"
        words.append(f"flips along axis {axes} only (the same at test time)")
    if plan.max_rotation_degrees is not None:
        words.append(f"rotation within ±{plan.max_rotation_degrees:g}°")
    return f" ({'; '.join(words)})" if words else ""


def _ct_values(norm: NormalisationPlan) -> str:
    """The clip range and statistics a ``ct`` normalisation uses (planned, or fixed by an override such as the lung
    window of ``medsight.transforms.lung_window_normalisation``)."""
    if norm.clip is None or norm.mean is None or norm.std is None:
        return ""
    parts = [
        f"[{lo:g}, {hi:g}], mean {m:g}, std {s:g}"
        for (lo, hi), m, s in zip(norm.clip, norm.mean, norm.std, strict=False)
    ]
    return ": " + "; ".join(parts)


def _x(values: Sequence[float]) -> str:
    return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
