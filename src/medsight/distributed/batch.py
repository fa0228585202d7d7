"""Stream chunks of files through N Ray actors, each set up once (a model loaded, a de-identifier keyed).

Actors rather than bare tasks: the set-up (an ONNX session, a keyed engine) is paid once per worker, and the
number of workers is what the user asked for, not every CPU of the cluster. A worker that dies (killed, out of
memory, its node lost) is restarted by Ray and its chunk is run again (``max_task_retries``); the caller's ledger
makes that harmless (deid: outputs are placed by the driver; predict: the re-run chunk finds the inputs its dead
worker marked and redoes only the others). At most ``2 x workers`` chunks are in flight, so the archive is never
held in memory or in Ray's object store.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterable
from typing import Any

from medsight.distributed import cluster

#: How often Ray re-runs a chunk whose worker died before giving up on the job.
RETRIES = 3


class Worker:
    """One Ray actor: ``setup(arg)`` once, then ``work(state, chunk)`` per chunk."""

    def __init__(self, setup: Callable[[Any], Any], arg: Any, work: Callable[[Any, Any], Any]) -> None:
        self.state = setup(arg)
        self.work = work

    def run(self, chunk: Any) -> Any:
        return self.work(self.state, chunk)

    def pid(self) -> int:
        """The worker's process id (tests kill it to prove a job survives a lost worker)."""
        return os.getpid()


def stream(
    setup: Callable[[Any], Any],
    arg: Any,
    work: Callable[[Any, Any], Any],
    chunks: Iterable[Any],
    workers: int,
    address: str | None = None,
) -> Generator[Any, None, None]:
    """``work(state, chunk)`` for every chunk, on ``workers`` actors, yielded as each chunk finishes.

    ``setup``, ``work`` and every chunk must be picklable (module-level functions, plain data). Starts a local
    cluster of ``workers`` CPUs, bound to 127.0.0.1, unless ``address`` names an existing one.
    """
    with cluster.connect(address, cpus=workers) as ray:
        actor = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=RETRIES)(Worker)
        pool = [actor.remote(setup, arg, work) for _ in range(workers)]
        pending: dict[Any, int] = {}
        source = iter(chunks)
        exhausted = False

        def submit(slot: int) -> None:
            nonlocal exhausted
            chunk = next(source, None)
            if chunk is None:
                exhausted = True
                return
            pending[pool[slot].run.remote(chunk)] = slot

        for slot in list(range(workers)) * 2:
            if not exhausted:
                submit(slot)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            slot = pending.pop(ready[0])
            yield ray.get(ready[0])
            if not exhausted:
                submit(slot)
