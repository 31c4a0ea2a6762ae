"""Turning a POST /v1/scans into a job: the request parsed (JSON with a URL, or a streamed upload), the
Idempotency-Key honoured, the job enqueued through `worker.queue.enqueue_scan` (the same rules, the
same job ids as `ralf-cli enqueue`), and the submission recorded for the key."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from api.bodies import read_limited
from api.context import Services
from api.keys import KeyRecord
from api.ownership import IdempotencyRecord, Ownership, SourceKind
from api.problems import Problem
from api.uploads import receive_upload
from api.models import ScanRequest
from worker.jobs import describe_validation_error
from worker.queue import EnqueuedJob, EnqueueRefused, enqueue_scan
from worker.sources import SourceRefused, redact_url

JSON_LIMIT = 64 * 1024


@dataclass
class Submission:
    """A parsed request: what to enqueue and how this key names it."""

    request: ScanRequest
    kind: SourceKind
    enqueue_text: str  # the URL, or the stored upload's path
    source: str  # this key's name for it
    content: str
    fingerprint: str  # what the Idempotency-Key is bound to


def _fingerprint(what: str, request: ScanRequest) -> str:
    body = request.model_dump(mode="json", exclude={"url"})
    return hashlib.sha256(f"{what}|{json.dumps(body, sort_keys=True)}".encode()).hexdigest()


def _invalid(exc: ValidationError) -> Problem:
    return Problem(422, f"invalid scan request: {describe_validation_error(exc)}", kind="invalid-request")


async def parse_json(request: Request) -> Submission:
    body = await read_limited(request, JSON_LIMIT)
    try:
        parsed = ScanRequest.model_validate_json(body)
    except ValidationError as exc:
        raise _invalid(exc) from None
    if not parsed.url:
        raise Problem(422, "give a 'url', or upload the file as multipart/form-data", kind="invalid-request")
    if not parsed.url.lower().startswith(("http://", "https://")):
        raise Problem(400, "only http:// and https:// URLs are accepted (or upload the file)", kind="refused-source")
    content = redact_url(parsed.url)
    return Submission(parsed, "url", parsed.url, parsed.url, content, _fingerprint(f"url:{parsed.url}", parsed))


def _form_request(fields: dict[str, str]) -> ScanRequest:
    try:
        options = json.loads(fields["options"]) if fields.get("options", "").strip() else {}
    except json.JSONDecodeError:
        raise Problem(422, "the 'options' field is not JSON", kind="invalid-request") from None
    values = {"options": options, "priority": fields.get("priority") or "default"}
    if fields.get("callback_url"):
        values["callback_url"] = fields["callback_url"]
    try:
        return ScanRequest.model_validate(values)
    except ValidationError as exc:
        raise _invalid(exc) from None


async def parse_upload(request: Request, ctx: Services) -> Submission:
    try:
        upload = await receive_upload(request, ctx.settings)
    except ValueError as exc:  # the deployment has no upload folder
        raise Problem(503, str(ctx.scrub(str(exc))), kind="uploads-unavailable") from None
    parsed = _form_request(upload.fields)
    fingerprint = _fingerprint(f"sha256:{upload.sha256}", parsed)
    return Submission(parsed, "upload", str(upload.path), upload.filename, f"sha256:{upload.sha256}", fingerprint)


async def parse_submission(request: Request, ctx: Services) -> Submission:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        return await parse_json(request)
    if content_type == "multipart/form-data":
        return await parse_upload(request, ctx)
    raise Problem(415, "send application/json (a URL) or multipart/form-data (a file)", kind="unsupported-media-type")


def _conflict(ctx: Services, submission: Submission) -> Problem:
    """409; an upload that only this refused request brought is removed again. (A concurrent upload of the
    very same content that has not recorded itself yet would lose its file and fail: only the same
    content under a replayed key can meet this.)"""
    if submission.kind == "upload" and ctx.ownership.unreferenced(submission.enqueue_text):
        Path(submission.enqueue_text).unlink(missing_ok=True)
    return Problem(409, "this Idempotency-Key was used with another request body", kind="idempotency-conflict")


def check_replay(ctx: Services, key: KeyRecord, idempotency_key: str | None, submission: Submission) -> str | None:
    """The job id an earlier request with this Idempotency-Key made, or None; 409 if its body differed."""
    if idempotency_key is None:
        return None
    earlier = ctx.ownership.idempotent(key.key_id, idempotency_key)
    if earlier is None:
        return None
    if earlier.fingerprint != submission.fingerprint:
        raise _conflict(ctx, submission)
    return earlier.job_id


def _enqueue(ctx: Services, submission: Submission) -> EnqueuedJob:
    try:
        return enqueue_scan(
            ctx.connection,
            ctx.settings,
            submission.enqueue_text,
            priority=submission.request.priority,
            overrides=submission.request.options,
            callback=submission.request.callback_url,
        )
    except (SourceRefused, EnqueueRefused) as exc:
        raise Problem(400, str(ctx.scrub(str(exc))), kind="refused-source") from None


async def submit(
    ctx: Services, key: KeyRecord, submission: Submission, idempotency_key: str | None
) -> tuple[EnqueuedJob, bool]:
    """Enqueue (or find) the job and record it for the key; (job, whether this request created it)."""
    return await run_in_threadpool(_submit, ctx, key, submission, idempotency_key)


def _submit(
    ctx: Services, key: KeyRecord, submission: Submission, idempotency_key: str | None
) -> tuple[EnqueuedJob, bool]:
    enqueued = _enqueue(ctx, submission)
    if idempotency_key is not None:
        record = IdempotencyRecord(fingerprint=submission.fingerprint, job_id=enqueued.job_id)
        held = ctx.ownership.remember(key.key_id, idempotency_key, record)
        if held.fingerprint != submission.fingerprint:  # a concurrent request with this key won; the job stays
            raise Problem(409, "this Idempotency-Key was used with another request body", kind="idempotency-conflict")
    ownership = Ownership(
        job_id=enqueued.job_id,
        kind=submission.kind,
        source=submission.source,
        content=submission.content,
        upload_path=submission.enqueue_text if submission.kind == "upload" else None,
        submitted_at=datetime.now(timezone.utc),
    )
    ctx.ownership.record(key.key_id, ownership)
    return enqueued, enqueued.created
