"""Moderators' decisions: an append-only trail per job, the review queue (flagged and uncertain
verdicts), and the export of the reviewed videos as a labelled set for `calibrate`/`evaluate`.

Keys (under `<prefix>:api:`): `decisions:<job>` a list only ever appended to (RPUSH; nothing in this
project rewrites or trims it), `final` hash job -> its latest decision, `reviewed` sorted set job ->
time of its latest decision, `decision-counts` hash outcome -> count."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal, get_args

from pydantic import BaseModel, Field
from redis import Redis

from pipeline.verdict import Verdict, VerdictLabel
from ralf.core.settings import Settings
from worker.queue import JobState, fetch_job, iter_jobs, job_verdict, JobNotFound
from worker.jobs import ScanJob, shared_reference

Outcome = Literal["confirm_fake", "overturn_real", "unsure"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
OUTCOME_LABEL: dict[Outcome, Literal["fake", "real"] | None] = {
    "confirm_fake": "fake", "overturn_real": "real", "unsure": None,
}  # fmt: skip


class ReviewDecision(BaseModel):
    """One moderator decision, as stored (who, when, what, and what the model said)."""

    job_id: str
    outcome: Outcome
    note: str = Field("", max_length=2000)
    reviewer_key_id: str
    reviewer_name: str
    decided_at: datetime
    model_label: VerdictLabel
    model_score: float | None
    threshold: float

    @property
    def label(self) -> Literal["fake", "real"] | None:
        return OUTCOME_LABEL[self.outcome]

    @property
    def overturns(self) -> bool:
        return self.label is not None and self.label != self.model_label


class ReviewStore:
    def __init__(self, connection: Redis, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings

    def _k(self, *parts: str) -> str:
        return self.settings.key("api", *parts)

    def append(self, decision: ReviewDecision) -> None:
        """Add a decision; earlier ones stay as they were."""
        text = decision.model_dump_json()
        with self.connection.pipeline() as pipe:
            pipe.rpush(self._k("decisions", decision.job_id), text)
            pipe.hset(self._k("final"), decision.job_id, text)
            pipe.zadd(self._k("reviewed"), {decision.job_id: decision.decided_at.timestamp()})
            pipe.hincrby(self._k("decision-counts"), decision.outcome, 1)
            pipe.execute()

    def history(self, job_id: str) -> list[ReviewDecision]:
        return [
            ReviewDecision.model_validate_json(raw)
            for raw in self.connection.lrange(self._k("decisions", job_id), 0, -1)
        ]

    def final(self, job_id: str) -> ReviewDecision | None:
        raw = self.connection.hget(self._k("final"), job_id)
        return None if raw is None else ReviewDecision.model_validate_json(raw)

    def finals(self) -> dict[str, ReviewDecision]:
        return {
            job_id.decode(): ReviewDecision.model_validate_json(raw)
            for job_id, raw in self.connection.hgetall(self._k("final")).items()
        }

    def counts(self) -> dict[Outcome, int]:
        raw = self.connection.hgetall(self._k("decision-counts"))
        return {outcome: int(raw.get(outcome.encode(), 0)) for outcome in OUTCOMES}


# -- the review queue -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A finished verdict a moderator should look at."""

    job_id: str
    content: str
    verdict: Verdict
    ended_at: datetime | None
    reason: Literal["flagged", "uncertain", "not queued"]
    final: ReviewDecision | None


def _reason(settings: Settings, verdict: Verdict) -> Literal["flagged", "uncertain"] | None:
    if verdict.label == "fake":
        return "flagged"
    if verdict.label == "real" and verdict.score is not None:
        if verdict.score >= verdict.threshold - settings.review_uncertain_margin:
            return "uncertain"
    return None


def candidates(connection: Redis, settings: Settings, finals: dict[str, ReviewDecision]) -> Iterator[Candidate]:
    """Every finished job whose verdict is `fake` (flagged) or `real` close below the threshold (uncertain).
    Reads the verdicts of finished fake/real jobs one by one (fine for a review desk's volumes)."""
    for state in iter_jobs(connection, settings):
        if state.status != "finished" or state.verdict_label not in ("fake", "real"):
            continue
        candidate = _candidate(connection, settings, state, finals.get(state.job_id))
        if candidate is not None:
            yield candidate


def _candidate(
    connection: Redis, settings: Settings, state: JobState, final: ReviewDecision | None
) -> Candidate | None:
    try:
        verdict = job_verdict(fetch_job(connection, state.job_id))
    except JobNotFound:
        return None
    reason = _reason(settings, verdict) if verdict is not None else None
    if verdict is None or reason is None:
        return None
    return Candidate(state.job_id, state.source, verdict, state.ended_at, reason, final)


@dataclass(frozen=True)
class QueueFilter:
    label: Literal["fake", "real"] | None = None
    min_score: float | None = None
    max_score: float | None = None
    since: datetime | None = None
    until: datetime | None = None
    reviewed: bool | None = None

    def keeps(self, c: Candidate) -> bool:
        score = c.verdict.score if c.verdict.score is not None else 0.0
        ended = c.ended_at.replace(tzinfo=c.ended_at.tzinfo or timezone.utc) if c.ended_at else None
        return (
            (self.label is None or c.verdict.label == self.label)
            and (self.min_score is None or score >= self.min_score)
            and (self.max_score is None or score <= self.max_score)
            and (self.since is None or (ended is not None and ended >= self.since))
            and (self.until is None or (ended is not None and ended <= self.until))
            and (self.reviewed is None or (c.final is not None) == self.reviewed)
        )


def candidate_for(connection: Redis, settings: Settings, store: ReviewStore, job_id: str) -> Candidate | None:
    """Any finished job with a verdict, queued for review or not (a moderator may look at any)."""
    try:
        job = fetch_job(connection, job_id)
    except JobNotFound:
        return None
    verdict = job_verdict(job) if job.get_status() == "finished" else None
    if verdict is None:
        return None
    scan = _payload(job.args)
    content = shared_reference(scan) if scan is not None else "?"
    return Candidate(
        job_id, content, verdict, job.ended_at, _reason(settings, verdict) or "not queued", store.final(job_id)
    )


def _payload(args: object) -> ScanJob | None:
    if not isinstance(args, (list, tuple)) or not args or not isinstance(args[0], dict):
        return None
    try:
        return ScanJob.model_validate(args[0])
    except ValueError:
        return None


def job_source(connection: Redis, job_id: str) -> ScanJob | None:
    """The stored payload of a job (where its file lies), or None."""
    try:
        return _payload(fetch_job(connection, job_id).args)
    except JobNotFound:
        return None
