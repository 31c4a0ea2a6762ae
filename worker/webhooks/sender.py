"""Delivering webhooks: signed POSTs through download.py's guarded connections, from a
`WebhookSender` thread of each worker's main process, never from the job."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq.serializers import JSONSerializer

from ralf.core.addresses import AddressRefused, Resolver, system_resolver
from ralf.core.settings import Settings
from worker.download import _Guard, _GuardedHTTPHandler, _GuardedHTTPSHandler
from worker.sources import SourceRefused, check_url
from worker.stored import GuardedJob, failure_reason
from worker.webhooks.callbacks import EVENTS, as_text, delivery_key, due_key, shown_url
from worker.webhooks.signing import DELIVERY_HEADER, EVENT_HEADER, JOB_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

log = logging.getLogger(__name__)

_USER_AGENT = "ralf-moderation-webhook/1"
_CLAIM_LEASE_EXTRA_S = 30.0
_CLAIM_BATCH = 10

# Due deliveries -> leased to the caller: their due time moves `lease` seconds ahead, atomically.
_CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], id)
end
return due
"""


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
            return PostResult(False, None, f"cannot reach {shown_url(url)}: {reason}")
        except Exception as exc:  # noqa: BLE001 - http.client oddities: a failed attempt, retried
            return PostResult(False, None, f"{type(exc).__name__}: {exc}")


def event_body(connection: Redis, job_id: str, event: str, ident: str) -> bytes | None:
    """The JSON body of a delivery, built from the stored job: its verdict (finished) or the reason it
    failed. None when the job or its result is gone (expired)."""
    try:
        job = GuardedJob.fetch(job_id, connection=connection, serializer=JSONSerializer)
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
        claimed = [as_text(i) for i in self._claim(keys=[due_key(self.settings)], args=[now, lease, _CLAIM_BATCH])]
        for ident in claimed:
            if stoppable and self._stop.is_set():
                break
            self.attempt(ident)
        return len(claimed)

    def attempt(self, ident: str) -> str:
        """One attempt of one delivery; returns its outcome."""
        key = delivery_key(self.settings, ident)
        record = {as_text(k): as_text(v) for k, v in self.connection.hgetall(key).items()}
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
        # Stored for `status` (anyone holding the job id): the receiver's path and query may hold tokens,
        # so the URL appears as `status` shows it, scheme and host only.
        error = (result.error or "").replace(record["url"], shown_url(record["url"]))
        intervals = self.settings.webhook_retry_intervals_s
        update: dict[str, Any] = {"attempts": attempts, "last_attempt_at": datetime.now(timezone.utc).isoformat()}
        if result.status is not None:
            update["last_status"] = result.status
        if result.ok:
            outcome = "delivered"
            update.update(status="delivered", last_error="")
        elif result.permanent or attempts > len(intervals):
            outcome = "failed"
            update.update(status="failed", last_error=error)
        else:
            outcome = "retried"
            update.update(status="retrying", last_error=error)
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
            f" ({error})" if error else "",
        )
        if self.on_outcome is not None:
            with contextlib.suppress(Exception):
                self.on_outcome(outcome)
        return outcome
