"""Client side of the queue: enqueue scans, read their state and verdicts back. JSON only, never pickle.

Nothing here imports torch or loads a model: enqueueing hashes the file, probes its duration (for
the job timeout) and reads the model version from the weights file header.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from redis import Redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry as RedisRetry
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError, InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import BaseRegistry, FailedJobRegistry, FinishedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer

from pipeline.verdict import Verdict
from ralf.core.addresses import Resolver, system_resolver
from ralf.core.files import file_sha256
from ralf.core.metadata import WeightsError, read_metadata
from ralf.core.options import random_model_version
from ralf.core.settings import PRIORITIES, Priority, Settings
from worker.handover import claimed_by, requeue_if_orphan
from worker.jobs import JOB_FUNCTION, ScanJob, ScanOverrides, job_id_for, shared_reference, unreadable_file_message
from worker.sources import SourceRefused, check_source
from worker.stored import (
    GuardedJob,
    GuardedQueue,
    JobNotFound,
    clean_started_registry,
    failure_reason,
    failure_text,
    fetch_job,
    fetch_many,
    unreadable_reason,
)
from worker.webhooks.callbacks import (
    CallbackRefused,
    check_callback_url,
    register_callback,
    schedule_failed_callbacks,
)

__all__ = ["JobNotFound", "failure_reason", "fetch_job"]  # with the client functions below

log = logging.getLogger(__name__)


class EnqueueRefused(ValueError):
    """The job cannot be (re)placed; the message says why."""


def connect(settings: Settings) -> Redis:
    """Redis client retrying commands with exponential back-off on connection errors (Redis restarts)."""
    retry = RedisRetry(ExponentialWithJitterBackoff(base=0.2, cap=5.0), settings.redis_retries)
    return Redis.from_url(settings.redis_url, retry=retry, socket_connect_timeout=5, health_check_interval=30)


def scan_queue(settings: Settings, connection: Redis, priority: Priority = "default") -> Queue:
    return GuardedQueue(settings.queue_name(priority), connection=connection)


def all_queues(settings: Settings, connection: Redis) -> list[Queue]:
    return [scan_queue(settings, connection, p) for p in PRIORITIES]


def model_version(settings: Settings) -> str:
    """The version the workers will scan with, from the weights file header (no model is built)."""
    try:
        weights = settings.model_weights()
    except (OSError, ValueError) as exc:
        raise EnqueueRefused(str(exc)) from None
    if weights is None:
        return random_model_version(settings.random_preset)
    try:
        return read_metadata(weights).model_version
    except WeightsError as exc:
        raise EnqueueRefused(f"cannot read the model version from {weights}: {exc}") from None
    except OSError as exc:
        raise EnqueueRefused(unreadable_file_message("the weights file", weights, exc)) from None


def job_timeout_s(settings: Settings, duration_s: float | None) -> int:
    """rq job timeout: base + seconds per second of video; the default when the duration is unknown."""
    if duration_s is None:
        return settings.job_timeout_default_s
    return int(settings.job_timeout_base_s + settings.job_timeout_per_video_s * duration_s)


def probe_duration(path: str) -> float | None:
    """Video duration in seconds, or None when the file cannot be probed (the worker will say why).

    Never raises: whatever a file does to the prober, the enqueue goes on (with the default timeout)."""
    from pipeline.decode.probe import probe_video

    try:
        return probe_video(path).duration_s
    except Exception as exc:  # noqa: BLE001 - VideoDecodeError, or anything a hostile file provokes
        log.info("cannot probe %s (%s); it gets the default job timeout", path, exc)
        return None


def retry_policy(settings: Settings) -> Retry | None:
    if settings.retry_max < 1:
        return None
    return Retry(max=settings.retry_max, interval=settings.retry_intervals_s or 0)


class EnqueuedJob(BaseModel):
    job_id: str
    source: str
    queue: str
    status: str
    created: bool  # False: the same video/model/options was already enqueued, this is that job
    timeout_s: int | None = None
    requeued: bool = False  # the existing job sat in no queue, claim or registry and was put back


def build_scan_job(
    text: str,
    settings: Settings,
    *,
    version: str,
    priority: Priority = "default",
    overrides: ScanOverrides | None = None,
    resolver: Resolver | None = None,
) -> tuple[ScanJob, float | None]:
    """Validate one input and describe it as a payload; raises SourceRefused with a clear message.

    `resolver` (host, port -> addresses) resolves URL hosts for the address check; tests pass their own."""
    source = check_source(text, settings.media_roots, settings.url_policy(), resolver or system_resolver)
    if source.kind == "file":
        size, limit = Path(source.location).stat().st_size, settings.max_file_bytes
        if size > limit:  # before hashing: reading a huge file only to refuse it would take minutes
            raise SourceRefused(f"file too large: {source.location} has {size} bytes, the limit is {limit}")
    content_hash = _content_hash(source.location) if source.kind == "file" else None
    duration = probe_duration(source.location) if source.kind == "file" else None
    payload = ScanJob(
        source=source.location,
        kind=source.kind,
        content_hash=content_hash,
        model_version=version,
        options=overrides or ScanOverrides(),
        priority=priority,
    )
    return payload, duration


def _content_hash(path: str) -> str:
    """The file's sha256; a file this client cannot read is refused with why (its own path: the
    submitter gave it)."""
    try:
        return file_sha256(path)
    except OSError as exc:
        raise SourceRefused(unreadable_file_message("the file", path, exc)) from None


def enqueue_scan(
    connection: Redis,
    settings: Settings,
    text: str,
    *,
    priority: Priority = "default",
    force: bool = False,
    overrides: ScanOverrides | None = None,
    version: str | None = None,
    resolver: Resolver | None = None,
    callback: str | None = None,
) -> EnqueuedJob:
    """One job per video; the same video (content), model and options map to the same job id.

    `callback`: an http(s) URL that gets the verdict (signed POST, worker/webhooks/) when the job
    ends; added to an existing job too (each submitter of shared content gets their own call)."""
    if callback is not None:
        try:
            callback = check_callback_url(callback, settings, resolver)
        except CallbackRefused as exc:
            raise EnqueueRefused(str(exc)) from None
    payload, duration = build_scan_job(
        text,
        settings,
        version=version or model_version(settings),
        priority=priority,
        overrides=overrides,
        resolver=resolver,
    )
    job_id = job_id_for(payload, settings.key_prefix)
    # rq's delete and its enqueue are several commands each: a --force of one client between another's
    # creation of the job hash and its push onto the queue would leave the id queued twice (two runs).
    # One lock per job id makes each client's look-delete-create one step.
    with connection.lock(settings.key("enqueue-lock", job_id), timeout=60, blocking_timeout=60):
        return _enqueue_one(connection, settings, payload, job_id, priority, duration, force, callback)


def _enqueue_one(
    connection: Redis,
    settings: Settings,
    payload: ScanJob,
    job_id: str,
    priority: Priority,
    duration: float | None,
    force: bool,
    callback: str | None,
) -> EnqueuedJob:
    queue = scan_queue(settings, connection, priority)
    timeout = job_timeout_s(settings, duration)
    for _ in range(_ENQUEUE_ATTEMPTS):
        if force:
            _drop_for_force(connection, settings, job_id)
            force = False  # once: a job that appears meanwhile is the one asked for
        try:
            job = queue.enqueue(
                JOB_FUNCTION,
                payload.model_dump(mode="json"),
                job_id=job_id,
                unique=True,  # atomic check-and-create: concurrent clients cannot double-enqueue
                job_timeout=timeout,
                result_ttl=settings.result_ttl_s,
                failure_ttl=settings.failure_ttl_s,
                retry=retry_policy(settings),
                description=f"scan {shared_reference(payload)}",  # not the path: the job is shared by content
            )
        except DuplicateJobError:
            try:
                return _existing_job(connection, settings, job_id, payload, callback)
            except (JobNotFound, NoSuchJobError, InvalidJobOperation):
                continue  # deleted between the two looks (a concurrent --force): enqueue again
        if callback is not None:
            register_callback(connection, settings, job.id, callback)
        return EnqueuedJob(
            job_id=job.id, source=payload.source, queue=queue.name, status=_status(job), created=True, timeout_s=timeout
        )
    raise EnqueueRefused(f"job {job_id} kept changing under concurrent enqueues; try again")


_ENQUEUE_ATTEMPTS = 5  # concurrent --force of one file: each retry finds the job a racing client made


def _existing_job(
    connection: Redis, settings: Settings, job_id: str, payload: ScanJob, callback: str | None
) -> EnqueuedJob:
    existing = fetch_job(connection, job_id)
    # A queued job that no queue, worker claim or registry holds would never run (a worker died
    # mid-hand-over under an older version, or state was lost): put it back instead of returning it.
    origin = GuardedQueue(existing.origin, connection=connection)
    requeued = requeue_if_orphan(connection, settings, job_id, origin)
    if requeued:
        existing.refresh()
    if callback is not None:
        register_callback(connection, settings, job_id, callback)
    return EnqueuedJob(
        job_id=job_id,
        source=payload.source,
        queue=existing.origin,
        status=_status(existing),
        created=False,
        timeout_s=existing.timeout,
        requeued=requeued,
    )


def _drop_for_force(connection: Redis, settings: Settings, job_id: str) -> None:
    """Delete the job so that it can be made anew (a job that is gone already is what was asked for).
    Not a job that runs, or that a worker has taken off its queue and is about to start: the new job
    would run beside it."""
    try:
        job = fetch_job(connection, job_id)
        if job.get_status() == JobStatus.STARTED or claimed_by(connection, settings, job_id):
            raise EnqueueRefused(
                f"job {job_id} is running right now; --force can only replace a job that is not running"
            )
        job.delete()
    except (JobNotFound, InvalidJobOperation):
        return


def _status(job: Job) -> str:
    status = job.get_status(refresh=False)
    return str(status.value if isinstance(status, JobStatus) else status or "unknown")


class JobState(BaseModel):
    job_id: str
    status: str
    source: str
    queue: str
    progress: float | None = None
    stage: str | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    worker: str | None = None
    retries_left: int | None = None
    error: str | None = None  # why the job failed (failed jobs only)
    verdict_label: str | None = None


def _payload_source(job: Job) -> str:
    """The job's input as every submitter may see it (content hash for files; see shared_reference)."""
    args = job.args or ()
    if args and isinstance(args[0], dict):
        try:
            return shared_reference(ScanJob.model_validate(args[0]))
        except ValueError:
            return "?"
    return "?"


def job_state(job: Job) -> JobState:
    job.refresh()
    return _state(job, job.latest_result() if _status(job) in _WITH_RESULT else None)


# States whose listing reads the latest result (the verdict, or why it failed).
_WITH_RESULT = (JobStatus.FINISHED.value, JobStatus.FAILED.value)


def _state(job: Job, latest: Result | None) -> JobState:
    """`job` as listed, from its hash as read and its latest result (read only for `_WITH_RESULT`)."""
    status = _status(job)
    progress = job.meta.get("progress") or {}
    verdict = None
    if status == JobStatus.FINISHED.value and latest is not None and latest.type == Result.Type.SUCCESSFUL:
        verdict = _verdict(latest.return_value)
    return JobState(
        job_id=job.id,
        status=status,
        source=_payload_source(job),
        queue=job.origin,
        progress=progress.get("fraction"),
        stage=progress.get("stage"),
        enqueued_at=job.enqueued_at,
        started_at=job.started_at,
        ended_at=job.ended_at,
        worker=job.worker_name,
        retries_left=job.retries_left,
        error=failure_text(job, latest) if status == JobStatus.FAILED.value else None,
        verdict_label=verdict.label if verdict is not None else None,
    )


def job_verdict(job: Job) -> Verdict | None:
    """The stored verdict of a finished job (None while it is not finished)."""
    return _verdict(job.return_value(refresh=True))


def _verdict(value: Any) -> Verdict | None:
    return None if value is None else Verdict.model_validate(value)


LIST_PAGE = 500  # job ids read, and jobs fetched in one pipeline, at a time


def list_jobs(connection: Redis, settings: Settings, *, failed: bool = False) -> list[JobState]:
    """Jobs across the three queues: failed ones only, or everything queued, running, waiting or done."""
    return list(iter_jobs(connection, settings, failed=failed))


def iter_jobs(
    connection: Redis, settings: Settings, *, failed: bool = False, page_size: int = LIST_PAGE
) -> Iterator[JobState]:
    """`list_jobs` a page at a time: results live for days, so a busy deployment holds many jobs.
    Each page of ids costs two pipelined round trips (the job hashes, then the latest results of
    finished and failed jobs); a job met in two registries (it moved while listed) is listed once."""
    seen: set[str] = set()
    for ids in _id_pages(connection, settings, failed, page_size):
        fresh = [job_id for job_id in dict.fromkeys(ids) if job_id not in seen]
        if not fresh:
            continue
        seen.update(fresh)
        fetched = dict(zip(fresh, fetch_many(connection, fresh)))
        for job_id, reason in fetched.items():
            if isinstance(reason, str):  # a malformed hash: listed with why, never read further
                yield JobState(job_id=job_id, status="unreadable", source="?", queue="?", error=reason)
        jobs = [job for job in fetched.values() if isinstance(job, GuardedJob)]
        with_result = [job for job in jobs if _status(job) in _WITH_RESULT]
        with connection.pipeline(transaction=False) as pipe:
            for job in with_result:
                pipe.xrevrange(Result.get_key(job.id), "+", "-", count=1)
            latest = dict(zip((job.id for job in with_result), pipe.execute()))
        for job in jobs:
            entries = latest.get(job.id)
            result = None
            if entries:
                result_id, payload = entries[0]
                result = Result.restore(job.id, result_id.decode(), payload, connection, serializer=JSONSerializer)
            yield _listed_state(job, result)


def _listed_state(job: GuardedJob, latest: Result | None) -> JobState:
    """`_state`, or for a job whose stored fields are not what rq writes, a line saying so: anyone
    who can write to Redis can plant such a hash, and the listing must go on past it."""
    try:
        return _state(job, latest)
    except Exception as exc:  # noqa: BLE001 - malformed stored fields
        return JobState(job_id=job.id, status="unreadable", source="?", queue="?", error=unreadable_reason(exc))


def _id_pages(connection: Redis, settings: Settings, failed: bool, page_size: int) -> Iterator[list[str]]:
    """Job ids per queue (high, default, low): the queue, then its started, scheduled, finished and
    failed registries (failed only, with `failed`); each registry cleaned up once, as rq does when
    it lists one."""
    kinds: list[type[BaseRegistry]] = [FailedJobRegistry]
    if not failed:
        kinds = [StartedJobRegistry, ScheduledJobRegistry, FinishedJobRegistry, FailedJobRegistry]
    for queue in all_queues(settings, connection):
        sources: list[Queue | BaseRegistry] = [] if failed else [queue]
        sources += [kind(queue=queue) for kind in kinds]
        for source in sources:
            if isinstance(source, StartedJobRegistry):  # rq's own cleanup would call a planted job's callback
                clean_started_registry(
                    queue,
                    settings.failure_ttl_s,
                    on_failed=lambda job_id: schedule_failed_callbacks(connection, settings, job_id),
                )
            elif isinstance(source, BaseRegistry):
                source.cleanup()
            yield from _pages(source, page_size)


def _pages(source: Queue | BaseRegistry, page_size: int) -> Iterator[list[str]]:
    start = 0
    while True:
        if isinstance(source, Queue):
            page = source.get_job_ids(start, page_size)
        else:
            page = source.get_job_ids(start, start + page_size - 1, cleanup=False)
        if page:
            yield page
        if len(page) < page_size:
            return
        start += page_size
