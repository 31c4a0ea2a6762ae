"""A job as one key may see it: its state from rq, its verdict with the key's own name for the input
and without server paths (evidence folder, media roots), and the links to it."""

from __future__ import annotations

from rq.job import Job

from api.context import Services
from api.models import SCAN_STATUSES, Scan, ScanLinks
from api.ownership import Ownership
from pipeline.verdict import Verdict
from worker.queue import JobNotFound, fetch_job, job_state, job_verdict


def links(job_id: str) -> ScanLinks:
    return ScanLinks(self=f"/v1/scans/{job_id}", report=f"/v1/scans/{job_id}/report")


def public_verdict(ctx: Services, verdict: Verdict, name: str) -> Verdict:
    """The verdict with `name` as its path, no evidence folder, server folders scrubbed from texts."""
    return verdict.model_copy(
        update={
            "path": name,
            "evidence_dir": None,
            "error": ctx.scrub(verdict.error),
            "warnings": [ctx.scrub(w) or "" for w in verdict.warnings],
        }
    )


def deleted_snapshot_key(ctx: Services, job_id: str) -> str:
    return ctx.settings.key("api", "deleted", job_id)


def _snapshot(ctx: Services, job_id: str) -> Verdict | None:
    raw = ctx.connection.get(deleted_snapshot_key(ctx, job_id))
    return None if raw is None else Verdict.model_validate_json(raw)


def scan_view(ctx: Services, own: Ownership) -> Scan:
    """Raises JobNotFound when the job has expired and nothing was kept of it."""
    if own.deleted_at is not None:
        verdict = _snapshot(ctx, own.job_id)
        shown = public_verdict(ctx, verdict, own.content) if verdict else None
        return Scan(
            id=own.job_id, status="deleted", kind=own.kind, source=None, content=own.content,
            submitted_at=own.submitted_at, deleted_at=own.deleted_at, verdict=shown,
            label=shown.label if shown else None, score=shown.score if shown else None, links=links(own.job_id),
        )  # fmt: skip
    job = fetch_job(ctx.connection, own.job_id)
    return job_view(ctx, job, own)


def job_view(ctx: Services, job: Job, own: Ownership) -> Scan:
    state = job_state(job)
    verdict = job_verdict(job) if state.status == "finished" else None
    shown = public_verdict(ctx, verdict, own.source or own.content) if verdict else None
    return Scan(
        id=job.id,
        status=state.status if state.status in SCAN_STATUSES else "queued",  # type: ignore[arg-type]
        kind=own.kind,
        source=own.source,
        content=own.content,
        submitted_at=own.submitted_at,
        progress=state.progress,
        stage=state.stage,
        enqueued_at=state.enqueued_at,
        started_at=state.started_at,
        ended_at=state.ended_at,
        error=ctx.scrub(state.error),
        label=shown.label if shown else None,
        score=shown.score if shown else None,
        verdict=shown,
        links=links(job.id),
    )


def find_view(ctx: Services, own: Ownership) -> Scan | None:
    try:
        return scan_view(ctx, own)
    except JobNotFound:
        return None
