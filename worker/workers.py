"""`ScanWorker`: an rq worker that loads the model once per process and warms it up before the first job.

Why not rq's default worker as is: `rq.Worker` forks a fresh work horse per job, so a model loaded
lazily inside the job dies with the horse and is reloaded for every video.

- fork mode (CPU): the model is loaded and warmed up in the parent *before* forking; every horse
  inherits it copy-on-write and scans at once. The horse keeps rq's isolation: a crash, leak or
  hard timeout kills only the horse, and the parent moves the job to retry/failed.
  The parent does this with ONE torch thread: GNU OpenMP (PyTorch's CPU thread pool) is not
  fork-safe, and a horse forked from a parent that ran a parallel region hangs in its first one.
  Each horse then sets its own thread count (RALF_TORCH_THREADS, default all cores) and builds a
  fresh pool.
- in-process mode (CUDA): a CUDA context does not survive `fork()` (a child cannot use the parent's
  context), so jobs run in the worker process itself like `rq.SimpleWorker`: the model stays
  resident on the GPU. The price: a crash takes the worker down (its job is then recovered through
  the liveness keys, see worker/liveness.py, and the container restarts), and the main thread is
  busy during a job so rq's own heartbeat covers the whole job timeout.
`auto` picks in-process when the scan device resolves to CUDA, fork otherwise.

Use it as `ralf-cli worker`, or as `rq worker ... --worker-class worker.workers.ScanWorker`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from rq import Worker
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from worker.jobs import preload_scanner, worker_settings
from worker.liveness import LivenessBeat
from worker.settings import Settings, WorkerMode

log = logging.getLogger(__name__)


def resolve_mode(mode: WorkerMode, settings: Settings) -> WorkerMode:
    if mode != "auto":
        return mode
    return "in-process" if settings.scan_options().resolved_device() == "cuda" else "fork"


class ScanWorker(Worker):
    """rq worker with a preloaded, warmed-up Scanner, fork or in-process jobs, and liveness keys."""

    def __init__(
        self,
        queues: str | Queue | Sequence[str | Queue],
        *args: Any,
        mode: WorkerMode | None = None,
        warm_up: bool = True,
        **kwargs: Any,
    ) -> None:
        # JSON is the only wire format of this project. `rq worker` passes its pickle default unless
        # told otherwise (and builds its queues with it), so the serializer is fixed here and the
        # queues are rebuilt from their names.
        listed = [queues] if isinstance(queues, (str, Queue)) else list(queues)
        if kwargs.get("connection") is None and isinstance(listed[0], Queue):
            kwargs["connection"] = listed[0].connection
        kwargs["serializer"] = JSONSerializer
        super().__init__([q.name if isinstance(q, Queue) else q for q in listed], *args, **kwargs)
        self.settings = worker_settings()
        self.mode = resolve_mode(mode or self.settings.worker_mode, self.settings)
        self.warm_up = warm_up
        self._liveness: LivenessBeat | None = None
        self._job_threads = 0

    @property
    def fork_jobs(self) -> bool:
        return self.mode == "fork"

    def prepare_model(self) -> None:
        import torch

        self._job_threads = self.settings.torch_threads or torch.get_num_threads()
        # No OpenMP pool may exist at fork time (see the module docstring).
        torch.set_num_threads(1 if self.fork_jobs else self._job_threads)
        started = time.perf_counter()
        scanner = preload_scanner(self.settings)
        loaded = time.perf_counter()
        if self.warm_up:
            scanner.warm_up()
        self.log.info(
            "Worker %s: model %s loaded in %.1f s, warm-up %.1f s, jobs run %s",
            self.name,
            scanner.model_version,
            loaded - started,
            time.perf_counter() - loaded,
            "in forked work horses" if self.fork_jobs else "in this process",
        )
        for warning in scanner.warnings:
            self.log.warning("Worker %s: %s", self.name, warning)

    def work(self, *args: Any, **kwargs: Any) -> bool:
        self.prepare_model()
        self._liveness = LivenessBeat(self.connection, self.settings, self.name, queues=self.queues).start()
        try:
            return super().work(*args, **kwargs)
        finally:
            self._liveness.stop()

    def execute_job(self, job: Job, queue: Queue) -> None:
        if self.fork_jobs:
            super().execute_job(job, queue)
            return
        # What rq.SimpleWorker does: no fork, the preloaded model (and its CUDA context) is used here.
        self.prepare_execution(job)
        self.perform_job(job, queue)
        self.set_state(WorkerStatus.IDLE)

    def get_heartbeat_ttl(self, job: Job) -> int:
        if self.fork_jobs:
            return super().get_heartbeat_ttl(job)
        # In-process: nothing heartbeats while the job runs, so the entry must outlive the job timeout.
        timeout = job.timeout if job.timeout and job.timeout > 0 else self.worker_ttl
        return int(timeout) + 60

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        # Threads do not survive fork: the horse beats for the worker too, so a horse that outlives a
        # killed parent finishes its job instead of having it re-run elsewhere at the same time.
        LivenessBeat(self.connection, self.settings, self.name).start()
        if self._job_threads:
            import torch

            torch.set_num_threads(self._job_threads)
        super().main_work_horse(job, queue)
