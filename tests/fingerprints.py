"""Data fingerprints the segmentation planner tests plan from, written once (importable as ``fingerprints``, as
``needs`` is: ``tests/`` is on the path)."""

from __future__ import annotations

from typing import Any

#: The fingerprint of BUSI's training images, as the planner sees it.
BUSI_LIKE: dict[str, Any] = {
    "n_cases": 468,
    "spatial_dims": 2,
    "n_channels": 1,
    "modality": "US",
    "spacing_median": [1.0, 1.0],
    "spacing_min": [1.0, 1.0],
    "spacing_max": [1.0, 1.0],
    "shape_median": [337.0, 400.0],
    "class_frequency": {"background": 0.92, "lesion": 0.08},
    "foreground_intensity": [{"mean": 60.0, "std": 30.0, "p00_5": 5.0, "p99_5": 200.0, "min": 0.0, "max": 255.0}],
}
