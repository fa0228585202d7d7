"""Rebuild a bundle's network from the plan recorded in bundle.json."""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

#: Only networks from these packages are rebuilt from a bundle (a bundle is data, not code).
TRUSTED_PREFIXES = ("monai.networks.nets.", "monai.apps.detection.networks.", "medsight.", "torchvision.models.")


def build_network(spec: dict[str, Any]) -> nn.Module:
    """``spec`` is ``{"name": "<module>.<Class>", "kwargs": {...}}``."""
    name = str(spec["name"])
    if not name.startswith(TRUSTED_PREFIXES):
        raise ValueError(f"network {name} is not from a trusted package")
    module_name, _, cls_name = name.rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    model = cls(**spec.get("kwargs", {}))
    assert isinstance(model, nn.Module)
    return model
