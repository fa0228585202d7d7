"""``medsight serve``: one process with a DICOM listener, the HTTP API, a scheduler and workers.

Workers are threads by default. Measured reason: inference runs in ONNX Runtime and DICOM I/O in C code that
release the GIL, models stay loaded once per process (a worker process per model would hold a copy of each), and
the queue in the database already makes the work crash-safe across restarts. ``worker_mode = "process"`` runs each
worker in a process of its own instead (for work that holds the GIL, or to spread over the cores of a bigger
node): each takes jobs from the same database with row locks (``SELECT ... FOR UPDATE SKIP LOCKED`` on
PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so no job runs twice, and relays its metrics to this process.
A job that hangs is not waited on forever: each runs under the job timeout in its own thread; past the timeout the
job is failed (and retried or dead-lettered) and the worker takes the next job.

Start-up recovers what a crash left: jobs still marked running go back to the queue, and studies found complete
whose jobs were never queued are queued (the dedupe keys make that idempotent). Shutdown (SIGTERM/SIGINT) stops
taking instances and jobs, lets running jobs finish within a grace period and puts the rest back in the queue.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import gc
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medsight.errors import MedsightError
from medsight.serving.config import SiteConfig
from medsight.serving.jobs import MAX_ERROR_CHARS
from medsight.serving.worker import EXPORT, INFERENCE, ModelCache, Retryable, WorkContext, run_export, run_inference

log = logging.getLogger("medsight.serve")

#: How often the scheduler looks for quiet studies and expired leases, and how often idle workers poll.
TICK_S = 0.2
#: How long a worker or the scheduler waits after a database error before trying again.
DB_RETRY_S = 1.0
#: How often the scheduler queues the jobs of studies left complete (a crash, a failed queueing).
SWEEP_S = 5.0


class Service:
    """The running service; ``start()`` returns once every listener is up, ``stop()`` shuts down gracefully."""

    def __init__(self, config: SiteConfig, *, grace_s: float = 30.0) -> None:
        from medsight.serving.audit import AuditLog
        from medsight.serving.database import open_database
        from medsight.serving.jobs import JobQueue
        from medsight.serving.metrics import ServiceMetrics
        from medsight.serving.security import UserDirectory
        from medsight.serving.store import StudyStore

        self.config = config
        s = config.service
        self.data_dir = Path(s.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.grace_s = grace_s
        self.engine = open_database(config.database.sqlalchemy_url(), self.data_dir)
        self.store = StudyStore(
            self.engine,
            self.data_dir / "instances",
            min_free_bytes=s.min_free_mb * 1_000_000,
            rerun_on_late=s.rerun_on_late,
        )
        self.queue = JobQueue(
            self.engine,
            timeout_s=s.job_timeout_s,
            max_attempts=s.max_attempts,
            backoff_s=s.backoff_s,
            backoff_max_s=s.backoff_max_s,
        )
        self.users = UserDirectory(self.engine)
        self.audit = AuditLog(self.data_dir / "audit.log")
        self.metrics = ServiceMetrics(self.queue.counts, self.queue.oldest_queued_age)
        self.models = ModelCache()
        self.ctx = WorkContext(
            config=config,
            store=self.store,
            queue=self.queue,
            audit=self.audit,
            metrics=self.metrics,
            models=self.models,
            results_dir=self.data_dir / "results",
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener: Any = None
        self._http: Any = None
        self._processes: list[Any] = []  # worker processes (worker_mode = "process")
        self._process_stop: Any = None
        self.worker_ids = [f"{socket.gethostname()}:{os.getpid()}:{i}" for i in range(s.workers)]
        self.http_port = s.http_port
        self.dicom_port = config.dicom.port

    # -------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        # One process per SQLite database: whatever it left running died with it. On PostgreSQL several service
        # processes may share the queue, so only leases that expired are taken back.
        if self.config.database.kind == "sqlite":
            recovered = self.queue.requeue_running()
        else:
            recovered = self.queue.requeue_expired()
        if recovered:
            log.info("start-up: %d job(s) left running by a previous process put back in the queue", recovered)
        self.models.preload([r.bundle for r in self.config.routes])
        self._start_listener()
        self._start_http()
        self._spawn(self._schedule, "scheduler")
        if self.config.service.worker_mode == "process":
            self._start_worker_processes()
        else:
            for wid in self.worker_ids:
                self._spawn(functools.partial(self._work, wid), f"worker-{wid}")
        freeze_start_up_objects()
        log.info(
            "ready: DICOM %s on %s:%d, HTTP on %s:%d",
            self.config.dicom.ae_title,
            self.config.dicom.host,
            self.dicom_port,
            self.config.service.host,
            self.http_port,
        )

    def _start_worker_processes(self) -> None:
        """One process per worker (``spawn``: a fork would copy this process's threads' locks), and a thread that
        applies the metrics they relay."""
        import multiprocessing

        from medsight.serving.metrics import apply_relayed

        mp = multiprocessing.get_context("spawn")
        self._process_stop = mp.Event()
        events = mp.Queue()
        for wid in self.worker_ids:
            process = mp.Process(
                target=run_worker_process,
                args=(self.config, wid, self._process_stop, events, self.grace_s),
                name=f"medsight-worker-{wid}",
            )
            process.start()
            self._processes.append(process)

        def relay() -> None:
            import queue

            while not (self._stop.is_set() and not any(p.is_alive() for p in self._processes)):
                try:
                    apply_relayed(self.metrics, events.get(timeout=0.2))
                except queue.Empty:
                    continue
                except Exception:  # a malformed event must not stop the relay
                    log.exception("cannot apply a worker process's metrics")

        self._spawn(relay, "metrics-relay")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _start_listener(self) -> None:
        from medsight.serving.dicom_query import StoreFinder
        from medsight.serving.listener import AllowedPeer, DicomListener, ListenerSettings
        from medsight.serving.routing import storage_sop_classes

        d = self.config.dicom
        settings = ListenerSettings(
            ae_title=d.ae_title,
            host=d.host,
            port=d.port,
            allow_any=d.allow_any,
            allowed=[AllowedPeer(p.ae_title, p.host) for p in d.allowed],
        )
        wanted = storage_sop_classes(self.config)  # None: some route takes any class, so accept every one
        if wanted is not None:
            settings = dataclasses.replace(settings, sop_classes=sorted(wanted))
        self._listener = DicomListener(
            settings, self.store, on_stored=self._on_stored, finder=StoreFinder(self.store, self.audit)
        )
        self._listener.start()
        self.dicom_port = self._listener.port

    def _on_stored(self, stored: object) -> None:
        self.metrics.instances.inc()

    def _start_http(self) -> None:
        import uvicorn

        from medsight.serving.http_api import create_app

        app = create_app(
            self.store,
            self.users,
            self.audit,
            on_complete=self.complete_study,
            metrics=self.metrics.render,
            health=self.health,
            routers=[self.review_backend().router],
            max_stow_bytes=self.config.service.max_stow_mb * 1_000_000,
        )
        s = self.config.service
        kwargs: dict[str, Any] = {}
        if self.config.tls is not None:
            kwargs = {"ssl_certfile": str(self.config.tls.certificate), "ssl_keyfile": str(self.config.tls.key)}
        sock = socket.socket(socket.AF_INET6 if ":" in s.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((s.host, s.http_port))
        self.http_port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", **kwargs))
        self._http = server
        self._http_socket = sock
        self._spawn(lambda: server.run(sockets=[sock]), "http")
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline:
                raise MedsightError("the HTTP API did not start within 20 s")
            time.sleep(0.02)

    def review_backend(self) -> Any:
        """The review workstation's routes over this service (medsight.review.api): verdicts go to ``[review]``."""
        from medsight.review.api import ReviewBackend

        return ReviewBackend(
            engine=self.engine,
            store=self.store,
            audit=self.audit,
            users=self.users,
            results_dir=self.ctx.results_dir,
            queue=self.queue,
            models=lambda: {r.name: r.bundle for r in self.config.routes},
            send_to=self.config.review.send_to,
            ae_title=self.config.dicom.ae_title,
        )

    def stop(self) -> None:
        """Stop taking work, let running jobs finish within the grace period, re-queue the rest."""
        if self._stop.is_set():
            return
        log.info("shutting down: no new instances or jobs; running jobs get %g s", self.grace_s)
        if self._listener is not None:
            self._listener.stop()
        self._stop.set()
        deadline = time.monotonic() + self.grace_s
        for t in self._threads:
            if t.name.startswith("worker-"):
                t.join(max(0.0, deadline - time.monotonic()))
        if self._process_stop is not None:
            self._process_stop.set()
            for p in self._processes:
                p.join(max(0.0, deadline - time.monotonic()))
            for p in self._processes:
                if p.is_alive():  # past the grace period: stop it; its job goes back to the queue below
                    p.kill()  # not terminate(): a worker process ignores SIGTERM (the service handles it)
                    p.join(5)
        requeued = sum(self.queue.requeue_running(w) for w in self.worker_ids)
        if requeued:
            log.info("shutdown: %d unfinished job(s) put back in the queue", requeued)
        if self._http is not None:
            self._http.should_exit = True
        for t in self._threads:
            if not t.name.startswith("worker-"):
                t.join(5)
        self.engine.dispose()

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT."""
        done = threading.Event()

        def handler(signum: int, frame: object) -> None:
            done.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        self.start()
        while not done.wait(0.5):
            pass
        self.stop()

    # -------------------------------------------------------------------------------------------- scheduling

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if not self._stop.is_set() else "stopping",
            "dicom": {"ae_title": self.config.dicom.ae_title, "port": self.dicom_port},
            "jobs": self.queue.counts(),
            "workers": {
                "mode": self.config.service.worker_mode,
                "count": len(self.worker_ids),
                "alive": (
                    sum(1 for p in self._processes if p.is_alive())
                    if self._processes
                    else sum(1 for t in self._threads if t.name.startswith("worker-") and t.is_alive())
                ),
            },
            "routes": [r.name for r in self.config.routes],
        }

    def complete_study(self, study_uid: str) -> bool:
        """The explicit completion call (API): mark complete and queue its jobs now."""
        if not self.store.mark_complete(study_uid):
            return False
        self.metrics.studies.inc()
        try:
            self._queue_study(study_uid)
        except Exception as exc:  # the study is complete: the scheduler's next sweep queues its jobs
            log.error("cannot queue the jobs of a completed study now (%s); the scheduler retries", type(exc).__name__)
        return True

    def _schedule(self) -> None:
        """Each tick: complete the quiet studies and queue their jobs, and take back jobs whose lease expired.

        Every ``SWEEP_S`` (and at start) it also queues the jobs of every study still ``complete``: those a crash
        left between completion and queueing, and those whose queueing failed (a database error): one study's
        failure never leaves the others of its tick unqueued until a restart. The dedupe keys make it idempotent.
        """
        quiet = self.config.service.quiet_period_s
        next_sweep = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + SWEEP_S
                    if not self._queue_studies(self.store.studies_in_state("complete")):
                        next_sweep = time.monotonic() + DB_RETRY_S
                completed = self.store.complete_quiet_studies(quiet)
                if completed:
                    self.metrics.studies.inc(len(completed))
                    if not self._queue_studies(completed):
                        next_sweep = time.monotonic() + DB_RETRY_S
                for job in self.queue.take_back_expired():
                    self._count_failure(job)
            except Exception:  # the scheduler must outlive a database hiccup
                log.exception("scheduler tick failed")
            self._stop.wait(TICK_S)

    def _queue_studies(self, study_uids: list[str]) -> bool:
        """Queue each study's jobs; False when some could not be (they stay complete, for the next sweep)."""
        ok = True
        for uid in study_uids:
            if self._stop.is_set():
                return ok
            try:
                self._queue_study(uid)
            except Exception as exc:  # logged without the UID (a study is named by its position in the tick)
                ok = False
                log.error("cannot queue the jobs of a complete study (%s); retried shortly", type(exc).__name__)
        return ok

    def _queue_study(self, study_uid: str) -> None:
        from medsight.serving.routing import SeriesInfo, plan_jobs

        study = self.store.study(study_uid)
        if study is None or study.state != "complete":
            # gone, already processed, or re-opened by a late instance since it was found complete: the re-run's
            # completion queues it (jobs queued now would run on a study still receiving, and that completion would
            # find them by their dedupe key instead of running on the whole study)
            return
        frames = self._frames_per_series(study_uid)
        infos = [
            SeriesInfo(
                series_uid=s.series_uid,
                modality=s.modality or "",
                sop_class_uids=tuple(s.sop_classes),
                n_instances=s.n_instances,
                body_part=s.body_part or "",
                series_description=s.series_description or "",
                calling_ae=s.calling_ae or "",
                max_frames=frames.get(s.series_uid, 1),
            )
            for s in self.store.series(study_uid)
            if not s.is_result
        ]
        rerun = study.rerun_count
        for match in plan_jobs(self.config, infos):
            self.queue.enqueue(
                INFERENCE,
                study_uid,
                match.route,
                {"series": list(match.series_uids), "apply_per": match.per},
                dedupe_key=f"{study_uid}/{match.route}/{rerun}",
            )
        self.store.mark_processed(study_uid)

    def _frames_per_series(self, study_uid: str) -> dict[str, int]:
        """Each series' NumberOfFrames, read from the header of its first stored instance (the rows do not hold
        it): routing keeps multi-frame instances (a cine, an enhanced object) away from 2D models, and treats a
        multi-frame CT or MR as a volume. One small read per series, not per instance: a series' instances share
        their kind (a CT of 500 slices, a cine of multi-frame clips). An unreadable file counts as 1."""
        import pydicom

        frames: dict[str, int] = {}
        for inst in self.store.instances(study_uid):
            if inst.is_result or inst.series_uid in frames:
                continue
            try:
                header = pydicom.dcmread(inst.path, stop_before_pixels=True, specific_tags=["NumberOfFrames"])
                frames[inst.series_uid] = int(header.get("NumberOfFrames") or 1)
            except Exception:  # damaged or gone: the job that reads it reports that, by name
                frames[inst.series_uid] = 1
        return frames

    # -------------------------------------------------------------------------------------------- working

    def _work(self, worker: str) -> None:
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"job-{worker}")
        while not self._stop.is_set():
            try:
                job = self.queue.claim(worker)
            except Exception:  # a database hiccup must not end the worker: the queue is still there next tick
                log.exception("worker %s cannot claim a job; trying again", worker)
                self._stop.wait(DB_RETRY_S)
                continue
            if job is None:
                self._stop.wait(TICK_S)
                continue
            _test_hold(self._stop)
            if self._stop.is_set():
                break  # claimed as shutdown began: not started, so stop() puts it back in the queue
            started = time.monotonic()
            runner = run_inference if job.kind == INFERENCE else run_export
            future = pool.submit(runner, self.ctx, job)
            try:
                result = future.result(timeout=self.config.service.job_timeout_s)
            except concurrent.futures.TimeoutError:
                # the thread cannot be killed: leave it and give the worker a fresh one
                pool.shutdown(wait=False, cancel_futures=True)
                pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"job-{worker}")
                timeout = self.config.service.job_timeout_s
                self._failed(job, f"timed out after {timeout:g} s", retryable=True, worker=worker)
                continue
            except Retryable as exc:
                self._failed(job, str(exc), retryable=True, worker=worker)
                continue
            except MedsightError as exc:
                self._failed(job, str(exc), retryable=False, worker=worker)
                continue
            except Exception as exc:  # a bug or an unexpected library error: retried, then dead-lettered
                log.exception("job %s (%s %s) failed", job.id, job.kind, job.target)
                self._failed(job, f"{type(exc).__name__}: {exc}", retryable=True, worker=worker)
                continue
            try:
                self._done(job, result, worker, started)
            except Exception:  # the job stays running under its lease: it expires and the job runs again
                log.exception("job %s (%s %s) ran but cannot be recorded as done", job.id, job.kind, job.target)
                self._stop.wait(DB_RETRY_S)
        pool.shutdown(wait=False, cancel_futures=True)

    def _done(self, job: Any, result: dict[str, Any], worker: str, started: float) -> None:
        done = self.queue.complete(job.id, result, worker=worker)
        if not _still_ours(done, job, worker, ("done",)):
            # the lease expired and the job was taken back (or finished) meanwhile: this run is not the record
            log.warning(
                "job %s (%s %s) finished after it was taken back; its result is not recorded",
                job.id,
                job.kind,
                job.target,
            )
            return
        self.metrics.job_latency.labels(job.kind, job.target).observe(time.monotonic() - started)
        if job.kind == EXPORT or not result.get("exports"):
            study = self.store.study(job.study_uid)
            model = job.payload.get("route", job.target)
            if study and study.completed_at and (job.kind == INFERENCE or _all_exports_done(self, job)):
                self.metrics.study_latency.labels(model).observe(time.time() - study.completed_at)
        log.info("job %s done: %s %s", job.id, job.kind, job.target)

    def _failed(self, job: Any, error: str, *, retryable: bool, worker: str) -> None:
        try:
            updated = self.queue.fail(job.id, error, retryable=retryable, worker=worker)
        except Exception:  # the job stays running under its lease: it expires and counts as a failed attempt
            log.exception("job %s (%s %s) failed and cannot be recorded as failed", job.id, job.kind, job.target)
            self._stop.wait(DB_RETRY_S)
            return
        if not _still_ours(updated, job, worker, ("failed", "dead")) or updated.last_error != error[:MAX_ERROR_CHARS]:
            return  # a stale report (the lease expired and the job was taken back): counted where that happened
        self._count_failure(updated)
        state = getattr(updated.state, "value", updated.state)
        if state == "dead":
            log.error(
                "job %s (%s %s) is dead after %d attempt(s): %s", job.id, job.kind, job.target, updated.attempts, error
            )
        else:
            log.warning("job %s (%s %s) failed (attempt %d): %s", job.id, job.kind, job.target, updated.attempts, error)

    def _count_failure(self, job: Any) -> None:
        """A failed attempt (and a dead letter when it was the last) in the metrics, by kind and model/destination."""
        self.metrics.failures.labels(job.kind, job.target).inc()
        if getattr(job.state, "value", job.state) == "dead":
            self.metrics.dead.labels(job.kind, job.target).inc()


def run_worker_process(config: SiteConfig, worker: str, stop: Any, events: Any, grace_s: float) -> None:
    """A worker process's life: open the database, store and models, take jobs until the service says stop.

    Signals are the service process's to handle (it tells every worker to stop through ``stop``); observations go
    back to it through ``events`` (:class:`~medsight.serving.metrics.RelayedMetrics`).
    """
    from medsight.serving.metrics import RelayedMetrics

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s worker {worker}: %(message)s")
    host = Service(config, grace_s=grace_s)
    host.metrics = RelayedMetrics(events)  # type: ignore[assignment]  # the four metrics a worker records
    host.models.preload([r.bundle for r in config.routes])
    freeze_start_up_objects()

    def watch() -> None:
        stop.wait()
        host._stop.set()

    threading.Thread(target=watch, name="stop-watch", daemon=True).start()
    try:
        host._work(worker)
    finally:
        host.engine.dispose()


def freeze_start_up_objects() -> None:
    """Move everything alive now (torch, the loaded models, the app: ~590k objects) out of the cyclic collector.

    Why: each full collection walked them all, holding the GIL about 0.35 s (benchmarks/gc_pause.py), so every
    C-STORE acknowledgement and HTTP request in flight waited. They live as long as the process, so scanning them
    finds nothing; objects made later are collected as before.
    """
    gc.collect()  # what is garbage already goes now, not into the permanent generation
    gc.freeze()


def _test_hold(stop: threading.Event) -> None:
    """Test seam: while ``$MEDSIGHT_TEST_HOLD_JOBS/hold`` exists a claimed job waits (running, lease held), so a
    test can kill the process while a job runs. Unset in production: one environment lookup per job."""
    folder = os.environ.get("MEDSIGHT_TEST_HOLD_JOBS")
    if not folder:
        return
    (Path(folder) / "claimed").touch()
    while (Path(folder) / "hold").exists() and not stop.is_set():
        time.sleep(0.05)


def _still_ours(now: Any, claimed: Any, worker: str, states: tuple[str, ...]) -> bool:
    """Whether the queue took this worker's report: the job (as the queue returned it) is in one of ``states``
    under the same claim (worker and attempt) as when this worker took it."""
    state = getattr(now.state, "value", now.state)
    return bool(state in states and now.worker == worker and now.attempts == claimed.attempts)


def _all_exports_done(service: Service, job: Any) -> bool:
    """Whether every export of the inference job ``job`` (an export) came from is done: that job's results have
    reached all their destinations. Only its own exports count: those of another route (another model) or of an
    earlier run of the study have their own latency, or none when they never arrive."""
    source = job.payload.get("inference_job")
    siblings = [
        j
        for j in service.queue.list(study_uid=job.study_uid)
        if j.kind == EXPORT and (source is None or j.payload.get("inference_job") == source)
    ]
    return all(getattr(j.state, "value", j.state) == "done" for j in siblings)
