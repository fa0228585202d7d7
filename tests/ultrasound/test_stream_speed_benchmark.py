"""``benchmarks/stream.py`` at a tiny size (seconds): three engines timed on the same frames, the Dice each costs on
held-out images, the DICOM cine loop streamed, and the provenance every results file carries."""

from __future__ import annotations

import json
import os
from pathlib import Path

from benchmark_scripts import run_script


def test_stream_speed_benchmark_runs_small_and_records_every_engine(
    fast_bundle: Path, shared_data: Path, tmp_path: Path
) -> None:
    results = tmp_path / "stream.json"
    env = {**os.environ, "MEDSIGHT_DATA": str(shared_data.resolve()), "MEDSIGHT_THREADS": "1"}
    run = run_script(
        "stream.py",
        *("--bundle", str(fast_bundle), "--out", str(tmp_path / "out"), "--results", str(results)),
        *("--size", "64", "--frames", "3", "--rounds", "1", "--heldout", "3", "--bootstrap", "20"),
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads(results.read_text())
    engines = {"onnxruntime_fp32", "onnxruntime_int8", "pytorch_eager"}
    assert set(doc["speed"]) == engines and set(doc["dice_heldout"]) == engines | {"n_images"}
    for name in engines:
        fps = doc["speed"][name]["frames_per_second"]
        assert fps["value"] > 0 and fps["ci95"][0] <= fps["value"] <= fps["ci95"][1]
        assert doc["speed"][name]["frames_timed"] == 3
        assert 0.0 <= doc["dice_heldout"][name]["dice"]["value"] <= 1.0
    assert doc["dice_heldout"]["onnxruntime_fp32"]["dice_minus_onnxruntime_fp32"]["value"] == 0.0
    assert doc["dicom_us_cine"]["onnxruntime_int8"]["engine"] == "ONNX Runtime int8"
    assert doc["dicom_us_cine"]["onnxruntime_fp32"]["frames"] == 30  # the whole cine loop
    assert doc["settings"]["plan_preset"] == "fast" and doc["settings"]["int8"]["format"] == "QDQ"
    assert {"command", "commit", "date", "load_average_1min"} <= set(doc["provenance"])
    assert doc["machine"]["load_average_1_5_15_min"] is not None
