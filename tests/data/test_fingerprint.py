"""Content hashes recognise the same pixels under any name or format, and the leakage check refuses, flags or
warns as documented, with counts and indices but never a name."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsight.data.fingerprint import HASH_HEX, case_hash, case_hashes, check_leakage, training_record
from medsight.errors import MedsightError
from medsight.io.images import read_image


def test_the_same_pixels_hash_alike_in_any_file_format_and_name(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(24, 30)).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "patient_scan.png")
    Image.fromarray(pixels).save(tmp_path / "renamed copy.tif")
    np.save(tmp_path / "as_uint8.npy", pixels)
    np.save(tmp_path / "as_float.npy", pixels.astype(np.float64))
    hashes = {p.name: case_hash(read_image(p)) for p in sorted(tmp_path.iterdir())}
    assert len(set(hashes.values())) == 1, hashes
    assert len(next(iter(hashes.values()))) == HASH_HEX
    assert case_hash(pixels[None]) == hashes["patient_scan.png"]  # the raw (1, H, W) uint8 array too


def test_different_pixels_or_shape_hash_differently() -> None:
    a = np.arange(24, dtype=np.float32).reshape(1, 4, 6)
    b = a.copy()
    b[0, 0, 0] += 1
    assert case_hash(a) != case_hash(b)
    assert case_hash(a) != case_hash(a.reshape(1, 6, 4))  # the same bytes in another shape
    assert case_hashes(np.stack([a, b])) == [case_hash(a), case_hash(b)]


def _bundle_data(train: list[np.ndarray], val: list[np.ndarray]) -> dict[str, object]:
    return {"source": "x", "case_hashes": training_record(case_hashes(train), case_hashes(val))}


def test_test_split_with_a_training_case_is_refused_naming_count_and_index() -> None:
    rng = np.random.default_rng(1)
    train = [rng.random((1, 8, 8)) for _ in range(5)]
    val = [rng.random((1, 8, 8)) for _ in range(2)]
    test = [rng.random((1, 8, 8)), train[3].copy(), rng.random((1, 8, 8)), val[1].copy()]
    with pytest.raises(MedsightError) as err:
        check_leakage(_bundle_data(train, val), case_hashes(test), "test", "external_site")
    message = str(err.value)
    assert "\n" not in message and message.startswith("external_site: refusing")
    assert "2 of 4 test case(s)" in message and "case indexes 1, 3" in message
    assert case_hash(train[3]) in message


def test_honest_test_split_is_verified_and_val_is_compared_with_train_only() -> None:
    rng = np.random.default_rng(2)
    train = [rng.random((1, 8, 8)) for _ in range(5)]
    val = [rng.random((1, 8, 8)) for _ in range(2)]
    report = check_leakage(_bundle_data(train, val), case_hashes([rng.random((1, 8, 8))]), "test")
    assert report["status"].startswith("verified") and report["n_seen"] == 0 and report["n_training_cases"] == 7
    report = check_leakage(_bundle_data(train, val), case_hashes(val), "val")
    assert report["status"].startswith("verified") and report["compared_with"] == "train"


def test_external_data_and_published_duplicates_are_flagged_not_refused(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(3)
    train = [rng.random((1, 8, 8)) for _ in range(3)]
    data = _bundle_data(train, [])
    caplog.set_level(logging.WARNING)
    report = check_leakage(data, case_hashes([train[0], rng.random((1, 8, 8))]), "external")
    assert report["status"].startswith("flagged") and report["n_seen"] == 1 and report["seen_indices"] == [0]
    report = check_leakage(data, case_hashes([train[2]]), "test", published=True)
    assert report["status"].startswith("flagged: the published") and report["n_seen"] == 1
    assert caplog.text.count("leakage: 1 of") == 2


def test_bundle_without_hashes_warns_that_leakage_cannot_be_verified(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    report = check_leakage({"source": "old"}, ["0" * HASH_HEX], "test")
    assert report["status"] == "unverified" and report["n_seen"] is None
    assert "leakage cannot be verified" in caplog.text
