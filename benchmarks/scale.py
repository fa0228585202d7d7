"""Scaling out on Ray, measured on this machine: training time per epoch with 1 and 2 DDP workers (Ray Train)
against the single-process run, and batch throughput with 1 and 2 Ray workers against the single-process path for
de-identification (``--files`` copies of the shared brain MR files, fresh UIDs) and prediction (``--inputs``
copies of a shared radiograph, fresh UIDs, through the bundle the single-process training wrote).

Every timing of a kind runs in this one invocation, so load on the machine hits them alike; the load averages
before and after go to the results. Writes benchmarks/results/scale.json (figures, command, commit, date, seeds).

    MEDSIGHT_THREADS=2 python benchmarks/scale.py [--epochs 3] [--seeds 0] [--files 10000] [--inputs 2000]
                                                  [--parts training batch]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support.provenance import provenance

from medsight import tasks
from medsight.config import data_root
from medsight.distributed.cluster import connect
from medsight.distributed.predict import predict_archive
from medsight.distributed.train import train as train_distributed
from medsight.io.atomic import write_json
from medsight.privacy.run import deidentify

RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"
DATA = "medmnist:pneumoniamnist"
RADIOGRAPH = "dicom_samples/pydicom_data/RG3_J2KR.dcm"


def copies(sources: list[Path], n: int, folder: Path) -> Path:
    """``n`` DICOM files cycling over ``sources``, each with fresh Study/Series/SOP Instance UIDs."""
    folder.mkdir(parents=True)
    for i in range(n):
        ds = pydicom.dcmread(sources[i % len(sources)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"{i:06d}.dcm")
    return folder


def per_epoch(meta: dict[str, Any]) -> float:
    """Mean seconds per training epoch from the bundle's history (validation included, as a user waits for it)."""
    history = meta["training"]["history"]
    return history[-1]["seconds"] / len(history)


def training(epochs: int, seed: int, work: Path) -> dict[str, Any]:
    options = tasks.get("classification").Options.from_mapping({"seed": seed, "epochs": epochs}, "classification")
    runs: dict[str, Any] = {}
    meta = tasks.get("classification").train(DATA, work / f"single-{seed}", options)
    runs["single_process"] = {"seconds_per_epoch": per_epoch(meta), "val_auc": meta["metrics"]["val"]["auc"]}
    for workers in (1, 2):
        meta = train_distributed("classification", DATA, work / f"ray{workers}-{seed}", options, workers)
        auc = meta["metrics"]["val"]["auc"]
        runs[f"ray_{workers}_workers"] = {"seconds_per_epoch": per_epoch(meta), "val_auc": auc}
    base = runs["single_process"]["seconds_per_epoch"]
    for run in runs.values():
        run["speedup_vs_single_process"] = base / run["seconds_per_epoch"]
    return runs


def throughput(label: str, fn: Any, n: int) -> dict[str, Any]:
    started = time.perf_counter()
    fn()
    seconds = time.perf_counter() - started
    return {"label": label, "files": n, "seconds": seconds, "files_per_second": n / seconds}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--files", type=int, default=10_000, help="de-identification inputs")
    p.add_argument("--inputs", type=int, default=2_000, help="prediction inputs")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--parts", nargs="+", choices=("training", "batch"), default=["training", "batch"],
                   help="what to measure; a part left out keeps its figures (and their provenance) from --out")
    args = p.parse_args()
    record: dict[str, Any] = provenance("scale.py", seeds=args.seeds, data=DATA, epochs=args.epochs)
    key = bytes(range(32))
    earlier: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    here = {"commit": record.get("commit"), "date": record.get("date"), "command": record.get("command")}
    record["parts"] = {}
    for part, keys in (("training", ("training",)), ("batch", ("deid", "predict"))):
        if part not in args.parts:
            if not all(k in earlier for k in keys):
                raise SystemExit(f"--parts leaves out {part}, but {args.out} holds no {part} figures to keep")
            record.update({k: earlier[k] for k in keys})
            record["parts"][part] = earlier.get("parts", {}).get(part) or {
                k: earlier.get(k) for k in ("commit", "date", "command")}
        else:
            record["parts"][part] = here
    with tempfile.TemporaryDirectory(prefix="medsight-scale-") as tmp:
        work = Path(tmp)
        if "training" in args.parts:
            record["training"] = {str(seed): training(args.epochs, seed, work) for seed in args.seeds}
        if "batch" not in args.parts:
            record["load_average_1min_after"] = round(os.getloadavg()[0], 2)
            write_json(args.out, record)
            print(f"results: {args.out}")
            return 0
        bundle = work / f"single-{args.seeds[0]}"
        if not bundle.exists():
            meta_options = tasks.get("classification").Options.from_mapping(
                {"seed": args.seeds[0], "epochs": args.epochs}, "classification")
            tasks.get("classification").train(DATA, bundle, meta_options)
        mr = sorted((data_root() / "udacity_brain_mr_dicom").rglob("*.dcm"))
        deid_in = copies(mr, args.files, work / "deid_in")
        pred_in = copies([data_root() / RADIOGRAPH], args.inputs, work / "pred_in")
        deid_runs = [throughput("single_process", lambda: deidentify(
            deid_in, work / "d0", key=key, workers=1, audit_log=None, progress=False), args.files)]
        pred_runs = [throughput("single_process", lambda: predict_archive(
            bundle, pred_in, work / "p0", workers=1, progress=False), args.inputs)]
        for workers in (1, 2):
            with connect(cpus=workers):  # the cluster's start-up is not part of the job's time
                deid_runs.append(throughput(f"ray_{workers}_workers", lambda w=workers: deidentify(
                    deid_in, work / f"d{w}", key=key, workers=w, audit_log=None, progress=False, address="local"),
                    args.files))
                pred_runs.append(throughput(f"ray_{workers}_workers", lambda w=workers: predict_archive(
                    bundle, pred_in, work / f"p{w}", workers=w, address="local", progress=False), args.inputs))
        for runs in (deid_runs, pred_runs):
            for run in runs:
                run["ratio_to_single_process"] = run["files_per_second"] / runs[0]["files_per_second"]
        record["deid"] = deid_runs
        record["predict"] = pred_runs
    record["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    write_json(args.out, record)
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
