"""The two modes of the scan worker (`ScanWorkerBase`, worker/worker_base.py), as rq has `Worker` and
`SimpleWorker`, and the rule that picks one (`worker_class_for`, used by worker/workers.py).

- `ForkScanWorker` (CPU): the model is loaded and warmed up in the parent *before* forking; every
  horse inherits it copy-on-write and scans at once. The horse keeps rq's isolation: a crash, leak
  or hard timeout kills only the horse, and the parent moves the job to retry/failed. The parent
  does this with ONE torch thread: GNU OpenMP (PyTorch's CPU thread pool) is not fork-safe, and a
  horse forked from a parent that ran a parallel region hangs in its first one. Each horse then
  sets its own thread count (RALF_TORCH_THREADS, default all cores) and builds a fresh pool.
- `InProcessScanWorker` (CUDA): a CUDA context does not survive `fork()` (a child cannot use the
  parent's context), so jobs run in the worker process itself like `rq.SimpleWorker`: the model
  stays resident on the GPU. The price: a crash takes the worker down (its job is then recovered
  through the liveness keys, see worker/liveness.py, and the container restarts), and the main
  thread is busy during a job so rq's own heartbeat covers the whole job timeout.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import redis
from rq import SimpleWorker, Worker
from rq.job import Job
from rq.queue import Queue

from ralf.core.settings import Settings, WorkerMode
from worker.jobs import note_crashed_attempt
from worker.liveness import LivenessBeat
from worker.worker_base import ScanWorkerBase


class ForkScanWorker(ScanWorkerBase, Worker):
    """Each job in a work horse forked from the process holding the model (CPU)."""

    mode: ClassVar[WorkerMode] = "fork"
    # GNU OpenMP is not fork-safe: no thread pool may exist when a horse is forked (see above).
    idle_threads: ClassVar[int | None] = 1
    jobs_run: ClassVar[str] = "in forked work horses"

    def handle_work_horse_killed(self, job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
        # The horse died without an answer (e.g. a decoder segfault on damaged input): the retry,
        # if any, decodes with PyAV. handle_job_failure, which follows, saves the meta with the job.
        note_crashed_attempt(job)
        with contextlib.suppress(redis.RedisError):
            job.save_meta()
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        # Threads do not survive fork: the horse beats for the worker too, so a horse that outlives a
        # killed parent finishes its job instead of having it re-run elsewhere at the same time.
        LivenessBeat(self.connection, self.settings, self.name).start()
        if self._job_threads:
            import torch

            torch.set_num_threads(self._job_threads)
        super().main_work_horse(job, queue)


class InProcessScanWorker(ScanWorkerBase, SimpleWorker):
    """Jobs in the worker process itself, on the resident model and its CUDA context (CUDA)."""

    mode: ClassVar[WorkerMode] = "in-process"
    jobs_run: ClassVar[str] = "in this process"

    def get_heartbeat_ttl(self, job: Job) -> int:
        # Nothing heartbeats while the job runs, so the entry must outlive the job timeout.
        timeout = job.timeout if job.timeout and job.timeout > 0 else self.worker_ttl
        return int(timeout) + 60


WORKER_CLASSES: dict[WorkerMode, type[ScanWorkerBase]] = {"fork": ForkScanWorker, "in-process": InProcessScanWorker}


def resolve_mode(mode: WorkerMode, settings: Settings) -> WorkerMode:
    """`auto`: in-process when the scan device resolves to CUDA, fork otherwise."""
    if mode != "auto":
        return mode
    return "in-process" if settings.scan_options().resolved_device() == "cuda" else "fork"


def worker_class_for(mode: WorkerMode, settings: Settings) -> type[ScanWorkerBase]:
    return WORKER_CLASSES[resolve_mode(mode, settings)]
