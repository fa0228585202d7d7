"""An image file that holds no pixels (an ``.npy`` of shape (0, 32) from a failed export) is named with the problem;
it once reached MONAI's ScaleIntensity and ended in a traceback."""

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
