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

Modules: `callbacks.py` (callback sets, scheduling, delivery states), `sender.py` (claiming and
POSTing deliveries), `signing.py` (the signature headers: `sign`, `verify_signature`).
"""

from worker.webhooks.callbacks import (
    EVENTS,
    CallbackRefused,
    DeliveryState,
    callbacks_key,
    check_callback_url,
    delivery_id,
    delivery_key,
    due_key,
    job_deliveries,
    register_callback,
    schedule_callbacks,
    schedule_failed_callbacks,
    shown_url,
)
from worker.webhooks.sender import PostResult, WebhookSender, event_body, post_json
from worker.webhooks.signing import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    JOB_HEADER,
    SIGNATURE_HEADER,
    SIGNATURE_TOLERANCE_S,
    TIMESTAMP_HEADER,
    sign,
    verify_signature,
)

__all__ = [
    "DELIVERY_HEADER",
    "EVENTS",
    "EVENT_HEADER",
    "JOB_HEADER",
    "SIGNATURE_HEADER",
    "SIGNATURE_TOLERANCE_S",
    "TIMESTAMP_HEADER",
    "CallbackRefused",
    "DeliveryState",
    "PostResult",
    "WebhookSender",
    "callbacks_key",
    "check_callback_url",
    "delivery_id",
    "delivery_key",
    "due_key",
    "event_body",
    "job_deliveries",
    "post_json",
    "register_callback",
    "schedule_callbacks",
    "schedule_failed_callbacks",
    "shown_url",
    "sign",
    "verify_signature",
]
