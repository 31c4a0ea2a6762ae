"""Fast detection of workers that died mid-job (SIGKILL, OOM killer, lost node), and re-queueing their jobs.

rq finds abandoned jobs on its own, but late: a StartedJobRegistry entry expires only after the
job monitoring interval + 60 s (forking worker) or the whole job timeout + 60 s (in-process worker,
whose main thread is busy with the job). Our workers therefore publish a short-lived liveness key
from a background thread; a worker whose key has expired is dead:
- any of its jobs still marked started goes through the abandoned-job cleanup
  (`worker.stored.clean_started_registry`: retry if retries are left, else failed; a job that is no
  plain scan job failed as refused; nothing a job names is called);
- any job it had claimed but not started (worker/handover.py) goes back to the front of its queue,
  without using up a retry (it never ran).
A worker whose key expired but whose main process still runs on the reaper's own host is not dead,
only starved of CPU (or stopped): its jobs are left alone, since re-running them would run them twice.
The same thread moves jobs whose retry back-off is over back to their queues (every second), so
retries do not wait for rq's scheduler lock to expire when the worker holding it was killed.
Jobs of workers that never published liveness are left to the registries' own expiry.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.executions import Execution
from rq.registry import StartedJobRegistry

from ralf.core.settings import Settings
from worker.handover import move_due_scheduled, return_claims
from worker.jobs import note_crashed_attempt
from worker.keys import alive_key, members_key, process_key, reaper_lock_key
from worker.stored import GuardedJob, clean_started_registry
from worker.webhooks import schedule_failed_callbacks

log = logging.getLogger(__name__)


def _this_process() -> str:
    import psutil

    return f"{socket.gethostname()} {os.getpid()} {psutil.Process().create_time():.3f}"


def _runs_here(record: bytes | str | None) -> bool:
    """True when `record` names a process of this host that still exists: a worker whose liveness key
    expired only because it was starved of CPU (or paused), not dead. Workers on other hosts are judged
    by their key alone."""
    if not record:
        return False
    import psutil

    try:
        host, pid, started = (record.decode() if isinstance(record, bytes) else record).split()
        return host == socket.gethostname() and abs(psutil.Process(int(pid)).create_time() - float(started)) < 0.01
    except (ValueError, psutil.Error):
        return False


class LivenessBeat:
    """Refreshes `<prefix>:alive:<worker>` every ttl/3 seconds from a daemon thread; optionally reaps."""

    def __init__(
        self, connection: Redis, settings: Settings, worker_name: str, queues: list[Queue] | None = None
    ) -> None:
        self.connection = connection
        self.settings = settings
        self.worker_name = worker_name
        self.queues = queues or []  # non-empty: also look for dead workers' jobs on every beat
        self.interval_s = max(1.0, settings.worker_liveness_ttl_s / 3)
        self.schedule_every_s = 1.0  # due retries are moved this often (by workers that serve queues)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        with self.connection.pipeline() as pipe:
            pipe.sadd(members_key(self.settings), self.worker_name)
            pipe.set(alive_key(self.settings, self.worker_name), os.getpid(), ex=self.settings.worker_liveness_ttl_s)
            pipe.execute()

    def start(self) -> "LivenessBeat":
        if self.queues:  # the worker's main process (a work horse beats for it without queues)
            self.connection.set(process_key(self.settings, self.worker_name), _this_process())
        self.beat()
        self._thread = threading.Thread(target=self._run, name=f"liveness-{self.worker_name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        reap_after = 0.0
        next_beat = time.monotonic() + self.interval_s
        while not self._stop.wait(self.schedule_every_s if self.queues else self.interval_s):
            try:
                if self.queues:
                    move_due_scheduled(self.connection, self.queues)
                if time.monotonic() < next_beat:
                    continue
                next_beat = time.monotonic() + self.interval_s
                self.beat()
                if self.queues and time.monotonic() >= reap_after:
                    requeue_abandoned(self.connection, self.settings, self.queues)
            except RedisError as exc:  # Redis restarting: keep beating once it is back
                log.warning("liveness beat of %s failed: %s", self.worker_name, exc)
                # After an outage every key may have expired: give live workers one TTL to beat
                # again before judging anyone dead.
                reap_after = time.monotonic() + self.settings.worker_liveness_ttl_s + self.interval_s
                next_beat = 0.0
            except Exception:  # noqa: BLE001 - this thread must outlive any surprise
                log.exception("liveness thread of %s", self.worker_name)

    def stop(self, *, forget: bool = True) -> None:
        """Stop beating; `forget` also removes the worker's keys (clean shutdown)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if forget:
            try:
                with self.connection.pipeline() as pipe:
                    pipe.delete(alive_key(self.settings, self.worker_name))
                    pipe.delete(process_key(self.settings, self.worker_name))
                    pipe.srem(members_key(self.settings), self.worker_name)
                    pipe.execute()
            except RedisError as exc:
                log.warning("could not remove liveness keys of %s: %s", self.worker_name, exc)


def _execution_worker(connection: Redis, job_id: str, execution_id: str, serializer: object) -> str:
    try:
        return Execution.fetch(execution_id, job_id, connection).worker_name
    except ValueError:  # execution hash expired: the job remembers its last worker
        try:
            return GuardedJob.fetch(job_id, connection=connection, serializer=serializer).worker_name or ""
        except Exception:  # noqa: BLE001 - a vanished job has nothing left to recover
            return ""


def _note_crash(connection: Redis, job_id: str, serializer: object) -> None:
    try:
        job = GuardedJob.fetch(job_id, connection=connection, serializer=serializer)
        note_crashed_attempt(job)
        job.save_meta()
    except Exception as exc:  # noqa: BLE001 - best effort: the re-queue matters more
        log.warning("could not mark job %s as crashed: %s", job_id, exc)


def dead_workers(connection: Redis, settings: Settings, names: set[str]) -> set[str]:
    """Those of `names` that published liveness once and whose key has expired since."""
    candidates = [n for n in names if n and connection.sismember(members_key(settings), n)]
    if not candidates:
        return set()
    return set(_silent(connection, settings, candidates))


def _silent(connection: Redis, settings: Settings, names: list[str]) -> list[str]:
    """Those of `names` whose liveness key has expired and that are not a live process on this host."""
    with connection.pipeline() as pipe:
        for name in names:
            pipe.exists(alive_key(settings, name))
            pipe.get(process_key(settings, name))
        flags = pipe.execute()
    return [
        name
        for name, alive, record in zip(names, flags[0::2], flags[1::2])
        if not alive and not _runs_here(record)
    ]


def requeue_abandoned(connection: Redis, settings: Settings, queues: list[Queue]) -> list[str]:
    """Hand jobs of dead liveness-publishing workers to rq's abandoned-job handling; returns their ids.

    The cleanup (`worker.stored.clean_started_registry`, rq's without calling anything a job names)
    retries a job with retries left and fails the others; we only mark the dead executions as
    expired (score 0) so that cleanup picks them up now instead of a minute or more later. A lock
    keeps concurrent reapers from racing.
    """
    lock = connection.lock(reaper_lock_key(settings), timeout=30, blocking=False)
    if not lock.acquire(blocking=False):
        return []
    recovered: list[str] = []
    try:
        for queue in queues:
            registry = StartedJobRegistry(queue=queue)
            entries = registry.get_job_and_execution_ids(cleanup=False)
            if not entries:
                continue
            owners = {
                (job_id, exec_id): _execution_worker(connection, job_id, exec_id, queue.serializer)
                for job_id, exec_id in entries
            }
            dead = dead_workers(connection, settings, set(owners.values()))
            expired = [f"{job_id}:{exec_id}" for (job_id, exec_id), owner in owners.items() if owner in dead]
            if not expired:
                continue
            for key in expired:  # their retry decodes with PyAV (see worker.jobs.job_options)
                _note_crash(connection, key.split(":", 1)[0], queue.serializer)
            connection.zadd(registry.key, {key: 0 for key in expired}, xx=True)
            # only the entries scored 0 above are old enough
            recovered += clean_started_registry(
                queue,
                settings.failure_ttl_s,
                timestamp=1,
                on_failed=lambda job_id: schedule_failed_callbacks(connection, settings, job_id),
            )
            log.warning("re-queued jobs of dead workers %s: %s", sorted(dead), recovered)
        for name in _forgettable(connection, settings):
            # Jobs it took off a queue but never started go back to the front of their queue.
            returned = return_claims(connection, settings, name, queues)
            if returned:
                log.warning("re-queued jobs claimed by dead worker %s: %s", name, returned)
                recovered.extend(returned)
            connection.srem(members_key(settings), name)
            connection.delete(process_key(settings, name))
    finally:
        with contextlib.suppress(Exception):  # the lock expired meanwhile: nothing to release
            lock.release()
    return recovered


def _forgettable(connection: Redis, settings: Settings) -> list[str]:
    """Dead members that own no started job any more (their jobs were just handled)."""
    names = [n.decode() if isinstance(n, bytes) else n for n in connection.smembers(members_key(settings))]
    return _silent(connection, settings, names) if names else []

