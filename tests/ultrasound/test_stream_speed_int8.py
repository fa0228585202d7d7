"""``medsight stream --int8``: the shared DICOM ultrasound cine loop streams end to end on the int8 variant, made
once from the bundle's training images and reused from the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsight.cli import main
from medsight.runtime.quantize import int8_bundle

US_CINE = ("dicom_samples", "pydicom_test_files", "examples_ybr_color.dcm")


def test_stream_speed_int8_streams_the_dicom_cine_loop_and_reuses_the_variant(
    fast_bundle: Path, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "stream",
            str(fast_bundle),
            str(shared_data.joinpath(*US_CINE)),
            "--out",
            str(out),
            "--int8",
            "--max-frames",
            "4",
            "--no-video",
        ]
    )
    assert code == 0 and "ONNX Runtime int8" in capsys.readouterr().out
    summary = json.loads((out / "stream.json").read_text())
    assert summary["engine"] == "ONNX Runtime int8" and summary["frames"] == 4 and summary["frame_size"] == [320, 240]
    variant = int8_bundle(fast_bundle)
    made = (variant / "model.onnx").stat().st_mtime_ns
    assert int8_bundle(fast_bundle) == variant and (variant / "model.onnx").stat().st_mtime_ns == made
    assert int8_bundle(variant) == variant  # an int8 bundle is its own variant
