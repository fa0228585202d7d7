"""The contract every task implements: typed options, typed plans, and one protocol for train/evaluate/load.

A task is a package ``medsight.tasks.<name>`` whose modules are named by phase (``data``, ``plan``, ``train``,
``evaluate``, ``predict``, ``card``) and whose ``__init__`` exposes ``TASK``, an object satisfying :class:`Task`.
The CLI, the runtime and (later) the service only ever talk to a task through this protocol, so they cannot
disagree about what a task takes or returns.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from medsight.errors import MedsightError

if TYPE_CHECKING:
    from medsight.runtime.results import Result
    from medsight.training.bundle import Bundle

OptionsT = TypeVar("OptionsT", bound="TrainOptions")
P = TypeVar("P", bound="Plan")


#: Options whose ``medsight train`` flag is not their name with dashes.
FLAG_SPELLINGS = {"time_budget_s": "--time-budget"}
#: Field metadata of an option the API takes but the command line does not offer (never listed as a flag).
API_ONLY = {"flag": False}


#: The smallest square input the 2D networks with a 32-fold downsampling take (detection, outcome).
MIN_IMAGE_SIZE = 32


def check_image_size(size: int | None) -> None:
    """``--image-size``, when given, must be a side the network can downsample."""
    if size is not None and size < MIN_IMAGE_SIZE:
        raise MedsightError(f"--image-size must be at least {MIN_IMAGE_SIZE} (got {size})")


def _flag(name: str) -> str:
    """The command-line flag of option ``name``, as ``medsight train`` spells it."""
    return FLAG_SPELLINGS.get(name, "--" + name.replace("_", "-"))


@dataclasses.dataclass(kw_only=True)
class TrainOptions:
    """Options every task takes. A task subclasses this with the options only it takes.

    ``None`` means "the task's planned default": the plan, made from the data, fills it in.
    """

    seed: int = 0
    epochs: int | None = None
    time_budget_s: float | None = None
    batch_size: int | None = None
    lr: float | None = None

    def __post_init__(self) -> None:
        """Refuse what no task can train with, by flag, before any data are read."""
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise MedsightError(f"{_flag(name)} must be at least 1 (got {value})")
        for name in ("time_budget_s", "lr"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):  # inf: NaN weights or epochs
                raise MedsightError(f"{_flag(name)} must be a positive finite number (got {value})")

    @classmethod
    def from_mapping(cls: type[OptionsT], given: Mapping[str, Any], task: str) -> OptionsT:
        """Build the options from ``given``; an option the task does not take is an error naming it."""
        fields = dataclasses.fields(cls)
        known = {f.name for f in fields}
        unknown = sorted(k for k in given if k not in known)
        if unknown:
            takes = ", ".join(sorted(_flag(f.name) for f in fields if f.metadata.get("flag", True)))
            raise MedsightError(
                f"the {task} task does not take {', '.join(_flag(k) for k in unknown)} (it takes {takes})"
            )
        return cls(**dict(given))

    def given(self) -> dict[str, Any]:
        """The options that were set (not left to the plan), for the bundle's record."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


class Plan:
    """A typed plan (mixin for dataclasses): what training decided from the data, stored in ``bundle.json``.

    ``to_json``/``from_json`` round-trip exactly; a stored plan with a missing or unknown key is an error,
    so a hand-edited or foreign plan is caught when the bundle is loaded, not deep inside a run.
    """

    def to_json(self) -> dict[str, Any]:
        assert dataclasses.is_dataclass(self)
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls: type[P], data: Mapping[str, Any], where: str | Path | None = None) -> P:
        assert dataclasses.is_dataclass(cls)
        if not isinstance(data, Mapping):
            raise MedsightError(f"the {cls.__name__} must be a JSON object", where)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        missing = sorted(
            n
            for n, f in fields.items()
            if n not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        if unknown or missing:
            parts = ([f"unknown key(s) {unknown}"] if unknown else []) + ([f"missing {missing}"] if missing else [])
            raise MedsightError(f"{cls.__name__}: " + "; ".join(parts), where)
        hints = typing.get_type_hints(cls)
        values = {k: _typed(hints.get(k, Any), v) for k, v in data.items()}
        return cls(**values)


def _plain(value: Any) -> Any:
    if isinstance(value, Plan):
        return value.to_json()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _typed(hint: Any, value: Any) -> Any:
    """Nested plans come back as their dataclass; everything else stays as JSON gave it."""
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    options = typing.get_args(hint) if union else (hint,)
    for option in options:
        if isinstance(option, type) and issubclass(option, Plan) and isinstance(value, Mapping):
            return option.from_json(value)
    return value


@runtime_checkable
class Model(Protocol):
    """A bundle loaded once (ONNX Runtime session, preprocessing, calibration, operating point), run many times."""

    bundle: Bundle

    def predict(self, inputs: Sequence[Path], explain: bool = False) -> list[Result]:
        """One typed result per input, in order. Reads and checks every input before running any."""
        ...

    def save(self, results: Sequence[Result], folder: Path) -> None:
        """Write the artefacts of ``results`` (heatmaps, masks, DICOM SR/SEG/SC) into ``folder``.

        ``predictions.json`` is written by :func:`medsight.runtime.write_predictions`, which calls this.
        """
        ...


@runtime_checkable
class Task(Protocol):
    """One task: how to recognise its data, train a bundle, evaluate it into a card, and load it to predict."""

    name: str
    Options: type[TrainOptions]

    def recognises(self, spec: str) -> bool:
        """Whether ``spec`` (a data source) is this task's kind of data, for ``medsight train`` without --task."""
        ...

    def train(self, data: str, out: Path, options: TrainOptions) -> dict[str, Any]:
        """Train on ``data``'s train split, select/calibrate on validation, write the bundle to ``out``."""
        ...

    def evaluate(self, bundle: Path, data: str, split: str, out: Path, n_boot: int) -> dict[str, Any]:
        """Score ``bundle`` on ``split`` of ``data``: metrics.json (95% CIs), card.html and card.json in ``out``."""
        ...

    def load(self, bundle: Bundle) -> Model:
        """The warm model of a bundle whose ``task`` is this one."""
        ...


class PackageTask:
    """A :class:`Task` whose phases are modules of its package (``data``, ``train``, ``evaluate``, ``predict``),
    imported when first used so that asking a task whether it recognises a source stays cheap.

    A subclass names the task, its options class and the model class in its ``predict`` module; the phase modules
    provide ``data.recognises(spec)``, ``train.train(data, out, options)``,
    ``evaluate.evaluate(bundle, data, split, out, n_boot)`` and ``predict.<model_class>(bundle)``.
    """

    name: str
    Options: type[TrainOptions]
    model_class: str

    def phase(self, module: str) -> Any:
        import importlib

        return importlib.import_module(f"medsight.tasks.{self.name}.{module}")

    def recognises(self, spec: str) -> bool:
        return bool(self.phase("data").recognises(spec))

    def options(self, options: TrainOptions) -> TrainOptions:
        """``options`` as this task's options class (common options convert; anything else is refused by name)."""
        if isinstance(options, self.Options):
            return options
        return self.Options.from_mapping(options.given(), self.name)

    def train(self, data: str, out: Path, options: TrainOptions) -> dict[str, Any]:
        result: dict[str, Any] = self.phase("train").train(data, Path(out), self.options(options))
        return result

    def evaluate(self, bundle: Path, data: str, split: str, out: Path, n_boot: int) -> dict[str, Any]:
        result: dict[str, Any] = self.phase("evaluate").evaluate(Path(bundle), data, split, Path(out), n_boot)
        return result

    def load(self, bundle: Bundle) -> Model:
        model: Model = getattr(self.phase("predict"), self.model_class)(bundle)
        return model
