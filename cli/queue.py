"""Queue commands: `enqueue`, `status`, `result`, `jobs`, `worker`."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from redis.exceptions import RedisError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rq.job import Job, JobStatus

from cli.app import app
from cli.common import EXIT_ERROR, AggregationFlag, EveryNFlag, FpsFlag, MaxFramesFlag, load_settings, redis_failure
from pipeline.verdict import Verdict
from ralf.core.settings import Priority, Settings, WorkerMode
from worker.jobs import ScanOverrides, describe_validation_error
from worker.queue import (
    EnqueuedJob,
    EnqueueRefused,
    JobNotFound,
    JobState,
    all_queues,
    connect,
    enqueue_scan,
    fetch_job,
    job_state,
    job_verdict,
    list_jobs,
    model_version,
)
from worker.sources import SourceRefused
from worker.stored import GuardedJob, fetch_many
from worker.webhooks import CallbackRefused, check_callback_url, job_deliveries

out = Console()
err = Console(stderr=True)

_DONE = {JobStatus.FINISHED.value, JobStatus.FAILED.value, JobStatus.STOPPED.value, JobStatus.CANCELED.value}


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


@app.command()
def enqueue(
    inputs: Annotated[list[str], typer.Argument(help="Video files under the media roots, or http(s) URLs")],
    wait: Annotated[bool, typer.Option("--wait", help="Block until done, with progress; print the verdicts")] = False,
    priority: Annotated[Priority, typer.Option(help="Queue: high, default or low")] = "default",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Scan again even if already enqueued (also redoes a failed job)")
    ] = False,
    every_n: EveryNFlag = None,
    target_fps: FpsFlag = None,
    max_frames: MaxFramesFlag = None,
    aggregation: AggregationFlag = None,
    wait_timeout: Annotated[float, typer.Option(help="Give up waiting after this many seconds")] = 24 * 3600.0,
    callback: Annotated[
        str | None,
        typer.Option(
            help="POST the verdict here when the job ends, signed with RALF_WEBHOOK_SECRET "
            "[default: $RALF_CALLBACK_URL]",
            metavar="URL",
        ),
    ] = None,
) -> None:
    """Put one scan job per video on the queue and print the job ids (the same video twice gives the same job)."""
    settings = load_settings()
    callback = callback or settings.callback_url
    if callback is not None:
        try:
            check_callback_url(callback, settings)
        except CallbackRefused as exc:
            err.print(f"[red]{escape(str(exc))}[/red]")
            raise typer.Exit(EXIT_ERROR) from None
    try:
        overrides = ScanOverrides(
            every_n=every_n, target_fps=target_fps, max_frames=max_frames, aggregation=aggregation
        )
    except ValidationError as exc:
        err.print(f"[red]invalid scan options:[/red] {escape(describe_validation_error(exc))}")
        raise typer.Exit(EXIT_ERROR) from None
    connection = connect(settings)
    accepted: list[EnqueuedJob] = []
    refused: list[dict[str, str]] = []
    try:
        version = model_version(settings)
    except EnqueueRefused as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(EXIT_ERROR) from None
    redis_error: RedisError | None = None
    # Every input is answered: enqueued, refused with the reason, or (Redis gone) not tried; what was
    # enqueued before a failure is still printed.
    for position, text in enumerate(inputs):
        try:
            accepted.append(
                enqueue_scan(
                    connection,
                    settings,
                    text,
                    priority=priority,
                    force=force,
                    overrides=overrides,
                    version=version,
                    callback=callback,
                )
            )
        except (SourceRefused, EnqueueRefused) as exc:
            refused.append({"input": text, "error": str(exc)})
            err.print(f"[red]refused[/red] {escape(text)}: {escape(str(exc))}")
        except RedisError as exc:
            redis_error = exc
            for skipped in inputs[position:]:
                refused.append({"input": skipped, "error": f"not enqueued: Redis failed ({exc})"})
            break
        except Exception as exc:  # noqa: BLE001 - one odd input must not cost the others their answer
            refused.append({"input": text, "error": f"internal error: {type(exc).__name__}: {exc}"})
            err.print(f"[red]internal error[/red] on {escape(text)}: {escape(type(exc).__name__)}: {escape(str(exc))}")

    failed = False
    if wait and accepted and redis_error is None:
        try:
            states = _wait_for(connection, [job.job_id for job in accepted], timeout_s=wait_timeout, quiet=as_json)
            failed = any(state.status != JobStatus.FINISHED.value for state in states)
            _report_waited(connection, states, refused, as_json, {job.job_id: job.source for job in accepted})
        except RedisError as exc:  # Redis went away while waiting: the jobs are enqueued, say so
            for job in accepted:
                err.print(f"enqueued {job.job_id}\t{escape(job.source)}; its outcome is unknown")
            raise redis_failure(exc, settings) from None
    elif as_json:
        _print_json({"jobs": [job.model_dump() for job in accepted], "refused": refused})
    else:
        for job in accepted:  # plain tab-separated lines: `cut -f1` gives the ids
            note = "" if job.created else f"\talready enqueued ({job.status})"
            if job.requeued:
                note += ", re-queued: no worker held it"
            typer.echo(f"{job.job_id}\t{job.source}{note}")
    if redis_error is not None:
        raise redis_failure(redis_error, settings)
    if refused:
        raise typer.Exit(EXIT_ERROR)
    if failed:
        raise typer.Exit(1)


def _wait_for(connection: Any, job_ids: list[str], *, timeout_s: float, quiet: bool) -> list[JobState]:
    """Poll the jobs' status and progress meta until all are done; a rich progress bar per job."""
    deadline = time.monotonic() + timeout_s
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[stage]}"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
    )
    states: dict[str, JobState] = {}
    with progress:
        tasks = {job_id: progress.add_task(job_id[:24], total=1.0, stage="queued") for job_id in job_ids}
        while True:
            for job in fetch_many(connection, job_ids):
                if not isinstance(job, GuardedJob):
                    continue
                state = job_state(job)
                states[job.id] = state
                stage = state.stage or state.status if state.status not in _DONE else state.status
                fraction = 1.0 if state.status in _DONE else (state.progress or 0.0)
                progress.update(tasks[job.id], completed=fraction, stage=stage)
            if len(states) == len(job_ids) and all(s.status in _DONE for s in states.values()):
                break
            if time.monotonic() > deadline:
                err.print(f"[yellow]stopped waiting after {timeout_s:g} s; the jobs keep running[/yellow]")
                break
            time.sleep(0.5)
    return [states[job_id] for job_id in job_ids if job_id in states]


def _report_waited(
    connection: Any, states: list[JobState], refused: list[dict[str, str]], as_json: bool, sources: dict[str, str]
) -> None:
    # A stored verdict names a file by its content hash (jobs are shared by content); this user gave a
    # path, so that is what their report shows.
    verdicts = {
        s.job_id: verdict.model_copy(update={"path": sources.get(s.job_id, verdict.path)})
        for s in states
        if s.status == "finished" and (verdict := job_verdict(fetch_job(connection, s.job_id))) is not None
    }
    if as_json:
        _print_json(
            {
                "jobs": [
                    {
                        "job_id": s.job_id,
                        "status": s.status,
                        "error": s.error,
                        "verdict": v.model_dump(mode="json") if (v := verdicts.get(s.job_id)) else None,
                    }
                    for s in states
                ],
                "refused": refused,
            }
        )
        return
    for state in states:
        verdict = verdicts.get(state.job_id)
        if verdict is not None:
            _print_verdict(state.job_id, verdict)
        else:
            out.print(f"[red]{state.job_id} {state.status}[/red]: {state.error or 'no verdict'}")


def _print_verdict(job_id: str, verdict: Verdict) -> None:
    colour = {"fake": "red", "real": "green", "no_face": "yellow", "error": "magenta"}[verdict.label]
    score = "-" if verdict.score is None else f"{verdict.score:.3f}"
    out.print(
        f"{job_id}  [{colour}]{verdict.label}[/{colour}]  score {score} (threshold {verdict.threshold:.3f})  "
        f"{verdict.path}"
    )
    if verdict.error:
        out.print(f"    error: {verdict.error}")
    for track in verdict.tracks:
        out.print(
            f"    track {track.track_id}: P(fake) {track.score:.3f}, {track.num_faces} faces, "
            f"{track.first_time_s:.1f}-{track.last_time_s:.1f} s"
        )
    for warning in verdict.warnings:
        out.print(f"    [yellow]warning:[/yellow] {warning}")


def _load_job(job_id: str, settings: Settings) -> Job:
    connection = connect(settings)
    try:
        return fetch_job(connection, job_id)
    except JobNotFound as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(4) from None
    except RedisError as exc:
        raise redis_failure(exc, settings) from None


@app.command()
def status(
    job_id: Annotated[str, typer.Argument(help="Job id printed by enqueue")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Where a job stands: queued, started (with progress), finished, failed (with the reason), and its
    webhook deliveries (receiver host, state, attempts, last error)."""
    settings = load_settings()
    job = _load_job(job_id, settings)
    try:
        state = job_state(job)
        deliveries = [vars(d) for d in job_deliveries(job.connection, settings, job.id, job.created_at)]
    except RedisError as exc:
        raise redis_failure(exc, settings) from None
    if as_json:
        _print_json({**state.model_dump(mode="json"), "webhooks": deliveries})
        return
    table = Table(show_header=False, box=None)
    for name, value in state.model_dump().items():
        if value is not None:
            table.add_row(name, f"{value:.0%}" if name == "progress" else str(value))
    for delivery in deliveries:
        error = f" ({delivery['last_error']})" if delivery["last_error"] else ""
        table.add_row("webhook", f"{delivery['url']}: {delivery['status']}, {delivery['attempts']} attempt(s){error}")
    out.print(table)


@app.command()
def result(
    job_id: Annotated[str, typer.Argument(help="Job id printed by enqueue")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The verdict of a finished job (exit 5 while it is not finished, 1 if it failed)."""
    settings = load_settings()
    job = _load_job(job_id, settings)
    try:
        state = job_state(job)
        verdict = job_verdict(job) if state.status == JobStatus.FINISHED.value else None
    except RedisError as exc:
        raise redis_failure(exc, settings) from None
    if state.status != JobStatus.FINISHED.value:
        message = f"job {job_id} is {state.status}" + (f": {state.error}" if state.error else "")
        if as_json:
            _print_json({"job_id": job_id, "status": state.status, "error": state.error, "verdict": None})
        else:
            err.print(message)
        raise typer.Exit(1 if state.status == JobStatus.FAILED.value else 5)
    if verdict is None:
        err.print(f"[red]job {job_id} finished but its result has expired[/red]")
        raise typer.Exit(4)
    if as_json:
        _print_json(verdict.model_dump(mode="json"))
    else:
        _print_verdict(job_id, verdict)


@app.command()
def jobs(
    failed: Annotated[bool, typer.Option("--failed", help="Only jobs that could not be done, with the reason")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Jobs on the three queues: queued, running, waiting for a retry, finished and failed."""
    settings = load_settings()
    try:
        states = list_jobs(connect(settings), settings, failed=failed)
    except RedisError as exc:
        raise redis_failure(exc, settings) from None
    if as_json:
        _print_json([s.model_dump(mode="json") for s in states])
        return
    table = Table("job", "status", "queue", "source", "verdict" if not failed else "reason")
    for s in states:
        if failed or s.status == JobStatus.FAILED.value:
            last = s.error
        else:
            last = s.verdict_label or (f"{s.progress:.0%}" if s.progress is not None else "")
        table.add_row(s.job_id, s.status, s.queue, s.source, last or "")
    out.print(table)
    if not states:
        out.print("no failed jobs" if failed else "no jobs")


@app.command("worker")
def worker_command(
    burst: Annotated[
        bool,
        typer.Option(
            "--burst",
            help="Quit when the queues are empty and no retry falls due within RALF_BURST_RETRY_WAIT_S "
            "(later ones are named in the log)",
        ),
    ] = False,
    mode: Annotated[
        WorkerMode | None, typer.Option(help="fork | in-process | auto (default: RALF_WORKER_MODE)")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Worker name (default: random)")] = None,
    warm_up: Annotated[bool, typer.Option(help="Run one warm-up scan before taking jobs")] = True,
    max_jobs: Annotated[int | None, typer.Option(min=1, help="Quit after this many jobs")] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Serve Prometheus metrics on this port [default: $RALF_METRICS_PORT, else none]"),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a queue worker: model loaded and warmed up once per process; high, default, low queues in turn.

    Jobs of workers killed mid-job are detected through a short liveness key and re-queued.
    """
    from worker.workers import ScanWorker  # deferred: imports torch

    settings = load_settings()
    connection = connect(settings)
    try:
        scan_worker = ScanWorker(
            all_queues(settings, connection),
            connection=connection,
            name=name,
            mode=mode,
            warm_up=warm_up,
            metrics_port=metrics_port,
            default_result_ttl=settings.result_ttl_s,
            maintenance_interval=60,
        )
        # No rq scheduler process: the worker's liveness thread moves due retries (worker/liveness.py).
        scan_worker.work(burst=burst, max_jobs=max_jobs, logging_level="DEBUG" if verbose else "INFO")
    except RedisError as exc:
        raise redis_failure(exc, settings) from None
    except ValueError as exc:  # setup problems: weights or detector files missing, CUDA absent
        err.print(f"[red]cannot start the worker:[/red] {exc}")
        raise typer.Exit(EXIT_ERROR) from None
