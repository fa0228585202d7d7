"""Prometheus metrics of the service: what an operator watches to see that nothing is stuck or lost.

Queue depth per state is read from the job table at scrape time (a collector, not a counter the code must keep in
step), so it is right after a restart too; latencies and failures are counted as jobs finish. Labels are model
(route) and destination names only: never a UID or anything about a patient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

#: Latency buckets (seconds) from a fast 2D classifier to a slow 3D segmentation on CPU.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 120, 300, 600)


class _QueueCollector(Collector):
    """Queue depth per job state and the age of the oldest queued job, read when scraped."""

    def __init__(self, counts: Callable[[], Mapping[str, int]], oldest_age: Callable[[], float | None]) -> None:
        self._counts = counts
        self._oldest_age = oldest_age

    def collect(self) -> Iterable[GaugeMetricFamily]:
        depth = GaugeMetricFamily("medsight_jobs", "Jobs in the queue by state", labels=["state"])
        for state, n in sorted(self._counts().items()):
            depth.add_metric([state], n)
        yield depth
        age = self._oldest_age()
        yield GaugeMetricFamily(
            "medsight_oldest_queued_job_age_seconds",
            "Age of the oldest job waiting to run (0 when none)",
            value=0.0 if age is None else age,
        )


class ServiceMetrics:
    """The service's registry (its own, so tests and several services in one process do not collide)."""

    def __init__(self, counts: Callable[[], Mapping[str, int]], oldest_age: Callable[[], float | None]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_QueueCollector(counts, oldest_age))
        self.instances = Counter(
            "medsight_instances_received", "DICOM instances stored through the DICOM listener (C-STORE)",
            registry=self.registry,
        )
        self.studies = Counter("medsight_studies_completed", "Studies found complete", registry=self.registry)
        self.job_latency = Histogram(
            "medsight_job_seconds",
            "Time a job ran, by kind and model or destination",
            ["kind", "target"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.study_latency = Histogram(
            "medsight_study_result_seconds",
            "From a study found complete to its results stored and sent, by model",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.failures = Counter(
            "medsight_job_failures",
            "Failed job attempts, by kind and model or destination",
            ["kind", "target"],
            registry=self.registry,
        )
        self.dead = Counter(
            "medsight_jobs_dead", "Jobs moved to the dead-letter state", ["kind", "target"], registry=self.registry
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class _RelayedChild:
    def __init__(self, events: Any, name: str, labels: tuple[str, ...]) -> None:
        self._events, self._name, self._labels = events, name, labels

    def observe(self, value: float) -> None:
        self._events.put((self._name, self._labels, "observe", float(value)))

    def inc(self, amount: float = 1.0) -> None:
        self._events.put((self._name, self._labels, "inc", float(amount)))


class _Relayed:
    def __init__(self, events: Any, name: str) -> None:
        self._events, self._name = events, name

    def labels(self, *labels: str) -> _RelayedChild:
        return _RelayedChild(self._events, self._name, tuple(str(v) for v in labels))


class RelayedMetrics:
    """What a worker process records, sent to the service process (whose registry ``/metrics`` shows).

    A worker process has no registry of its own that anyone scrapes; it puts each observation on a
    ``multiprocessing`` queue and :func:`apply_relayed` applies it to the service's :class:`ServiceMetrics`.
    """

    RELAYED = ("job_latency", "study_latency", "failures", "dead")

    def __init__(self, events: Any) -> None:
        self.job_latency = _Relayed(events, "job_latency")
        self.study_latency = _Relayed(events, "study_latency")
        self.failures = _Relayed(events, "failures")
        self.dead = _Relayed(events, "dead")


def apply_relayed(metrics: ServiceMetrics, event: tuple[str, tuple[str, ...], str, float]) -> None:
    """Apply one observation a worker process relayed (anything else is ignored: it came from our own code)."""
    name, labels, method, value = event
    if name in RelayedMetrics.RELAYED and method in ("observe", "inc"):
        getattr(getattr(metrics, name).labels(*labels), method)(value)
