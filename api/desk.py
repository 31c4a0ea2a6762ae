"""The review desk (/review): sign in with a review key, the queue of flagged and uncertain verdicts with
filters, one job with its report, and the decision form. Every form carries a CSRF token; a request from
another origin is refused; nothing is shown without a session."""

from __future__ import annotations

import secrets
from datetime import datetime, timezone

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from api.bodies import read_form
from api.context import Ctx, Services
from api.desk_pages import CSS, DESK_CSP, job_page, login_page, queue_page
from api.problems import Problem
from api.reviews import OUTCOMES, Candidate, QueueFilter, ReviewDecision, ReviewStore, candidate_for, candidates
from api.scans import html_page, report_html
from api.sessions import LOGIN_COOKIE, SESSION_COOKIE, Session, SessionStore, same_token

router = APIRouter(prefix="/review", include_in_schema=False)
QUEUE_LIMIT = 500


def _html(body: str, status: int = 200) -> HTMLResponse:
    # same-origin: the desk's own form posts carry their Origin (with no-referrer a browser sends
    # `Origin: null`, which the origin check refuses); nothing leaks to other sites.
    response = html_page(body, DESK_CSP, referrer="same-origin")
    response.status_code = status
    return response


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _to_login() -> RedirectResponse:
    return RedirectResponse("/review/login", status_code=303)


def _session(request: Request, ctx: Services) -> Session | None:
    session = SessionStore(ctx.connection, ctx.settings).get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        return None
    record = ctx.keys.get(session.key_id)
    return session if record is not None and record.active and record.grants("review") else None


def _same_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise Problem(403, "cross-origin form submissions are refused", kind="forbidden")


async def _form(request: Request, session_csrf: str | None) -> dict[str, str]:
    """The posted form, after the origin and CSRF checks (403 on failure)."""
    _same_origin(request)
    fields = await read_form(request)
    if not same_token(fields.get("csrf"), session_csrf):
        raise Problem(403, "the form's CSRF token is missing or wrong; reload the page", kind="csrf")
    return fields


@router.get("/static/desk.css")
def stylesheet() -> Response:
    return Response(
        CSS, media_type="text/css", headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"}
    )


@router.get("")
def desk_root() -> RedirectResponse:
    return RedirectResponse("/review/queue", status_code=303)


def _login_form(request: Request, error: str | None = None, status: int = 200) -> HTMLResponse:
    token = secrets.token_urlsafe(32)
    response = _html(login_page(token, error), status)
    response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=_secure(request), path="/review")
    return response


@router.get("/login")
def login_form(request: Request) -> HTMLResponse:
    return _login_form(request)


@router.post("/login")
async def login(request: Request, ctx: Ctx) -> Response:
    fields = await _form(request, request.cookies.get(LOGIN_COOKIE))
    record = await run_in_threadpool(ctx.keys.authenticate, fields.get("key", ""))
    if record is None or not record.grants("review"):
        return _login_form(request, "That key is unknown, revoked, or has no review scope.", 401)
    token, _ = await run_in_threadpool(SessionStore(ctx.connection, ctx.settings).open, record.key_id, record.name)
    response = RedirectResponse("/review/queue", status_code=303)
    response.set_cookie(
        SESSION_COOKIE, token, httponly=True, samesite="strict", secure=_secure(request), path="/",
        max_age=ctx.settings.api_session_ttl_s,
    )  # fmt: skip
    response.delete_cookie(LOGIN_COOKIE, path="/review")
    return response


@router.post("/logout")
async def logout(request: Request, ctx: Ctx) -> Response:
    session = await run_in_threadpool(_session, request, ctx)
    if session is not None:
        await _form(request, session.csrf)
        await run_in_threadpool(SessionStore(ctx.connection, ctx.settings).close, request.cookies.get(SESSION_COOKIE))
    response = _to_login()
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _day(text: str | None, end: bool = False) -> datetime | None:
    if not text:
        return None
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        raise Problem(400, "dates are YYYY-MM-DD", kind="invalid-request") from None
    return day.replace(hour=23, minute=59, second=59) if end else day


def _score(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return min(1.0, max(0.0, float(text)))
    except ValueError:
        raise Problem(400, "scores are numbers between 0 and 1", kind="invalid-request") from None


def queue_filter(request: Request) -> QueueFilter:
    q = request.query_params
    label = q.get("label") or None
    if label not in (None, "fake", "real"):
        raise Problem(400, "label is fake or real", kind="invalid-request")
    reviewed = {"yes": True, "no": False, "": None}.get(q.get("reviewed", ""), None)
    return QueueFilter(
        label=label, min_score=_score(q.get("min_score")), max_score=_score(q.get("max_score")),  # type: ignore[arg-type]
        since=_day(q.get("since")), until=_day(q.get("until"), end=True), reviewed=reviewed,
    )  # fmt: skip


@router.get("/queue")
def review_queue(request: Request, ctx: Ctx) -> Response:
    session = _session(request, ctx)
    if session is None:
        return _to_login()
    chosen = queue_filter(request)
    store = ReviewStore(ctx.connection, ctx.settings)
    everything = list(candidates(ctx.connection, ctx.settings, store.finals()))
    everything.sort(key=lambda c: (c.final is not None, -(c.verdict.score or 0.0)))
    shown = [c for c in everything if chosen.keeps(c)][:QUEUE_LIMIT]
    return _html(queue_page(shown, chosen, session.key_name, session.csrf, len(everything)))


def _candidate(ctx: Services, job_id: str) -> Candidate:
    found = (
        candidate_for(ctx.connection, ctx.settings, ReviewStore(ctx.connection, ctx.settings), job_id)
        if len(job_id) <= 200
        else None
    )
    if found is None:
        raise Problem(404, "no finished scan with this id", kind="not-found")
    return found


@router.get("/jobs/{job_id}")
def review_job(job_id: str, request: Request, ctx: Ctx) -> Response:
    session = _session(request, ctx)
    if session is None:
        return _to_login()
    found = _candidate(ctx, job_id)
    history = ReviewStore(ctx.connection, ctx.settings).history(job_id)
    return _html(job_page(found, history, session.key_name, session.csrf))


@router.get("/jobs/{job_id}/report")
def review_report(job_id: str, request: Request, ctx: Ctx) -> Response:
    session = _session(request, ctx)
    if session is None:
        return _to_login()
    found = _candidate(ctx, job_id)
    return html_page(report_html(ctx, job_id, found.content))


@router.post("/jobs/{job_id}/decisions")
async def record_decision(job_id: str, request: Request, ctx: Ctx) -> Response:
    session = await run_in_threadpool(_session, request, ctx)
    if session is None:
        return _to_login()
    fields = await _form(request, session.csrf)
    return await run_in_threadpool(_record, ctx, session, job_id, fields)


def _record(ctx: Services, session: Session, job_id: str, fields: dict[str, str]) -> Response:
    found = _candidate(ctx, job_id)
    store = ReviewStore(ctx.connection, ctx.settings)
    outcome, note = fields.get("outcome", ""), fields.get("note", "").strip()
    if outcome not in OUTCOMES or len(note) > 2000:
        error = "Choose confirm fake, overturn to real or unsure (notes up to 2000 characters)."
        return _html(job_page(found, store.history(job_id), session.key_name, session.csrf, error), 422)
    store.append(
        ReviewDecision(
            job_id=job_id, outcome=outcome, note=note, reviewer_key_id=session.key_id,  # type: ignore[arg-type]
            reviewer_name=session.key_name, decided_at=datetime.now(timezone.utc), model_label=found.verdict.label,
            model_score=found.verdict.score, threshold=found.verdict.threshold,
        )
    )  # fmt: skip
    return RedirectResponse(f"/review/jobs/{job_id}", status_code=303)
