"""A local Ray cluster for the distributed tests (2 CPUs, a loopback-only network namespace, its own temp
folder) and a worker killer."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

from needs import unavailable


def ray_or_fail() -> ModuleType:
    try:
        import ray
    except ImportError:
        unavailable("ray is not installed: pip install 'ray[train]==2.60.0' (make test does, from requirements.txt)")
    return ray


def start(env: dict[str, str]) -> Iterator[ModuleType]:
    """Start the cluster in a new loopback-only network namespace, yield ``ray``, stop it (its processes end with
    it), and remove its folder and the namespace.

    Ray listens on every interface of its node and has no loopback-only setting, so the cluster (and this test
    thread, its driver) runs in a namespace that holds nothing but ``lo``: nothing outside the machine, nor outside
    the namespace, can reach it. The driver stays in the namespace until the module's tests are done.
    """
    import secrets

    from serving.orthanc_peer import in_namespace, run, run_root

    ray = ray_or_fail()
    ns = f"medsight-ray-{secrets.token_hex(4)}"
    created = run_root(["ip", "netns", "add", ns])
    if created.returncode != 0:
        unavailable(f"cannot create a network namespace for the Ray cluster (root needed): {created.stderr.strip()}")
    temp = tempfile.mkdtemp(prefix="msray-")
    try:
        up = run(ns, ["ip", "link", "set", "lo", "up"])
        assert up.returncode == 0, up.stderr
        with in_namespace(ns):
            ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False,
                     object_store_memory=128 * 1024**2, _temp_dir=temp, runtime_env={"env_vars": env},
                     logging_level="WARNING", log_to_driver=False)
            try:
                yield ray
            finally:
                ray.shutdown()
    finally:
        import shutil

        shutil.rmtree(temp, ignore_errors=True)
        run_root(["ip", "netns", "delete", ns])


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def batch_workers() -> list[int]:
    """Process ids of this test's Ray actors running batch chunks (descendants of this process only)."""
    found = []
    for pid in _descendants(os.getpid()):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if title.startswith(b"ray::Worker"):
            found.append(pid)
    return found


def kill_one_worker_when(ready: Callable[[], bool], killed: list[int], timeout: float = 120.0) -> threading.Thread:
    """In the background: once ``ready()`` and a worker is busy, SIGKILL one worker (its pid goes to ``killed``)."""

    def run() -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end and not killed:
            busy = batch_workers() if ready() else []
            if busy:
                os.kill(busy[0], signal.SIGKILL)
                killed.append(busy[0])
                return
            time.sleep(0.02)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
