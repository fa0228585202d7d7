"""Image files that hold no usable pixels (an empty array from a failed export, NaN or infinite values) are named
with the problem; they once reached MONAI's transforms, a traceback or p = nan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsight.errors import MedsightError
from medsight.io.images import read_image


@pytest.mark.parametrize("shape", [(0, 32), (32, 0), (2, 0, 16)])
def test_an_empty_array_is_one_clear_error(shape: tuple[int, ...], tmp_path: Path) -> None:
    path = tmp_path / "empty.npy"
    np.save(path, np.zeros(shape, np.float32))
    with pytest.raises(MedsightError, match="an empty image") as caught:
        read_image(path)
    assert caught.value.path == str(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_pixels_are_named(bad: float, tmp_path: Path) -> None:
    """NaN pixels (a float NIfTI's background) once gave p = nan and a predictions.json that was not JSON."""
    image = np.ones((16, 16), np.float32)
    image[:4] = bad
    path = tmp_path / "nan.npy"
    np.save(path, image)
    with pytest.raises(MedsightError, match="64 of 256 pixel values are NaN or infinite") as caught:
        read_image(path)
    assert caught.value.path == str(path)
