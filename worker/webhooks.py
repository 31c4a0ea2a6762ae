"""Result webhooks: when a job finishes or fails for good, POST its verdict to the job's callback URLs.

Flow, and why nothing is lost or blocked:
- `ralf-cli enqueue --callback URL` (or RALF_CALLBACK_URL) checks the URL with the download rules
  (http(s), no credentials, the address policy) and adds it to the job's callback set
  `<prefix>:callbacks:<job id>`. A job is shared by everyone who enqueues the same content, so each
  submitter's URL is added to the existing job; if that job has already ended, the delivery is
  scheduled at once.
- The worker stores the verdict (rq's result) first; only then `schedule_callbacks` adds one delivery
  per URL to the sorted set `<prefix>:webhooks:due` (due now) with its record `<prefix>:webhook:<id>`.
  The body is read from the stored result when it is sent, so a delivery never carries anything the
  result store does not hold.
- Deliveries are made by a `WebhookSender` thread in every worker's main process, never by the job:
  a slow or dead receiver cannot hold up the next scan. A sender claims due deliveries atomically
  (their due time moves a lease ahead), so two workers never send the same one at once, and one that
  dies mid-delivery leaves it to be retried when the lease runs out (at-least-once: receivers dedupe
  by `X-RALF-Delivery`).
- A failed attempt (no connection, timeout, any non-2xx answer, a redirect) is retried after
  RALF_WEBHOOK_RETRY_INTERVALS_S; after the last one the delivery is marked failed. The job's result
  is untouched either way.

Signature (as payment APIs do): `X-RALF-Timestamp: <unix seconds>` and
`X-RALF-Signature: v1=<hex HMAC-SHA256 of "<timestamp>." + body under RALF_WEBHOOK_SECRET>`. A receiver
recomputes it over the raw body (`verify_signature`) and rejects old timestamps (replays).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from redis import Redis
from redis.exceptions import RedisError

from worker.addresses import AddressRefused, Resolver, system_resolver
from worker.download import _Guard, _GuardedHTTPHandler, _GuardedHTTPSHandler
from worker.settings import Settings
from worker.sources import SourceRefused, check_url, redact_url

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-RALF-Signature"
TIMESTAMP_HEADER = "X-RALF-Timestamp"
DELIVERY_HEADER = "X-RALF-Delivery"
EVENT_HEADER = "X-RALF-Event"
JOB_HEADER = "X-RALF-Job-Id"
SIGNATURE_TOLERANCE_S = 300
_USER_AGENT = "ralf-moderation-webhook/1"
_CLAIM_LEASE_EXTRA_S = 30.0
_CLAIM_BATCH = 10

EVENTS = {"finished": "scan.finished", "failed": "scan.failed"}

# Due deliveries -> leased to the caller: their due time moves `lease` seconds ahead, atomically.
_CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], id)
end
return due
"""


class CallbackRefused(ValueError):
    """The callback URL breaks the URL rules, or webhooks are not set up; the message says why."""


# --- keys ----------------------------------------------------------------------------------------
def callbacks_key(settings: Settings, job_id: str) -> str:
    return settings.key("callbacks", job_id)


def due_key(settings: Settings) -> str:
    return settings.key("webhooks", "due")


def delivery_key(settings: Settings, delivery_id: str) -> str:
    return settings.key("webhook", delivery_id)


def _keep_s(settings: Settings) -> int:
    return max(settings.result_ttl_s, settings.failure_ttl_s)


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def shown_url(url: str) -> str:
    """A callback URL as others may see it: scheme and host only (paths often carry tokens)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


# --- signing -------------------------------------------------------------------------------------
def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: v1=<hex HMAC-SHA256 of '<timestamp>.' + body>."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify_signature(
    secret: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """What a receiver does: the signature matches the raw body and the timestamp is recent."""
    lowered = {k.lower(): v for k, v in headers.items()}
    timestamp, signature = lowered.get(TIMESTAMP_HEADER.lower()), lowered.get(SIGNATURE_HEADER.lower())
    if not timestamp or not signature or not timestamp.isdigit():
        return False
    if abs((now if now is not None else time.time()) - int(timestamp)) > tolerance_s:
        return False
    expected = sign(secret, int(timestamp), body)
    return any(hmac.compare_digest(expected, part.strip()) for part in signature.split(","))


# --- enqueue side --------------------------------------------------------------------------------
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
    from rq.job import Job, JobStatus
    from rq.serializers import JSONSerializer

    key = callbacks_key(settings, job_id)
    with connection.pipeline() as pipe:
        pipe.sadd(key, url)
        pipe.expire(key, _keep_s(settings))
        pipe.execute()
    try:
        job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except Exception:  # noqa: BLE001 - no job yet: the worker schedules it when the job ends
        return False
    status = job.get_status(refresh=False)
    event = {JobStatus.FINISHED: "finished", JobStatus.FAILED: "failed"}.get(status)  # type: ignore[call-overload]
    if event is None:
        return False
    return bool(schedule_callbacks(connection, settings, job_id, job.created_at, event, only=[url]))


# --- worker side: scheduling ---------------------------------------------------------------------
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
    urls = only if only is not None else sorted(_text(u) for u in connection.smembers(callbacks_key(settings, job_id)))
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
    urls = sorted(_text(u) for u in connection.smembers(callbacks_key(settings, job_id)))
    states = []
    for url in urls:
        ident = delivery_id(job_id, created_at, url)
        record = {_text(k): _text(v) for k, v in connection.hgetall(delivery_key(settings, ident)).items()}
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


# --- worker side: delivering ---------------------------------------------------------------------
class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A webhook is not redirected (its body would be dropped or re-sent elsewhere): 3xx is a failure."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


@dataclass(frozen=True)
class PostResult:
    ok: bool
    status: int | None
    error: str | None
    permanent: bool = False  # retrying cannot help (the address rules refuse the receiver)


def post_json(url: str, body: bytes, headers: dict[str, str], settings: Settings, resolver: Resolver | None = None) -> PostResult:
    """POST `body` through the same guarded connections as downloads: addresses checked on connect,
    no proxies from the environment, a deadline for the whole request, no redirects."""
    try:
        check_url(url, settings.url_policy())  # scheme, credentials, host; the address is checked on connect
    except SourceRefused as exc:
        return PostResult(False, None, str(exc), permanent=True)
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": _USER_AGENT, **headers}
    )
    with _Guard(settings.url_policy(), resolver or system_resolver, settings.webhook_timeout_s) as guard:
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), _GuardedHTTPHandler(guard), _GuardedHTTPSHandler(guard), _NoRedirects()
        )
        try:
            with opener.open(request, timeout=min(guard.left_s(), settings.webhook_timeout_s)) as response:
                response.read(65536)
                return PostResult(200 <= response.status < 300, response.status, None if response.status < 300 else f"HTTP {response.status}")
        except urllib.error.HTTPError as exc:
            return PostResult(False, exc.code, f"HTTP {exc.code} {exc.reason}")
        except AddressRefused as exc:
            return PostResult(False, None, str(exc), permanent=True)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, AddressRefused):
                return PostResult(False, None, str(reason), permanent=True)
            if guard.over():
                return PostResult(False, None, f"no answer within {settings.webhook_timeout_s:g} s")
            return PostResult(False, None, f"cannot reach {redact_url(url)}: {reason}")
        except Exception as exc:  # noqa: BLE001 - http.client oddities: a failed attempt, retried
            return PostResult(False, None, f"{type(exc).__name__}: {exc}")


def event_body(connection: Redis, job_id: str, event: str, ident: str) -> bytes | None:
    """The JSON body of a delivery, built from the stored job: its verdict (finished) or the reason it
    failed. None when the job or its result is gone (expired)."""
    from rq.job import Job
    from rq.serializers import JSONSerializer

    from worker.queue import failure_reason

    try:
        job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except Exception:  # noqa: BLE001 - expired or unreadable
        return None
    payload: dict[str, Any] = {
        "event": event,
        "delivery_id": ident,
        "job_id": job_id,
        "status": "finished" if event == EVENTS["finished"] else "failed",
        "verdict": None,
        "error": None,
        "ended_at": job.ended_at.isoformat() if job.ended_at else None,
    }
    if event == EVENTS["finished"]:
        verdict = job.return_value(refresh=True)
        if verdict is None:
            return None
        payload["verdict"] = verdict
    else:
        payload["error"] = failure_reason(job) or "failed"
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


class WebhookSender:
    """Delivers due webhooks from a daemon thread of the worker's main process (see module docstring)."""

    def __init__(
        self,
        connection: Redis,
        settings: Settings,
        *,
        resolver: Resolver | None = None,
        on_outcome: Callable[[str], None] | None = None,
        poll_s: float = 0.5,
    ) -> None:
        self.connection = connection
        self.settings = settings
        self.resolver = resolver
        self.on_outcome = on_outcome  # "delivered" | "retried" | "failed" (metrics)
        self.poll_s = poll_s
        self._claim = connection.register_script(_CLAIM_DUE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> WebhookSender:
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.settings.webhook_timeout_s + 5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sent = self.deliver_due(stoppable=True)
            except RedisError as exc:
                log.warning("webhook deliveries paused: %s", exc)
                sent = 0
            except Exception:  # noqa: BLE001 - this thread must outlive any surprise
                log.exception("webhook sender")
                sent = 0
            if not sent:
                self._stop.wait(self.poll_s)

    def deliver_due(self, *, stoppable: bool = False) -> int:
        """Claim and attempt the deliveries that are due now; returns how many were claimed.
        `stoppable`: give up the rest of the batch once `stop` was called (they stay leased and
        come back when the lease ends)."""
        now = time.time()
        lease = now + self.settings.webhook_timeout_s + _CLAIM_LEASE_EXTRA_S
        claimed = [_text(i) for i in self._claim(keys=[due_key(self.settings)], args=[now, lease, _CLAIM_BATCH])]
        for ident in claimed:
            if stoppable and self._stop.is_set():
                break
            self.attempt(ident)
        return len(claimed)

    def attempt(self, ident: str) -> str:
        """One attempt of one delivery; returns its outcome."""
        key = delivery_key(self.settings, ident)
        record = {_text(k): _text(v) for k, v in self.connection.hgetall(key).items()}
        if not record or record.get("status") in ("delivered", "failed"):
            self.connection.zrem(due_key(self.settings), ident)
            return "gone"
        secret = self.settings.webhook_secret.get_secret_value() if self.settings.webhook_secret else ""
        attempts = int(record.get("attempts") or 0) + 1
        body = event_body(self.connection, record["job_id"], record["event"], ident)
        if body is None:
            result = PostResult(False, None, "the job's result has expired; nothing to send", permanent=True)
        elif not secret:
            result = PostResult(False, None, "RALF_WEBHOOK_SECRET is not set on this worker: webhooks are not sent unsigned")
        else:
            timestamp = int(time.time())
            headers = {
                TIMESTAMP_HEADER: str(timestamp),
                SIGNATURE_HEADER: sign(secret, timestamp, body),
                DELIVERY_HEADER: ident,
                EVENT_HEADER: record["event"],
                JOB_HEADER: record["job_id"],
            }
            result = post_json(record["url"], body, headers, self.settings, self.resolver)
        intervals = self.settings.webhook_retry_intervals_s
        update: dict[str, Any] = {"attempts": attempts, "last_attempt_at": datetime.now(timezone.utc).isoformat()}
        if result.status is not None:
            update["last_status"] = result.status
        if result.ok:
            outcome = "delivered"
            update.update(status="delivered", last_error="")
        elif result.permanent or attempts > len(intervals):
            outcome = "failed"
            update.update(status="failed", last_error=result.error or "")
        else:
            outcome = "retried"
            update.update(status="retrying", last_error=result.error or "")
        with self.connection.pipeline() as pipe:
            pipe.hset(key, mapping=update)
            if outcome == "retried":
                pipe.zadd(due_key(self.settings), {ident: time.time() + intervals[attempts - 1]}, xx=True)
            else:
                pipe.zrem(due_key(self.settings), ident)
            pipe.execute()
        level = logging.INFO if outcome == "delivered" else logging.WARNING
        log.log(
            level,
            "webhook %s for job %s to %s: %s after %d attempt(s)%s",
            record["event"],
            record["job_id"],
            shown_url(record["url"]),
            outcome,
            attempts,
            f" ({result.error})" if result.error else "",
        )
        if self.on_outcome is not None:
            with contextlib.suppress(Exception):
                self.on_outcome(outcome)
        return outcome
