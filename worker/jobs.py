"""The job rq runs: `run_scan_job(payload) -> verdict dict`, both JSON, with one Scanner per process.

Error policy (the queue retries exceptions, so only transient trouble may raise):
- bad input found by the worker (outside its media roots, vanished file, refused download,
  undecodable video) -> returns an `error` verdict: the job *succeeds*, nothing is retried;
- transient trouble (network, 5xx, CUDA out of memory) -> raises; rq retries with back-off.
  After out-of-memory the next attempt runs at half the batch size (kept in the job's meta),
  on a Scanner derived with `with_options`: the model is not reloaded.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import re
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.exceptions import RedisError
from rq import get_current_job
from rq.job import Job

from pipeline.verdict import Verdict
from ralf.core.files import file_sha256
from ralf.core.options import AggregationName, ScanOptions
from ralf.core.settings import Priority, Settings
from ralf.shipped import ShippedWeightsMissing
from worker.download import DownloadFailed, DownloadRefused, download
from worker.sources import SourceKind, SourceRefused, check_local_path, check_url, redact_url

if TYPE_CHECKING:
    from pipeline.scan import Scanner

log = logging.getLogger(__name__)

JOB_FUNCTION = "worker.jobs.run_scan_job"  # what rq imports in the worker; clients never import torch
_PROGRESS_EVERY_S = 0.5


class ScanOverrides(BaseModel):
    """Per-job scan choices a client may make. Worker-level choices (device, engine, detector and
    its weights, size limits) stay with the worker's settings: a payload must never pick a file to load."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    every_n: int | None = Field(None, ge=1)
    target_fps: float | None = Field(None, gt=0)
    max_frames: int | None = Field(None, ge=1)
    margin: float | None = Field(None, ge=0.0)
    min_face_size: int | None = Field(None, ge=8)
    min_face_score: float | None = Field(None, ge=0.0, le=1.0)
    aggregation: AggregationName | None = None
    top_k: int | None = Field(None, ge=1)
    suspicious_frames: int | None = Field(None, ge=0)

    def as_options(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class ScanJob(BaseModel):
    """The payload of one queued scan, stored as JSON in the rq job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(description="Resolved absolute path, or the http(s) URL")
    kind: SourceKind
    content_hash: str | None = Field(None, description="sha256 of the file at enqueue time (files only)")
    model_version: str
    options: ScanOverrides = Field(default_factory=ScanOverrides)
    enqueued_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    priority: Priority = "default"

    def identity(self) -> str:
        """What makes two jobs the same: the content (or URL), the model and the scan choices."""
        what = f"sha256:{self.content_hash}" if self.kind == "file" else f"url:{self.source}"
        overrides = json.dumps(self.options.as_options(), sort_keys=True)
        return f"{what}|{self.model_version}|{overrides}"


def job_id_for(scan_job: ScanJob, key_prefix: str) -> str:
    """Deterministic rq job id (letters, digits, '-' only, as rq requires)."""
    return f"{key_prefix}-{hashlib.sha256(scan_job.identity().encode()).hexdigest()[:32]}"


class TransientScanError(RuntimeError):
    """Raised so that rq retries the job later (its retry policy decides how often and when)."""


class InvalidPayload(ValueError):
    """The job's payload is not a ScanJob; permanent (the message names the fields, without links)."""


def describe_validation_error(exc: ValidationError) -> str:
    """pydantic's errors in one line each, without its 'For further information visit ...' links."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "payload"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def parse_payload(payload: object) -> ScanJob:
    try:
        return ScanJob.model_validate(payload)
    except ValidationError as exc:
        raise InvalidPayload(f"invalid scan job payload: {describe_validation_error(exc)}") from None


def job_refusal(job: Job) -> str | None:
    """Why a worker must not run this rq job, or None when it is a well-formed scan job.

    Anyone who can write to Redis can put a job on a queue, and rq would import and call whatever
    function, callback or webhook the job names. A worker of this project runs `run_scan_job` with one
    JSON payload and nothing else: no other function, no bound instance, no keyword arguments, no
    callbacks (rq imports and calls those too), no webhooks (requests to any address), no
    dependencies (a finished job would release others) and no repeats (it would run again). Nothing
    is imported to decide: only the job's stored names and its JSON data are read."""
    try:
        func_name, instance, args, kwargs = job.func_name, job.instance, job.args, job.kwargs
    except Exception as exc:  # noqa: BLE001 - undecodable data (not JSON, not rq's layout)
        return f"refused: the job's data cannot be read as a JSON rq job ({type(exc).__name__})"
    if func_name != JOB_FUNCTION:
        return f"refused: this worker runs only {JOB_FUNCTION}, not {str(func_name)[:200]!r}"
    if instance is not None:
        return "refused: a scan job is a plain function call, not a method of a stored instance"
    if kwargs or not isinstance(args, (list, tuple)) or len(args) != 1:
        return "refused: a scan job takes exactly one positional argument, its JSON payload"
    callbacks = {
        "on_success": job._success_callback_name,
        "on_failure": job._failure_callback_name,
        "on_stopped": job._stopped_callback_name,
    }
    named = sorted(kind for kind, name in callbacks.items() if name)
    if named:
        return f"refused: scan jobs carry no callbacks ({', '.join(named)} set)"
    if job.webhooks:
        return "refused: scan jobs carry no webhooks"
    if job._dependency_ids:
        return "refused: scan jobs depend on no other job"
    if job.repeats_left:
        return "refused: scan jobs are not repeated"
    try:
        parse_payload(args[0])
    except InvalidPayload as exc:
        return f"refused: {exc}"
    return None


@lru_cache(maxsize=1)
def worker_settings() -> Settings:
    """Settings of this worker process, read once from RALF_* environment variables."""
    return Settings()


# --- one Scanner per process -------------------------------------------------------------------
# The model is loaded once, for the worker's own options; a job with other options (its overrides,
# a smaller batch after out-of-memory) gets a Scanner derived with `with_options`, which shares it.
_scanner: Scanner | None = None
_scanner_key: tuple[object, ...] | None = None


def build_scanner(settings: Settings, options: ScanOptions) -> Scanner:
    from pipeline.scan import Scanner  # deferred: clients enqueue without importing torch

    return Scanner(options, settings.model_weights(), preset_if_random=settings.random_preset)


class WorkerSetupError(ValueError):
    """The worker cannot start (a file it needs is unreadable, ...); the message says which and why."""


def unreadable_file_message(what: str, path: Path | str, exc: OSError) -> str:
    """'cannot read <what> <path>: <reason>', with the file's mode and owner next to this process's ids
    (a worker in a container often runs as another user than the one who wrote the file)."""
    message = f"cannot read {what} {path}: {exc.strerror or exc}"
    try:
        info = os.stat(path)
    except OSError:
        return message
    message += (
        f" (the file is {stat.filemode(info.st_mode)}, owner uid {info.st_uid} gid {info.st_gid}; "
        f"this worker runs as uid {os.getuid()} gid {os.getgid()})"
    )
    if isinstance(exc, PermissionError) and not info.st_mode & stat.S_IROTH:
        message += "; make it readable (chmod 644) or run the worker as its owner"
    return message


def preload_scanner(settings: Settings) -> Scanner:
    """Load the model now (worker start), so jobs - and forked work horses - find it ready."""
    try:
        return base_scanner(settings)
    except ShippedWeightsMissing as exc:
        raise WorkerSetupError(str(exc)) from exc
    except OSError as exc:
        filename = exc.filename or settings.weights
        what = "the weights file (RALF_WEIGHTS)" if str(filename) == str(settings.weights) else "a file the scanner needs"
        raise WorkerSetupError(unreadable_file_message(what, filename, exc)) from exc


def base_scanner(settings: Settings) -> Scanner:
    """The process's Scanner for the worker's own options, loaded on first use."""
    global _scanner, _scanner_key
    options = settings.scan_options()
    key = (settings.model_weights(), settings.random_preset, options)
    if _scanner is not None and _scanner_key == key:
        return _scanner
    if _scanner is not None:
        _release_scanner()
    log.info("loading scanner (weights=%s, device=%s)", key[0] or "random", options.device)
    _scanner = build_scanner(settings, options)
    _scanner_key = key
    return _scanner


def scanner_for(settings: Settings, options: ScanOptions) -> Scanner:
    """A Scanner for one job's options: the process's own, or one derived from it (model not reloaded)."""
    base = base_scanner(settings)
    return base if options == base.options else base.with_options(options)


def _release_scanner() -> None:
    """Free the old model before loading another (two on one GPU can run out of memory)."""
    global _scanner, _scanner_key
    _scanner, _scanner_key = None, None
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- progress ----------------------------------------------------------------------------------
class JobProgress:
    """Writes scan progress into the rq job's meta (throttled); best effort, never fails a job.

    Called by `Scanner.scan` as progress(sampled frames done, sampled frames expected or 0).
    """

    def __init__(self, job: Job | None) -> None:
        self.job = job
        self._last = 0.0

    def update(self, stage: str, done: int = 0, total: int = 0, *, force: bool = False) -> None:
        if self.job is None:
            return
        now = time.monotonic()
        if not force and now - self._last < _PROGRESS_EVERY_S:
            return
        self._last = now
        fraction = 1.0 if stage == "done" else (min(done / total, 1.0) if total > 0 else 0.0)
        self.job.meta["progress"] = {"stage": stage, "frames_done": done, "frames_total": total, "fraction": fraction}
        try:
            self.job.save_meta()
        except RedisError as exc:
            log.warning("progress of %s not saved: %s", self.job.id, exc)

    def __call__(self, done: int, total: int) -> None:
        self.update("scanning", done, total)


# --- the job -----------------------------------------------------------------------------------
@contextmanager
def local_copy(job: ScanJob, settings: Settings, progress: JobProgress) -> Iterator[Path]:
    """A local file to scan: the checked path itself, or a download deleted afterwards."""
    if job.kind == "file":
        yield Path(check_local_path(job.source, settings.media_roots).location)
        return
    policy = settings.url_policy()
    check_url(job.source, policy)
    progress.update("downloading", force=True)
    path = download(
        job.source,
        settings.download_dir,
        max_bytes=settings.download_max_bytes,
        timeout_s=settings.download_timeout_s,
        policy=policy,
    )
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def without_path(text: str, path: Path | str, path_as: str, name_as: str) -> str:
    """`text` with `path` written as `path_as` and its file name, as a whole token and from 4
    characters on (a file named 'video' must not rewrite 'not a readable video file'), as `name_as`."""
    shown = text.replace(str(path), path_as)
    name = Path(path).name
    if len(name) >= _NAMES_FROM:
        shown = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", name_as, shown)
    return shown


_NAMES_FROM = 4  # shorter file names identify nothing and would match ordinary words


def shared_reference(job: ScanJob) -> str:
    """How a verdict, job description and `status` name the input: what every submitter of the same job
    knows. A job is shared by everyone who enqueues the same content (files) or URL, so a file is
    named by its content hash, never by the path of whoever enqueued it first; a URL by itself, with
    any `user:password@` removed (a payload written straight into Redis may carry one)."""
    if job.kind == "url":
        return redact_url(job.source)
    return f"sha256:{job.content_hash}" if job.content_hash else "file"


CRASH_META = "crashed_attempts"  # job meta: attempts that died without an answer (signal, killed worker)


def job_options(settings: Settings, job: ScanJob, rq_job: Job | None) -> ScanOptions:
    overrides = job.options.as_options()
    smaller_batch = rq_job.meta.get("batch_size") if rq_job is not None else None
    if smaller_batch:
        overrides["batch_size"] = int(smaller_batch)
    if rq_job is not None and rq_job.meta.get(CRASH_META):
        # An earlier attempt died inside native code (a decoder crash on damaged input, say, or a
        # kill); FFmpeg through PyAV is the most tolerant decoder, so the retry uses it.
        overrides["decoder"] = "pyav"
    return settings.scan_options(**overrides)


def note_crashed_attempt(rq_job: Job) -> None:
    """Record in the job's meta that an attempt died without an answer (see job_options)."""
    rq_job.meta[CRASH_META] = int(rq_job.meta.get(CRASH_META, 0)) + 1


def evidence_folder(settings: Settings, job: ScanJob, rq_job: Job | None) -> Path | None:
    """Where this job's evidence images go: <RALF_EVIDENCE_DIR>/<job id>/ (None: not configured)."""
    if settings.evidence_dir is None:
        return None
    job_id = rq_job.id if rq_job is not None else job_id_for(job, settings.key_prefix)
    return settings.evidence_dir / job_id


def scan_job(job: ScanJob, settings: Settings, rq_job: Job | None = None) -> Verdict:
    """Run one payload to a verdict (the testable core of `run_scan_job`)."""
    from pipeline.engine import InferenceOutOfMemory

    options = job_options(settings, job, rq_job)
    scanner = scanner_for(settings, options)
    progress = JobProgress(rq_job)
    warnings: list[str] = []
    try:
        with local_copy(job, settings, progress) as path:
            if job.kind == "file" and job.content_hash and _readable_sha256(path) != job.content_hash:
                warnings.append("the file changed after it was enqueued; the verdict is for its current content")
            progress.update("scanning", force=True)
            folder = evidence_folder(settings, job, rq_job)
            evidence = {"evidence_dir": folder} if folder is not None else {}
            verdict = scanner.scan(path, progress=progress, **evidence)
            if verdict.error:
                # The scanner names the file it read: a download's temporary file (the user knows the
                # URL), or the first submitter's path (not for the others' eyes, see shared_reference).
                reference = shared_reference(job)
                verdict = verdict.model_copy(update={"error": without_path(verdict.error, path, reference, reference)})
    except (SourceRefused, DownloadRefused) as exc:
        message = str(exc)
        if job.kind == "file":
            message = without_path(message, job.source, shared_reference(job), "the file")
        verdict = scanner.error_verdict(shared_reference(job), message)
    except DownloadFailed as exc:
        raise TransientScanError(str(exc)) from exc
    except InferenceOutOfMemory as exc:
        smaller = max(1, exc.batch_size // 2)
        if rq_job is not None:
            rq_job.meta["batch_size"] = smaller
            rq_job.save_meta()
        raise TransientScanError(f"{exc}; the retry uses batch size {smaller}") from exc
    if rq_job is not None and rq_job.meta.get(CRASH_META):
        warnings.append(
            f"{rq_job.meta[CRASH_META]} earlier attempt(s) died without an answer; this one decoded with PyAV"
        )
    if scanner.model_version != job.model_version:
        warnings.append(f"enqueued for model {job.model_version}, scanned with {scanner.model_version}")
    progress.update("done", force=True)
    return verdict.model_copy(update={"path": shared_reference(job), "warnings": [*verdict.warnings, *warnings]})


def _readable_sha256(path: Path) -> str:
    """The file's sha256; a file this worker cannot read (permissions, a vanished mount) is bad input
    like any other, refused without its path (the job is shared by content)."""
    try:
        return file_sha256(path)
    except OSError as exc:
        raise SourceRefused(f"cannot read the file: {exc.strerror or type(exc).__name__}") from None


def run_scan_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Entry point rq calls with the JSON payload; returns the verdict as a JSON dict."""
    job = parse_payload(payload)
    try:
        return scan_job(job, worker_settings(), get_current_job()).model_dump(mode="json")
    except Exception as exc:
        raise _shareable(exc, job) from None


def _shareable(exc: Exception, job: ScanJob) -> Exception:
    """`exc` as rq may store it: its failure reason is shown by `status`, `result` and `jobs` and sent in
    `scan.failed` webhooks to everyone who enqueued the same content, so the first submitter's path
    (or file name) is replaced by the content reference. The original goes to this worker's log only."""
    text = str(exc)
    shown = without_path(text, job.source, shared_reference(job), "the file") if job.kind == "file" else text
    if shown == text:
        return exc
    log.warning("job failed: %s", text)
    return TransientScanError(f"{type(exc).__name__}: {shown}")

