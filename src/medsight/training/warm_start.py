"""Fine-tuning from an existing bundle (``medsight train --init BUNDLE``): checks, weights and the parent record.

Why a module of its own: every task that fine-tunes must refuse the same things the same way (another task,
other labels, another network) with one line naming the parent bundle and the mismatch, and must record the same
parent identity, so that ``medsight compare`` and the review statistics can tell which model a new one came from.
The parent is identified by the checksum the service's results carry (IHE AIR provenance, ``bundle-sha256``): a
reader's verdict names the bundle it judged by that checksum, and the fine-tuned bundle names its parent by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsight.errors import MedsightError
from medsight.training.bundle import WEIGHTS, Bundle, load_bundle


@dataclass(frozen=True)
class Parent:
    """The bundle a run fine-tunes from, loaded and identified once."""

    bundle: Bundle
    checksum: str

    @property
    def path(self) -> Path:
        return self.bundle.path

    def record(self) -> dict[str, Any]:
        """What the new ``bundle.json`` keeps as ``parent`` (schema: ``properties.parent``)."""
        meta = self.bundle.meta
        return {
            "checksum": self.checksum,
            "path": str(self.path.resolve()),
            "source": str(meta.get("data", {}).get("source", "")),
            "created": str(meta.get("created", "")),
            "task": self.bundle.task,
        }

    def fail(self, problem: str) -> MedsightError:
        """An error naming the parent bundle: ``BUNDLE: cannot fine-tune from this bundle: <problem>``."""
        return MedsightError(f"cannot fine-tune from this bundle: {problem}", self.path)


def open_parent(path: str | Path, task: str) -> Parent:
    """Load ``path`` as the parent of a ``task`` run; another task, or a bundle that does not load, is an error.

    The weights are read here too, before any data are read or any epoch is run, so damaged or NaN weights are
    refused at once rather than after the data are prepared."""
    from medsight.serving.provenance import bundle_checksum  # the checksum the service's results carry

    bundle = load_bundle(path)
    parent = Parent(bundle, bundle_checksum(bundle.path))
    if bundle.task != task:
        raise parent.fail(f"it is a {bundle.task} bundle and this run trains a {task} model")
    read_weights(parent)
    return parent


def read_weights(parent: Parent) -> dict[str, torch.Tensor]:
    """The parent's state dict; unreadable weights (any way torch.load fails on a damaged file: UnpicklingError,
    KeyError, EOFError, RuntimeError...) or weights holding NaN or infinite values are refused naming the bundle."""
    try:
        state = torch.load(parent.path / WEIGHTS, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise parent.fail(f"cannot read its weights {WEIGHTS} ({type(exc).__name__}: {first})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise parent.fail(f"its {WEIGHTS} is not a state dict of tensors")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise parent.fail(f"its weights hold NaN or infinite values ({bad[0]}): it diverged, pick another bundle")
    return state


def check_labels(parent: Parent, label_names: list[str]) -> None:
    """The new data's labels must be the parent's, in the same order (the output layer is reused as is)."""
    if list(label_names) != parent.bundle.label_names:
        raise parent.fail(f"its labels are {parent.bundle.label_names}, the data's are {list(label_names)}")


def check_network(parent: Parent, name: str, kwargs: dict[str, Any]) -> None:
    """The planned network must be the parent's: same class and the same constructor arguments."""
    theirs = parent.bundle.meta["network"]
    if theirs["name"] != name:
        raise parent.fail(f"its network is {theirs['name']}, this run plans {name}")
    keys = sorted(set(theirs["kwargs"]) | set(kwargs))
    diffs = [
        f"{k}: bundle {theirs['kwargs'].get(k)!r}, this run {kwargs.get(k)!r}"
        for k in keys
        if _plain(theirs["kwargs"].get(k)) != _plain(kwargs.get(k))
    ]
    if diffs:
        raise parent.fail("its network differs from the one planned for this data (" + "; ".join(diffs) + ")")


def load_weights(parent: Parent, model: nn.Module) -> None:
    """Copy the parent's weights into ``model`` (strict: every tensor present and of the same shape)."""
    state = read_weights(parent)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else str(exc)
        raise parent.fail(f"its weights do not fit the planned network ({detail})") from exc


def _plain(value: Any) -> Any:
    """Tuples and lists compare alike (JSON gives lists back)."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value
