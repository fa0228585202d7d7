"""``benchmarks/ort_spinning.py`` at a tiny size (seconds): both settings timed on the bundle's validation images
(never its test images), with CIs, the faster named, and the provenance every results file carries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ort_spinning_benchmark_times_both_settings_on_validation_images(
    fast_bundle: Path, shared_data: Path, tmp_path: Path
) -> None:
    results = tmp_path / "ort_spinning.json"
    env = {**os.environ, "MEDSIGHT_DATA": str(shared_data.resolve()), "MEDSIGHT_THREADS": "1"}
    args = ["--bundle", str(fast_bundle), "--results", str(results), "--size", "64", "--rounds", "1"]
    run = subprocess.run(
        [sys.executable, "benchmarks/ort_spinning.py", *args, "--bootstrap", "20"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    record = json.loads(results.read_text())
    n_val = len(json.loads((fast_bundle / "bundle.json").read_text())["data"]["val_ids"])
    assert record["settings"]["frames_from"].startswith(f"{n_val} validation images")
    for name in ("spinning", "no_spinning"):
        fps = record["speed"][name]["frames_per_second"]
        assert fps["value"] > 0 and fps["ci95"][0] <= fps["value"] <= fps["ci95"][1]
        assert record["speed"][name]["frames_timed"] == n_val
    assert record["faster"] in ("spinning", "no_spinning")
    assert record["provenance"]["command"].startswith("MEDSIGHT_THREADS=1 python benchmarks/ort_spinning.py")
