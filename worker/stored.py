"""Jobs as stored in Redis, read without running anything they name.

A job hash names functions: the job's own (`func_name`) and its success, failure and stopped
callbacks. rq imports and calls them wherever it meets the hash, not only when a worker takes the
job off a queue: its StartedJobRegistry cleanup (worker maintenance, and any listing of the
registry) calls an abandoned job's failure callback. Anyone who can write to Redis can plant such
a hash, so every place this project reads a job uses `GuardedJob`, which never imports a stored
name, and cleans the started registry with `clean_started_registry` instead of rq's: an abandoned
job that is not a plain scan job is failed as refused, a hash that cannot even be read is failed
by hand, and nothing is called either way.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import current_timestamp, now

from worker.jobs import JOB_FUNCTION, job_refusal, run_scan_job

log = logging.getLogger(__name__)

_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")


class JobNotFound(LookupError):
    """No job with this id (never enqueued, or its result TTL has passed)."""


class JobRefused(RuntimeError):
    """A stored job asked for something this project never runs (another function)."""


class GuardedJob(Job):
    """An rq job that runs only `run_scan_job` and never imports a name read from Redis.

    Callbacks are never looked up (scan jobs carry none: `job_refusal` fails those that do), and the
    function is resolved from this module, not imported by its stored name."""

    @property
    def func(self) -> Callable[..., Any]:
        if self.func_name != JOB_FUNCTION or self.instance is not None:
            raise JobRefused(f"refused: this worker runs only {JOB_FUNCTION}, not {str(self.func_name)[:200]!r}")
        return run_scan_job

    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None

    def execute_success_callback(self, *args: Any, **kwargs: Any) -> None:
        self._skip_callback("success", self._success_callback_name)

    def execute_failure_callback(self, *args: Any, **kwargs: Any) -> None:
        self._skip_callback("failure", self._failure_callback_name)

    def execute_stopped_callback(self, *args: Any, **kwargs: Any) -> None:
        self._skip_callback("stopped", self._stopped_callback_name)

    def send_webhooks(self, *args: Any, **kwargs: Any) -> None:
        """rq's own webhooks (requests to URLs named in the hash) are never sent; this project's are
        worker/webhooks/, registered only through enqueue's URL checks."""
        if self.webhooks:
            log.warning("job %s: its rq webhooks are not sent (scan jobs carry none)", self.id)

    def _skip_callback(self, kind: str, name: str | None) -> None:
        if name:
            log.warning("job %s: its %s callback %r is not run (scan jobs carry none)", self.id, kind, str(name)[:200])


class GuardedQueue(Queue):
    """An rq queue whose jobs (and registries) are `GuardedJob`s, always read as JSON: for the workers,
    the client, and rq's own tools (`rq info --queue-class worker.stored.GuardedQueue`), whose registry
    counts run rq's cleanup with the queue's job class and serializer."""

    job_class = GuardedJob

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["serializer"] = JSONSerializer
        kwargs.pop("job_class", None)  # never another job class: that one would import what jobs name
        super().__init__(*args, **kwargs)


def fetch_job(connection: Redis, job_id: str) -> GuardedJob:
    if not _JOB_ID.fullmatch(job_id):
        raise JobNotFound(f"{job_id!r} is not a job id (ids are letters, digits, '-' and '_', as enqueue prints them)")
    try:
        return GuardedJob.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        raise JobNotFound(f"no job {job_id!r} (never enqueued, or its result has expired)") from None


def fetch_many(connection: Redis, job_ids: list[str]) -> list[GuardedJob | str | None]:
    """The jobs of `job_ids` in one round trip: a job, None (no such job), or for a hash that cannot
    be read the reason (one malformed hash must not hide the others)."""
    try:
        return list(GuardedJob.fetch_many(job_ids, connection=connection, serializer=JSONSerializer))
    except RedisError:
        raise
    except Exception:  # noqa: BLE001 - some hash is malformed: read them one by one
        return [_fetch_or_reason(connection, job_id) for job_id in job_ids]


def _fetch_or_reason(connection: Redis, job_id: str) -> GuardedJob | str | None:
    try:
        return GuardedJob.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return None
    except RedisError:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed hash
        return unreadable_reason(exc)


def unreadable_reason(exc: Exception) -> str:
    return f"refused: the job cannot be read ({type(exc).__name__})"


def failure_reason(job: Job) -> str | None:
    return failure_text(job, job.latest_result())


def failure_text(job: Job, latest: Result | None) -> str | None:
    """The last line of why the job failed: its latest failed result, else rq's exc_info."""
    text = latest.exc_string if latest is not None and latest.type == Result.Type.FAILED else job.exc_info
    if not text:
        return None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def fail_unreadable(connection: Redis, job_id: str, queue: Queue, reason: str, failure_ttl_s: int) -> None:
    """Mark a job rq cannot even load as failed, by hand (no Job object to hand to rq)."""
    log.error("job %s %s", job_id, reason)
    with connection.pipeline() as pipe:
        pipe.hset(Job.key_for(job_id), mapping={"status": JobStatus.FAILED.value, "exc_info": reason})
        pipe.zadd(FailedJobRegistry(queue=queue).key, {job_id: time.time() + failure_ttl_s})
        pipe.execute()


def clean_started_registry(
    queue: Queue, failure_ttl_s: int, *, timestamp: float | None = None, on_failed: Callable[[str], None] | None = None
) -> list[str]:
    """rq's StartedJobRegistry cleanup without calling anything: every entry expired by `timestamp`
    (default now) is retried when it is a scan job with retries left, else failed; a job that is not
    a plain scan job is failed as refused, a hash that cannot be read is failed by hand. Returns the
    ids handled; `on_failed(job_id)` is told of each scan job failed for good (its webhooks)."""
    registry = StartedJobRegistry(queue=queue, job_class=GuardedJob)
    score = timestamp if timestamp is not None else current_timestamp()
    handled = []
    for job_id in dict.fromkeys(registry.get_expired_job_ids(score)):
        try:
            failed = _abandon(queue, job_id)
        except _JobGone:
            continue
        except RedisError:
            raise
        except Exception as exc:  # noqa: BLE001 - a malformed hash: failed, the cleanup goes on
            fail_unreadable(queue.connection, job_id, queue, unreadable_reason(exc), failure_ttl_s)
            failed = False
        handled.append(job_id)
        if failed and on_failed is not None:
            on_failed(job_id)
    queue.connection.zremrangebyscore(registry.key, 0, score)
    return handled


class _JobGone(Exception):
    """An expired registry entry whose job hash is gone (nothing to do)."""


def _abandon(queue: Queue, job_id: str) -> bool:
    """Retry or fail one abandoned job; True when a scan job failed for good."""
    try:
        job = GuardedJob.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
    except NoSuchJobError:
        raise _JobGone(job_id) from None
    refusal = job_refusal(job)
    with queue.connection.pipeline() as pipe:
        if refusal is None and job.retries_left and job.retries_left > 0:
            job.retry(queue, pipe)
            pipe.execute()
            return False
        if refusal is not None:
            log.error("job %s %s", job_id, refusal)
            job.retries_left = 0
        reason = f"JobRefused: {refusal}" if refusal else f"Moved to FailedJobRegistry, due to AbandonedJobError, at {now()}"
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        job._handle_failure(reason, pipe, worker_name="")
        pipe.execute()
    return refusal is None

