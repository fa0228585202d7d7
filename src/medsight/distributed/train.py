"""``medsight train --workers N``: a task's own training run as N data-parallel ranks on Ray Train.

Ray Train's ``TorchTrainer`` places the ranks (one per worker, with its share of the CPUs or one GPU each), starts
the PyTorch process group (gloo on CPU, NCCL on GPU) and collects rank 0's bundle as its checkpoint. Each rank runs
the task's unchanged ``train``; the engine sees the process group and trains through DDP
(:mod:`medsight.distributed.ddp`). Only classification and the outcome CNN train on the engine's batches today;
the other tasks are refused by name rather than trained on one rank in disguise.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from medsight.distributed import cluster
from medsight.errors import MedsightError

log = logging.getLogger("medsight.distributed")

#: Tasks whose training runs on the engine's shared batches (segmentation and detection build their own loops).
DATA_PARALLEL_TASKS = ("classification", "outcome")


def _rank_loop(config: dict[str, Any]) -> None:
    """One rank: the task's training into a scratch folder; rank 0 reports its bundle as the checkpoint."""
    import ray.train

    from medsight import tasks

    os.environ["MEDSIGHT_THREADS"] = str(config["threads"])  # this rank's share of the cores, not all of them
    rank = ray.train.get_context().get_world_rank()
    with tempfile.TemporaryDirectory(prefix="medsight-rank-") as scratch:
        bundle = Path(scratch) / "bundle"
        tasks.get(config["task"]).train(config["data"], bundle, config["options"])
        checkpoint = ray.train.Checkpoint.from_directory(str(bundle)) if rank == 0 else None
        ray.train.report({"rank": rank}, checkpoint=checkpoint)


def train(
    task: str, data: str, out: Path, options: Any, workers: int, address: str | None = None
) -> dict[str, Any]:
    """Train ``task`` on ``data`` with ``workers`` DDP ranks and write rank 0's bundle to ``out`` (atomically).

    On an existing cluster (``address``) the bundle travels through Ray Train's storage, kept beside ``out``:
    it must be a folder every node can reach (a shared filesystem), as must ``data`` when it is a path.
    """
    from medsight import config as settings
    from medsight.io.atomic import atomic_dir
    from medsight.training.bundle import load_bundle

    if task not in DATA_PARALLEL_TASKS:
        raise MedsightError(
            f"--workers trains {', '.join(DATA_PARALLEL_TASKS)} in parallel; the {task} task trains in one process "
            "(leave out --workers and --address)"
        )
    if workers < 1:
        raise MedsightError("--workers must be 1 or more")
    cluster.require_ray()
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    gpu = settings.device().startswith("cuda")
    out = Path(out)
    if Path(data).exists():  # a local path: workers do not start in this folder
        data = str(Path(data).resolve())
    with cluster.connect(address) as ray:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        per_worker = max(1, cpus // workers) if not gpu else 1
        storage = tempfile.mkdtemp(prefix=f".{out.name}.ray-", dir=out.parent if address else None)
        try:
            trainer = TorchTrainer(
                _rank_loop,
                train_loop_config={"task": task, "data": data, "options": options, "threads": per_worker},
                scaling_config=ScalingConfig(
                    num_workers=workers, use_gpu=gpu, resources_per_worker={"CPU": per_worker}
                ),
                torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
                run_config=RunConfig(name="medsight-train", storage_path=storage),
            )
            log.info("training %s on %d Ray workers (%d CPU each%s)", task, workers, per_worker, " + 1 GPU" * gpu)
            result = trainer.fit()
            if result.error is not None:
                raise MedsightError(f"distributed training failed: {result.error}")
            if result.checkpoint is None:
                raise MedsightError("distributed training ended without a bundle from rank 0")
            with atomic_dir(out) as tmp:
                shutil.rmtree(tmp)
                result.checkpoint.to_directory(str(tmp))
        finally:
            shutil.rmtree(storage, ignore_errors=True)
    return load_bundle(out).meta
