"""`ScanWorkerBase`: what both worker modes share (worker/worker_classes.py builds the two modes
on it, worker/workers.py the `ScanWorker` that picks one).

Why not rq's default worker as is: `rq.Worker` forks a fresh work horse per job, so a model loaded
lazily inside the job dies with the horse and is reloaded for every video.

Duties, whichever command started it:
- only scan jobs run: a job naming another function, a bound instance, callbacks, webhooks,
  dependencies or repeats, or an invalid payload, is failed with the reason before anything of it is
  imported (`job_refusal`); jobs are read as `GuardedJob`s, which never import a name stored in
  Redis, and rq's registry maintenance is replaced by one that calls nothing (worker/stored.py);
- crash-safe hand-over: jobs are claimed atomically from the three priority queues into the worker's
  claims hash and leave it atomically for the StartedJobRegistry (worker/handover.py), so a worker
  killed at any moment loses no job; the liveness thread gives dead workers' claims back;
- retries come back on time: the liveness thread (not rq's scheduler process, whose lock outlives a
  killed worker by a minute) moves jobs whose back-off is over to their queue; a burst worker waits
  for retries due within RALF_BURST_RETRY_WAIT_S before it leaves, and says when the others are due.

Two more services, from the main process only (forked horses die after each job):
- metrics (`metrics_port`, RALF_METRICS_PORT): each job's outcome is read back from Redis when the
  job is over and recorded in Prometheus metrics (worker/metrics.py);
- webhooks: a job's callbacks are scheduled once its result is stored (`handle_job_success` /
  `handle_job_failure`), and a sender thread delivers them (worker/webhooks/); a burst worker
  delivers what is due before it leaves.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, ClassVar

import redis
from rq import worker_registration
from rq.exceptions import NoSuchJobError, StopRequested
from rq.executions import Execution
from rq.group import Group
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import FailedJobRegistry, FinishedJobRegistry, ScheduledJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import BaseWorker, WorkerStatus

from pipeline.verdict import Verdict
from ralf.core.settings import WorkerMode
from worker.handover import claim_next, move_due_scheduled, release_claim, return_claims
from worker.jobs import job_refusal, preload_scanner, worker_settings
from worker.keys import claims_key
from worker.liveness import LivenessBeat
from worker.metrics import WorkerMetrics
from worker.stored import GuardedJob, GuardedQueue, clean_started_registry, fail_unreadable, unreadable_reason
from worker.webhooks import WebhookSender, schedule_callbacks, schedule_failed_callbacks

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.25  # how often an idle worker looks at the queues (one Lua call over all three)
_HEARTBEAT_EVERY_S = 5.0
_PUBSUB_WAKE_S = 1.0  # how often the command-channel thread looks at its stop flag


class ClaimLost(RuntimeError):
    """This worker's claim on a job was given back (it was presumed dead); the job is not run here."""


class ScanWorkerBase(BaseWorker):
    """rq worker with a preloaded, warmed-up Scanner, guarded claims, liveness keys, webhooks and metrics.

    The base of both modes (worker/worker_classes.py); `worker.workers.ScanWorker(...)` builds the
    class of the configured mode."""

    mode: ClassVar[WorkerMode]
    # The main process's torch threads while it waits for jobs (None: as many as a job gets).
    idle_threads: ClassVar[int | None] = None
    jobs_run: ClassVar[str]  # where, for the start-up log line

    def __init__(
        self,
        queues: str | Queue | Sequence[str | Queue],
        *args: Any,
        mode: WorkerMode | None = None,
        warm_up: bool = True,
        metrics_port: int | None = None,
        **kwargs: Any,
    ) -> None:
        # JSON is the only wire format of this project. `rq worker` passes its pickle default unless
        # told otherwise (and builds its queues with it), so the serializer is fixed here and the
        # queues are rebuilt from their names.
        listed = [queues] if isinstance(queues, (str, Queue)) else list(queues)
        if kwargs.get("connection") is None and isinstance(listed[0], Queue):
            kwargs["connection"] = listed[0].connection
        kwargs["serializer"] = JSONSerializer
        kwargs["job_class"] = GuardedJob  # never imports a function, callback or webhook named in Redis
        kwargs["queue_class"] = GuardedQueue
        super().__init__([q.name if isinstance(q, Queue) else q for q in listed], *args, **kwargs)
        self.settings = worker_settings()
        if mode not in (None, "auto", self.mode):
            raise ValueError(f"{type(self).__name__} runs jobs {self.mode}, not {mode}")
        self.warm_up = warm_up
        self._liveness: LivenessBeat | None = None
        self._job_threads = 0
        self.metrics_port = metrics_port if metrics_port is not None else self.settings.metrics_port
        self.metrics = WorkerMetrics() if self.metrics_port is not None else None
        self._webhooks: WebhookSender | None = None
        self._burst = False

    def prepare_model(self) -> None:
        import torch

        self._job_threads = self.settings.torch_threads or torch.get_num_threads()
        torch.set_num_threads(self.idle_threads or self._job_threads)
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
            self.jobs_run,
        )
        for warning in scanner.warnings:
            self.log.warning("Worker %s: %s", self.name, warning)
        if self.metrics is not None:
            self.metrics.set_model(
                version=scanner.model_version,
                engine=scanner.engine.name,
                device=str(scanner.device),
                detector=scanner.detector.name,
                decoder=scanner.options.decoder,
                batch_size=scanner.batch_size,
                weights_random=scanner.weights_random,
                mode=self.mode,
            )

    def work(self, *args: Any, **kwargs: Any) -> bool:
        # rq's scheduler process holds its lock for a minute after its worker is killed, and retries
        # stall meanwhile; the liveness thread moves due retries instead (see move_due_scheduled).
        if kwargs.get("with_scheduler"):
            self.log.info("Worker %s: retries are moved by the liveness thread; rq's scheduler is not started", self.name)
        kwargs["with_scheduler"] = False
        self._burst = bool(kwargs.get("burst", args[0] if args else False))
        self.prepare_model()
        if self.metrics is not None and self.metrics_port is not None:
            self.metrics.watch_queues(self.connection, self.settings)
            port = self.metrics.serve(self.metrics_port, self.settings.metrics_host)
            self.log.info("Worker %s: Prometheus metrics on %s:%d/metrics", self.name, self.settings.metrics_host, port)
        return super().work(*args, **kwargs)

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)  # refuses a name an active worker already has
        # Claims under our name belong to an earlier process of the same name, which is gone.
        self._give_back_claims("left by an earlier worker of this name")
        self._liveness = LivenessBeat(self.connection, self.settings, self.name, queues=self.queues).start()
        on_outcome = self.metrics.record_webhook if self.metrics is not None else None
        self._webhooks = WebhookSender(self.connection, self.settings, on_outcome=on_outcome).start()

    def subscribe(self) -> None:
        """rq's subscription to the worker's command channel, with its listening thread waking every
        second instead of every 60 s: redis-py 8's `PubSubWorkerThread.stop()` waits for that wake-up,
        so a worker told to stop (SIGTERM) hung in rq's `unsubscribe` for up to a minute, and container
        runtimes kill it before."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=_PUBSUB_WAKE_S, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def teardown(self) -> None:
        if not self.is_horse:
            with contextlib.suppress(redis.RedisError):
                self._give_back_claims("not started before the worker stopped")
            if self._liveness is not None:
                self._liveness.stop()
            if self._webhooks is not None:
                self._webhooks.stop()
                if self._burst:  # nobody may come after a burst worker: send what is due now
                    with contextlib.suppress(redis.RedisError):
                        deadline = time.monotonic() + 2 * self.settings.webhook_timeout_s
                        while time.monotonic() < deadline and self._webhooks.deliver_due():
                            pass
            if self.metrics is not None:
                self.metrics.stop()
        super().teardown()

    def _give_back_claims(self, why: str) -> None:
        returned = return_claims(self.connection, self.settings, self.name, self.queues)
        if returned:
            self.log.warning("Worker %s: re-queued %d claimed jobs %s: %s", self.name, len(returned), why, returned)

    # --- hand-over ---------------------------------------------------------------------------------
    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        """Claim the next job (high, default, low) atomically into this worker's claims hash.

        Replaces rq's BLPOP over several queues, which leaves a popped job in no list. An idle worker
        polls every IDLE_POLL_S; `timeout` None (burst) returns None at the first empty look."""
        self.set_state(WorkerStatus.IDLE)
        self.procline("Listening on " + ",".join(self.queue_names()))
        idle_since = time.monotonic()
        last_heartbeat = 0.0
        connection_wait_s = 1.0
        while True:
            try:
                if time.monotonic() - last_heartbeat >= _HEARTBEAT_EVERY_S:
                    self.heartbeat()
                    last_heartbeat = time.monotonic()
                if self.should_run_maintenance_tasks:
                    self.run_maintenance_tasks()
                claimed = claim_next(self.connection, self.settings, self.name, [q.key for q in self._ordered_queues])
                connection_wait_s = 1.0
            except redis.exceptions.ConnectionError as exc:
                self.log.error("Worker %s: cannot reach Redis (%s); retrying in %.0f s", self.name, exc, connection_wait_s)
                time.sleep(connection_wait_s)
                connection_wait_s = min(connection_wait_s * self.exponential_backoff_factor, self.max_connection_wait_time)
                continue
            if claimed is not None:
                queue = next(q for q in self._ordered_queues if q.key == claimed[0])
                job = self._claimed_job(claimed[1], queue)
                if job is None:
                    continue
                self.reorder_queues(reference_queue=queue)
                job.redis_server_version = self.get_redis_server_version()
                self.log.info("Worker %s: %s: %s", self.name, queue.name, job.id)
                self.heartbeat()
                return job, queue
            if timeout is None:
                if self._retry_due_soon():  # a burst worker finishes the retries that fall due
                    time.sleep(IDLE_POLL_S)
                    continue
                return None
            if max_idle_time is not None and time.monotonic() - idle_since >= max_idle_time:
                return None
            time.sleep(IDLE_POLL_S)

    def _retry_due_soon(self) -> bool:
        """For a burst worker with empty queues: True when a retry of its queues falls due within
        RALF_BURST_RETRY_WAIT_S (it is moved now if due, and the worker stays for it); else the later
        retries are named in the log, with when the next one is due, and the worker may leave."""
        waiting, next_due = 0, None
        for queue in self.queues:
            key = ScheduledJobRegistry(queue=queue).key
            waiting += self.connection.zcard(key)
            first = self.connection.zrange(key, 0, 0, withscores=True)
            if first and (next_due is None or first[0][1] < next_due):
                next_due = first[0][1]
        if next_due is None:
            return False
        if next_due <= time.time() + self.settings.burst_retry_wait_s:
            move_due_scheduled(self.connection, self.queues)
            return True
        when = datetime.fromtimestamp(next_due, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        self.log.warning(
            "Worker %s: leaving with the queues empty; %d %s still wait%s for %s back-off, the next due at %s: "
            "a worker running then will take %s",
            self.name,
            waiting,
            "retry" if waiting == 1 else "retries",
            "s" if waiting == 1 else "",
            "its" if waiting == 1 else "their",
            when,
            "it" if waiting == 1 else "them",
        )
        return False

    def _claimed_job(self, job_id: str, queue: Queue) -> Job | None:
        """The claimed job, or None (claim dropped) when it vanished or cannot even be read."""
        try:
            try:
                return GuardedJob.fetch(job_id, connection=self.connection, serializer=self.serializer)
            except NoSuchJobError:
                release_claim(self.connection, self.settings, self.name, job_id)
                return None
        except (StopRequested, redis.RedisError):
            raise
        except Exception as exc:  # noqa: BLE001 - a malformed job hash must not stop the worker
            fail_unreadable(self.connection, job_id, queue, unreadable_reason(exc), self.settings.failure_ttl_s)
            release_claim(self.connection, self.settings, self.name, job_id)
            return None

    # --- maintenance: rq's, without calling anything a job names ------------------------------------
    def run_maintenance_tasks(self) -> None:
        """rq's periodic maintenance (scheduler check, registry cleanup, groups); a failure of one part
        is logged and never stops the worker (a worker that exits 0 is not restarted)."""
        for task in (self.clean_registries, lambda: Group.clean_registries(connection=self.connection)):
            try:
                task()
            except (StopRequested, redis.ConnectionError):
                raise
            except Exception:  # noqa: BLE001 - maintenance must not cost the worker
                self.log.exception("Worker %s: maintenance step failed", self.name)
        self.last_cleaned_at = now()

    def clean_registries(self) -> None:
        """rq's `clean_registries` with `clean_started_registry` instead of rq's StartedJobRegistry
        cleanup (which imports and calls an abandoned job's failure callback), and the maintenance
        lock released whatever happens."""
        for queue in self.queues:
            if not queue.acquire_maintenance_lock():
                continue
            try:
                self.log.info("Worker %s: cleaning registries for queue: %s", self.name, queue.name)
                FinishedJobRegistry(queue=queue).cleanup()
                clean_started_registry(queue, self.settings.failure_ttl_s, on_failed=self._announce_failed)
                FailedJobRegistry(queue=queue).cleanup()
                worker_registration.clean_worker_registry(queue)
                queue.intermediate_queue.cleanup(self, queue)
            finally:
                queue.release_maintenance_lock()
        self.last_cleaned_at = now()

    def _announce_failed(self, job_id: str) -> None:
        schedule_failed_callbacks(self.connection, self.settings, job_id)

    def prepare_execution(self, job: Job) -> Execution:
        """rq's own bookkeeping (StartedJobRegistry entry, worker busy) and the claim's release in ONE
        transaction: the job is always either claimed or registered as started.

        Raises ClaimLost when the claim is gone: a reaper judged this worker dead (it was silent for
        longer than its liveness TTL) and gave the job back to its queue, where another worker may
        have it by now; running it here too would run it twice."""
        key = claims_key(self.settings, self.name)
        with self.connection.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    if not pipe.hexists(key, job.id):
                        pipe.reset()
                        raise ClaimLost(job.id)
                    pipe.multi()
                    execution = Execution.create(job, self.get_heartbeat_ttl(job), pipeline=pipe, worker_name=self.name)
                    self.set_state(WorkerStatus.BUSY, pipeline=pipe)
                    pipe.hdel(key, job.id)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        self.execution = execution
        return execution

    def refuse(self, job: Job, queue: Queue, reason: str) -> None:
        """Fail a job that must not run, with `reason`, without retries, callbacks or webhooks."""
        self.log.error("Worker %s: job %s %s", self.name, job.id, reason)
        job.retries_left = 0
        job.webhooks = []
        if self.execution is not None and self.execution.job_id != job.id:
            self.execution = None  # fork mode: the parent still holds the previous job's execution
        job._success_callback_name = job._failure_callback_name = job._stopped_callback_name = None
        self.handle_job_failure(job, queue, exc_string=f"JobRefused: {reason}")
        release_claim(self.connection, self.settings, self.name, job.id)

    # --- outcomes: webhooks and metrics ----------------------------------------------------------
    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: Any) -> None:
        super().handle_job_success(job, queue, started_job_registry)  # the verdict is stored here
        self._schedule_callbacks(job, "finished")

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry: Any = None, exc_string: str = "") -> None:
        super().handle_job_failure(job, queue, started_job_registry=started_job_registry, exc_string=exc_string)
        # Only a failure for good is announced (a retry may still finish), and never for a refused
        # job: it was not enqueued by a client of this project.
        if job.get_status(refresh=False) == JobStatus.FAILED and not exc_string.startswith("JobRefused"):
            self._schedule_callbacks(job, "failed")

    def _schedule_callbacks(self, job: Job, event: str) -> None:
        try:
            schedule_callbacks(self.connection, self.settings, job.id, job.created_at, event)
        except redis.RedisError as exc:  # the result is stored; only the notification is lost
            self.log.error("Worker %s: webhooks of job %s not scheduled: %s", self.name, job.id, exc)

    def _record_outcome(self, job: Job) -> None:
        """Metrics of a job that is over, read back from Redis (a forked horse counted nothing)."""
        if self.metrics is None:
            return
        try:
            status = job.get_status(refresh=True)
            if status == JobStatus.FINISHED:
                value = job.return_value(refresh=True)
                if value is not None:
                    self.metrics.record_verdict(Verdict.model_validate(value))
            elif status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
                self.metrics.record_outcome("failed")
            else:  # scheduled or queued again (or already taken by another worker): a retry
                self.metrics.record_outcome("retried")
        except Exception as exc:  # noqa: BLE001 - metrics never cost a job or the worker
            self.log.warning("Worker %s: no metrics for job %s: %s", self.name, job.id, exc)

    def execute_job(self, job: Job, queue: Queue) -> None:
        reason = job_refusal(job)
        if reason is not None:
            self.refuse(job, queue, reason)
            if self.metrics is not None:
                self.metrics.record_outcome("failed")
            self.set_state(WorkerStatus.IDLE)
            return
        try:
            super().execute_job(job, queue)  # rq's: prepare_execution, then a horse or this process
        except ClaimLost:
            self.log.warning(
                "Worker %s: job %s was given back to its queue while this worker was silent; not running it here",
                self.name,
                job.id,
            )
            self.set_state(WorkerStatus.IDLE)
            return
        self._record_outcome(job)

    def perform_job(self, job: Job, queue: Queue) -> bool:
        # Checked again where the job runs (horse or in-process), in case a subclass or rq path
        # reached this without execute_job.
        reason = job_refusal(job)
        if reason is not None:
            self.refuse(job, queue, reason)
            return False
        return super().perform_job(job, queue)
