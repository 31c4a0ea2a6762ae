"""What the scan API takes and answers (pydantic: validated in, documented in the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from api.ownership import SourceKind
from pipeline.verdict import Verdict, VerdictLabel
from ralf.core.settings import Priority
from worker.jobs import ScanOverrides

ScanStatus = Literal[
    "queued", "started", "deferred", "scheduled", "finished", "failed", "stopped", "canceled", "deleted"
]
SCAN_STATUSES = frozenset(get_args(ScanStatus))


class ScanRequest(BaseModel):
    """A scan of a URL (JSON body). Uploads send the same fields as multipart form fields beside `file`
    (`options` as JSON text)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, max_length=4096, description="http(s) URL the workers download (public hosts only)")
    options: ScanOverrides = Field(default_factory=ScanOverrides, description="Sampling and aggregation choices")
    priority: Priority = "default"
    callback_url: str | None = Field(
        None, max_length=4096, description="POSTed the signed verdict when the job ends (the URL rules apply)"
    )


class ScanLinks(BaseModel):
    self: str
    report: str


class Scan(BaseModel):
    """One scan as this key sees it."""

    id: str
    status: ScanStatus
    kind: SourceKind
    source: str | None = Field(description="This key's name for the input (its file name or URL); None once deleted")
    content: str = Field(description="What every submitter of the same job knows: sha256:<hex> of the file, or the URL")
    submitted_at: datetime
    progress: float | None = None
    stage: str | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error: str | None = Field(None, description="Why the job failed (failed jobs only)")
    label: VerdictLabel | None = None
    score: float | None = None
    verdict: Verdict | None = Field(None, description="The verdict once finished (path: this key's name for the input)")
    deleted_at: datetime | None = None
    links: ScanLinks


class ScanPage(BaseModel):
    items: list[Scan]
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next page; None on the last page")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    redis: bool | None = None
    workers: int | None = None
    detail: str | None = None
