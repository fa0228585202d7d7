"""Choosing the intra-op thread count while training, for shared CPUs.

On a machine whose cores other jobs also use, OpenMP threads spinning at barriers make a two-thread step several
times slower than a one-thread step (measured here: 3.5-9.6 s against 1.1 s per Hippocampus iteration at a load of
6-8 on 2 cores), while on a quiet machine two threads are about twice as fast. So the tuner times a few iterations
with each candidate count now and then, and trains with the faster one.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence

import torch

from medsight.training.engine import Engine, Event

log = logging.getLogger("medsight.train")


class ThreadTuner:
    """An engine handler: every ``every`` iterations, time ``probe`` iterations per candidate thread count (the
    first of each discarded: resizing the pool costs), then keep the one with the lowest median step time."""

    def __init__(self, candidates: Sequence[int], probe: int = 6, every: int = 250) -> None:
        self.candidates = sorted(set(max(1, int(c)) for c in candidates), reverse=True)
        self.probe, self.every = max(2, probe), max(every, probe * len(self.candidates) + 1)
        self.choice = self.candidates[0]
        self.times: dict[int, list[float]] = {}
        self.t0 = 0.0
        self.choices: list[dict[str, float]] = []

    def _window(self, iteration: int) -> int | None:
        phase = iteration % self.every
        k = phase // self.probe
        return self.candidates[k] if len(self.candidates) > 1 and k < len(self.candidates) else None

    def __call__(self, engine: Engine, event: Event) -> None:
        s = engine.state
        if event is Event.ITERATION_STARTED:
            candidate = self._window(s.iteration)
            wanted = candidate if candidate is not None else self.choice
            if torch.get_num_threads() != wanted:
                torch.set_num_threads(wanted)
            self.t0 = time.monotonic()
        elif event is Event.ITERATION_COMPLETED:
            done = s.iteration - 1  # the iteration that just ran
            candidate = self._window(done)
            if candidate is None:
                return
            if (done % self.every) % self.probe:  # not the first of its window
                self.times.setdefault(candidate, []).append(time.monotonic() - self.t0)
            if self._window(s.iteration) is None and len(self.times) == len(self.candidates):
                medians = {c: statistics.median(v) for c, v in self.times.items()}
                self.choice = min(medians, key=lambda c: medians[c])
                self.choices.append({"iteration": float(s.iteration), "threads": float(self.choice)})
                log.info(
                    "threads: %s s per iteration; training with %d",
                    ", ".join(f"{c}: {t:.2f}" for c, t in sorted(medians.items())),
                    self.choice,
                )
                self.times = {}
                torch.set_num_threads(self.choice)
