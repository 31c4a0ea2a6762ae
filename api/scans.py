"""The scan API: POST/GET/DELETE /v1/scans, the report of a scan."""

from __future__ import annotations

import base64
import logging
import shutil
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from api.context import Ctx, Services, Submitter
from api.keys import KeyRecord
from api.limits import take_quota
from api.models import Scan, ScanPage
from api.ownership import Ownership
from api.problems import ProblemDetail, Problem
from api.submissions import check_replay, parse_submission, submit
from api.uploads import UploadAborted
from api.views import deleted_snapshot_key, find_view, public_verdict, scan_view
from pipeline.report import CSP, ReportItem, render_report
from pipeline.verdict import VerdictLabel
from worker.queue import JobNotFound, fetch_job, job_state, job_verdict

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/scans", tags=["scans"])
Problems: dict[int | str, dict[str, object]] = {
    status: {"model": ProblemDetail, "content": {"application/problem+json": {}}}
    for status in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
}
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]
_ENDED = {"finished", "failed", "stopped", "canceled"}


def _not_found(job_id: str) -> Problem:
    return Problem(404, f"no scan {job_id[:80]!r} for this key", kind="not-found")


def owned(ctx: Services, key: KeyRecord, job_id: str) -> Ownership:
    """This key's record of the job; another key's job answers 404 exactly like one that never was."""
    own = ctx.ownership.get(key.key_id, job_id) if len(job_id) <= 200 else None
    if own is None:
        raise _not_found(job_id)
    return own


@router.post("", status_code=202, response_model=Scan, responses=Problems,
             openapi_extra={"requestBody": {"content": {
                 "application/json": {"schema": {"$ref": "#/components/schemas/ScanRequest"}},
                 "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                     "file": {"type": "string", "format": "binary"}, "options": {"type": "string"},
                     "priority": {"type": "string"}, "callback_url": {"type": "string"}}}}}, "required": True}})  # fmt: skip
async def create_scan(
    request: Request,
    key: Submitter,
    ctx: Ctx,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Submit a video: JSON `{"url": ...}` or a multipart upload (`file`). The same content (or URL) with
    the same options is the same job (202 when created, 200 when it existed); a repeated
    Idempotency-Key returns its first job, or 409 if the body differs."""
    # Redis calls run in the thread pool: this handler is async (it reads the request stream).
    refusal = await run_in_threadpool(take_quota, ctx.connection, ctx.settings, key)
    if refusal is not None:
        raise Problem(429, refusal.detail, kind="quota-exceeded", headers={"Retry-After": str(refusal.retry_after_s)})
    try:
        submission = await parse_submission(request, ctx)
    except UploadAborted:
        log.info("an upload by key %s stopped halfway; nothing kept", key.key_id)
        return Response(status_code=400)
    replayed = await run_in_threadpool(check_replay, ctx, key, idempotency_key, submission)
    enqueued, created = await submit(ctx, key, submission, idempotency_key)
    view = await run_in_threadpool(lambda: scan_view(ctx, owned(ctx, key, enqueued.job_id)))
    headers = {"Location": view.links.self}
    if replayed is not None:
        headers["Idempotent-Replayed"] = "true"
    status = 202 if created and replayed is None else 200
    return JSONResponse(view.model_dump(mode="json"), status_code=status, headers=headers)


def _decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        return max(0, int(base64.urlsafe_b64decode(cursor.encode()).decode()))
    except ValueError:
        raise Problem(400, "invalid cursor", kind="invalid-request") from None


def _encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(str(position).encode()).decode()


@router.get("", response_model=ScanPage, responses=Problems)
def list_scans(
    key: Submitter,
    ctx: Ctx,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=40)] = None,
    label: Annotated[VerdictLabel | None, Query(description="Only scans with this verdict label")] = None,
) -> ScanPage:
    """This key's scans, newest first, `limit` a page; filter by verdict label."""
    position, total, items = _decode_cursor(cursor), ctx.ownership.total(key.key_id), []
    while position < total and len(items) < limit:
        job_ids = ctx.ownership.page(key.key_id, position, limit)
        if not job_ids:
            break
        for job_id in job_ids:
            position += 1
            own = ctx.ownership.get(key.key_id, job_id)
            view = find_view(ctx, own) if own is not None else None
            if view is not None and (label is None or view.label == label):
                items.append(view)
                if len(items) == limit:
                    break
    return ScanPage(items=items, next_cursor=_encode_cursor(position) if position < total else None)


@router.get("/{job_id}", response_model=Scan, responses=Problems)
def get_scan(job_id: str, key: Submitter, ctx: Ctx) -> Scan:
    """State, progress and (once finished) the verdict of one of this key's scans."""
    view = find_view(ctx, owned(ctx, key, job_id))
    if view is None:
        raise Problem(404, "this scan has expired", kind="not-found")
    return view


def report_html(ctx: Services, job_id: str, name: str) -> str:
    """The HTML report of a finished job with its evidence images (409 while not finished)."""
    try:
        job = fetch_job(ctx.connection, job_id)
    except JobNotFound:
        raise _not_found(job_id) from None
    state = job_state(job)
    verdict = job_verdict(job) if state.status == "finished" else None
    if verdict is None:
        raise Problem(409, f"the scan is {state.status}; its report exists once it has finished", kind="not-finished")
    folder = ctx.settings.evidence_dir / job_id if ctx.settings.evidence_dir is not None else None
    evidence = folder if folder is not None and folder.is_dir() else None
    return render_report([ReportItem(public_verdict(ctx, verdict, name), evidence, name=name)])


def html_page(body: str, csp: str = CSP, referrer: str = "no-referrer") -> HTMLResponse:
    headers = {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Referrer-Policy": referrer,
               "Cache-Control": "no-store", "X-Frame-Options": "DENY"}  # fmt: skip
    return HTMLResponse(body, headers=headers)


@router.get("/{job_id}/report", response_class=HTMLResponse, responses=Problems)
def get_report(job_id: str, key: Submitter, ctx: Ctx) -> HTMLResponse:
    """The self-contained HTML report (inline images, a CSP that forbids every request)."""
    own = owned(ctx, key, job_id)
    if own.deleted_at is not None:
        raise Problem(404, "this scan was deleted; its verdict is kept without the evidence", kind="not-found")
    return html_page(report_html(ctx, job_id, own.source or own.content))


@router.delete("/{job_id}", status_code=204, responses=Problems)
def delete_scan(job_id: str, key: Submitter, ctx: Ctx) -> Response:
    """Remove this key's upload and the evidence (when no other submitter still has the job); the verdict
    is kept as an audit record, without the path."""
    own = owned(ctx, key, job_id)
    if own.deleted_at is not None:
        return Response(status_code=204)
    try:
        job = fetch_job(ctx.connection, job_id)
    except JobNotFound:
        job = None
    if job is not None:
        state = job_state(job)
        if state.status not in _ENDED:
            raise Problem(409, f"the scan is {state.status}; delete it once it has ended", kind="not-finished")
        verdict = job_verdict(job) if state.status == "finished" else None
        if verdict is not None:
            kept = verdict.model_copy(update={"path": own.content, "evidence_dir": None, "evidence": []})
            ctx.connection.set(deleted_snapshot_key(ctx, job_id), kept.model_dump_json())
    owners_left, refs_left = ctx.ownership.mark_deleted(key.key_id, own)
    if own.upload_path and refs_left == 0:
        Path(own.upload_path).unlink(missing_ok=True)
    if owners_left == 0 and ctx.settings.evidence_dir is not None:
        shutil.rmtree(ctx.settings.evidence_dir / job_id, ignore_errors=True)
    return Response(status_code=204)
