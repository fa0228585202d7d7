"""How long a full garbage collection stalls a ready service, before and after its start-up objects are frozen.

    MEDSIGHT_DATA=../shared/data python benchmarks/gc_pause.py [--bundle demo_out/pneumonia_bundle] [--runs 5]

Why: a full ``gc.collect()`` holds the GIL, so while it runs no C-STORE is acknowledged and no HTTP request is
answered. pynetdicom's accept loop forced one every 60 polls (every 12 s at the listener's 0.2 s poll) and Python
runs its own now and then; the service now freezes what is alive when it is ready
(``medsight.serving.service.freeze_start_up_objects``). This builds what a service process holds (the service with
its routes' models loaded, the listener and HTTP modules imported) and times full collections before and after.
Writes ``benchmarks/results/gc_pause.json``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support.provenance import provenance

from medsight.io.atomic import write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gc_pause.json"


def full_collections(runs: int) -> list[float]:
    """Milliseconds of ``runs`` full collections."""
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        gc.collect()
        out.append((time.perf_counter() - started) * 1000)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=ROOT / "demo_out" / "pneumonia_bundle")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    bundle = args.bundle.resolve()
    if not (bundle / "bundle.json").is_file():
        raise SystemExit(f"{bundle}: no bundle (run `make demo` or pass --bundle)")
    for module in ("medsight.serving.http_api", "medsight.serving.listener"):  # what a service process imports
        importlib.import_module(module)
    from medsight.serving.config import load_config
    from medsight.serving.service import Service, freeze_start_up_objects

    with tempfile.TemporaryDirectory(prefix="medsight_gc_pause_") as tmp:
        site = Path(tmp) / "site.toml"
        site.write_text(
            f'[service]\ndata_dir = "{Path(tmp) / "data"}"\n\n'
            "[dicom]\nallow_any = true\n\n"
            f'[[routes]]\nname = "cr"\nbundle = "{bundle}"\nmatch.modality = ["CR", "DX"]\n',
            encoding="utf-8",
        )
        config = load_config(site)
        service = Service(config)
        service.models.preload([r.bundle for r in config.routes])
        objects = len(gc.get_objects())
        before = full_collections(args.runs)
        freeze_start_up_objects()
        after = full_collections(args.runs)
        frozen = gc.get_freeze_count()
        service.engine.dispose()
    record = {
        **provenance("gc_pause.py"),
        "seeds": [],
        "bundle": str(bundle),
        "objects_tracked_when_ready": objects,
        "objects_frozen": frozen,
        "full_collection_ms": {
            "before_freeze": {"median": statistics.median(before), "runs": before},
            "after_freeze": {"median": statistics.median(after), "runs": after},
        },
        "pynetdicom_forced_collection_every_s": 60 * 0.2,
    }
    write_json(args.results, record)
    print(f"full collection: {record['full_collection_ms']['before_freeze']['median']:.1f} ms with {objects} objects; "
          f"{record['full_collection_ms']['after_freeze']['median']:.2f} ms after freezing {frozen}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
