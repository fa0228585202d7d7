"""Start a local Ray cluster for one run (bound to 127.0.0.1) or join an existing one at an address.

Ray is imported here, lazily, and only when a user asks for ``--workers``/``--address``; without it the error names
the pinned install command instead of a bare ImportError.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from medsight.errors import MedsightError

#: The pinned Ray (requirements.txt): Ray Train for DDP, Ray Core tasks for batch jobs.
RAY_REQUIREMENT = "ray[train]==2.60.0"
#: Object store of a local cluster: batch jobs pass file names and small results, never pixels.
LOCAL_OBJECT_STORE_BYTES = 128 * 1024**2


def require_ray() -> ModuleType:
    """The ``ray`` module, or an error that says how to install the version medsight is tested with."""
    try:
        import ray
    except ImportError as exc:
        raise MedsightError(
            f"--workers/--address run on Ray, which is not installed: pip install '{RAY_REQUIREMENT}'"
        ) from exc
    return ray


#: Settings that name folders: made absolute, since Ray workers do not start in the driver's folder.
PATH_SETTINGS = ("MEDSIGHT_DATA", "MEDSIGHT_CACHE")


def env_vars() -> dict[str, str]:
    """The medsight settings every worker needs (data root, cache, device, threads), as the driver has them."""
    found = {k: v for k, v in os.environ.items() if k.startswith("MEDSIGHT_")}
    return {k: os.path.abspath(os.path.expanduser(v)) if k in PATH_SETTINGS and v else v for k, v in found.items()}


@contextmanager
def connect(address: str | None = None, cpus: int | None = None) -> Iterator[Any]:
    """Yield ``ray`` connected to the cluster at ``address``, or to a local cluster started for this block.

    A local cluster listens on 127.0.0.1 only, keeps its files in a temporary folder of its own (removed after)
    and is stopped when the block ends; an existing cluster is only disconnected from. Ray is shut down even when
    the block fails, so no worker outlives the run.
    """
    ray = require_ray()
    if ray.is_initialized():  # a caller (a test, a notebook) already connected: use that cluster as it is
        yield ray
        return
    runtime_env = {"env_vars": env_vars()}
    temp_dir = None
    try:
        if address:
            try:
                ray.init(address=address, runtime_env=runtime_env, logging_level="WARNING", log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise MedsightError(f"cannot connect to the Ray cluster at {address} ({type(exc).__name__})") from exc
        else:
            temp_dir = tempfile.mkdtemp(prefix="medsight-ray-")
            ray.init(
                num_cpus=cpus or os.cpu_count() or 1,
                num_gpus=None,
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                _temp_dir=temp_dir,
                runtime_env=runtime_env,
                logging_level="WARNING",
                log_to_driver=False,
            )
        yield ray
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
