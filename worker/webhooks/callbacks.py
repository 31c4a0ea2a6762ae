"""A job's webhooks: its callback URLs (checked at enqueue), and one delivery per URL scheduled
once the job's result is stored. Delivering them is `sender.py`."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit

from redis import Redis
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from ralf.core.addresses import Resolver, system_resolver
from ralf.core.settings import Settings
from worker.sources import SourceRefused, check_url
from worker.stored import GuardedJob

log = logging.getLogger(__name__)

EVENTS = {"finished": "scan.finished", "failed": "scan.failed"}


class CallbackRefused(ValueError):
    """The callback URL breaks the URL rules, or webhooks are not set up; the message says why."""


def callbacks_key(settings: Settings, job_id: str) -> str:
    return settings.key("callbacks", job_id)


def due_key(settings: Settings) -> str:
    return settings.key("webhooks", "due")


def delivery_key(settings: Settings, delivery_id: str) -> str:
    return settings.key("webhook", delivery_id)


def _keep_s(settings: Settings) -> int:
    return max(settings.result_ttl_s, settings.failure_ttl_s)


def as_text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def shown_url(url: str) -> str:
    """A callback URL as others may see it: scheme and host only (paths often carry tokens)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


def check_callback_url(url: str, settings: Settings, resolver: Resolver | None = None) -> str:
    """The URL if webhooks may go there (the download rules: http(s), no credentials, public or
    RALF_URL_ALLOW addresses) and a secret is set to sign them; else CallbackRefused."""
    if settings.webhook_secret is None or not settings.webhook_secret.get_secret_value():
        raise CallbackRefused(
            "callbacks are signed with a shared secret: set RALF_WEBHOOK_SECRET (the receiver verifies with it)"
        )
    try:
        return check_url(url, settings.url_policy(), resolver or system_resolver).location
    except SourceRefused as exc:
        raise CallbackRefused(f"callback URL refused: {exc}") from None


def register_callback(connection: Redis, settings: Settings, job_id: str, url: str) -> bool:
    """Add `url` to the job's callbacks; if the job has already ended, schedule its delivery now.
    Returns True when a delivery was scheduled at once. (The URL is added before the job's state is
    read, and a worker stores the result before reading the callbacks: one of the two sees the other.)"""
    key = callbacks_key(settings, job_id)
    with connection.pipeline() as pipe:
        pipe.sadd(key, url)
        pipe.expire(key, _keep_s(settings))
        pipe.execute()
    try:
        job = GuardedJob.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except Exception:  # noqa: BLE001 - no job yet: the worker schedules it when the job ends
        return False
    status = job.get_status(refresh=False)
    event = {JobStatus.FINISHED: "finished", JobStatus.FAILED: "failed"}.get(status)  # type: ignore[call-overload]
    if event is None:
        return False
    return bool(schedule_callbacks(connection, settings, job_id, job.created_at, event, only=[url]))


def schedule_failed_callbacks(connection: Redis, settings: Settings, job_id: str) -> None:
    """A scan job the started-registry cleanup just failed for good (its worker died with no retry
    left) gets its `scan.failed` deliveries; best effort: the failure itself is recorded."""
    try:
        job = GuardedJob.fetch(job_id, connection=connection, serializer=JSONSerializer)
        if job.get_status(refresh=False) == JobStatus.FAILED:
            schedule_callbacks(connection, settings, job_id, job.created_at, "failed")
    except Exception as exc:  # noqa: BLE001
        log.warning("webhooks of failed job %s not scheduled: %s", job_id, exc)


def delivery_id(job_id: str, created_at: datetime | None, url: str) -> str:
    """One delivery per job run and URL: the same ids if scheduling is repeated, new ones for a job
    made again (enqueue --force creates it anew)."""
    made = created_at.isoformat() if created_at is not None else ""
    return hashlib.sha256(f"{job_id}|{made}|{url}".encode()).hexdigest()[:32]


def schedule_callbacks(
    connection: Redis,
    settings: Settings,
    job_id: str,
    created_at: datetime | None,
    event: str,
    *,
    only: list[str] | None = None,
) -> list[str]:
    """Schedule one delivery (due now) per callback URL of the job; call it after the result is stored.
    Returns the new delivery ids (already scheduled ones are left as they are)."""
    urls = only if only is not None else sorted(as_text(u) for u in connection.smembers(callbacks_key(settings, job_id)))
    scheduled = []
    now = time.time()
    for url in urls:
        ident = delivery_id(job_id, created_at, url)
        key = delivery_key(settings, ident)
        record = {
            "job_id": job_id,
            "url": url,
            "event": EVENTS[event],
            "attempts": 0,
            "status": "pending",
            "created_at": datetime.now(timezone.utc).isoformat(),
        }
        if not connection.hsetnx(key, "job_id", job_id):
            continue  # scheduled before (a repeated hand-over, or enqueue and worker both)
        with connection.pipeline() as pipe:
            pipe.hset(key, mapping=record)
            pipe.expire(key, _keep_s(settings))
            pipe.zadd(due_key(settings), {ident: now}, nx=True)
            pipe.execute()
        scheduled.append(ident)
    if scheduled:
        log.info("job %s %s: %d webhook deliveries scheduled", job_id, event, len(scheduled))
    return scheduled


@dataclass(frozen=True)
class DeliveryState:
    """One webhook delivery of a job, as `status` shows it (host only: paths may carry tokens)."""

    delivery_id: str
    url: str
    event: str
    status: str
    attempts: int
    last_error: str | None


def job_deliveries(connection: Redis, settings: Settings, job_id: str, created_at: datetime | None) -> list[DeliveryState]:
    urls = sorted(as_text(u) for u in connection.smembers(callbacks_key(settings, job_id)))
    states = []
    for url in urls:
        ident = delivery_id(job_id, created_at, url)
        record = {as_text(k): as_text(v) for k, v in connection.hgetall(delivery_key(settings, ident)).items()}
        states.append(
            DeliveryState(
                ident,
                shown_url(url),
                record.get("event", ""),
                record.get("status", "waiting for the job"),
                int(record.get("attempts") or 0),
                record.get("last_error") or None,
            )
        )
    return states
