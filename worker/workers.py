"""`ScanWorker`: the scan worker of the configured mode, for `ralf-cli worker` and for
`rq worker ... --worker-class worker.workers.ScanWorker`.

Constructing `ScanWorker(...)` gives an instance of the class its `mode` names (default
RALF_WORKER_MODE; worker/worker_classes.py): `ForkScanWorker` (CPU: a horse per job, forked from the
process holding the model) or `InProcessScanWorker` (CUDA: jobs in the process holding the model and
its CUDA context); `auto` picks in-process when the scan device resolves to CUDA, fork otherwise. What
both do is `ScanWorkerBase` (worker/worker_base.py). This module sits on top of both, so neither
imports it.

A plain `rq worker` without one of these classes runs whatever a job names: never point one at these
queues.
"""

from __future__ import annotations

from typing import Any

from ralf.core.settings import WorkerMode
from worker.jobs import worker_settings
from worker.worker_base import ClaimLost, ScanWorkerBase
from worker.worker_classes import worker_class_for

__all__ = ["ClaimLost", "ScanWorker"]


class ScanWorker(ScanWorkerBase):
    """Builds the scan worker of `mode` (see the module docstring); never an instance of itself."""

    def __new__(cls, *args: Any, mode: WorkerMode | None = None, **kwargs: Any) -> Any:  # type: ignore[misc]
        settings = worker_settings()
        # Not an instance of `cls`, so Python does not call __init__ again on what this returns.
        return worker_class_for(mode or settings.worker_mode, settings)(*args, mode=mode, **kwargs)
