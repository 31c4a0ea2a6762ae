"""`ralf-cli report`: a verdict -> one self-contained HTML page (pipeline/report.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from cli.app import app
from cli.common import EXIT_ERROR, load_settings, redis_failure
from pipeline.report import ReportItem, render_report
from pipeline.verdict import Verdict
from worker.jobs import describe_validation_error

err = Console(stderr=True)


class ReportInputError(ValueError):
    """The input is not a verdict, a file of verdicts, or a job id; the message says why."""


def verdicts_from_json(text: str) -> list[Verdict]:
    """Verdicts in `text`: one Verdict object, `scan --json` lines, a JSON list of verdicts, or the
    `{"jobs": [{"verdict": ...}]}` of `enqueue --wait --json`."""
    text = text.strip()
    if not text:
        raise ReportInputError("no verdict: the input is empty")
    try:
        documents: list[Any] = [json.loads(text)]
    except json.JSONDecodeError:
        try:
            documents = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise ReportInputError(f"not JSON: {exc}") from None
    found: list[Any] = []
    for document in documents:
        if isinstance(document, list):
            found.extend(document)
        elif isinstance(document, dict) and isinstance(document.get("jobs"), list):
            found.extend(job.get("verdict") for job in document["jobs"] if isinstance(job, dict) and job.get("verdict"))
        else:
            found.append(document)
    if not found:
        raise ReportInputError("no verdict in the input (jobs without a verdict are not finished)")
    try:
        return [Verdict.model_validate(item) for item in found]
    except ValidationError as exc:
        raise ReportInputError(f"not a verdict: {describe_validation_error(exc)}") from None


def _evidence_folder(verdict: Verdict, override: Path | None, fallback: Path | None) -> Path | None:
    """Where this verdict's images are: --evidence-dir, else where the scan wrote them, else the
    deployment's folder for the job (the worker's path may be mounted elsewhere here)."""
    if override is not None:
        return override
    if verdict.evidence_dir and Path(verdict.evidence_dir).is_dir():
        return Path(verdict.evidence_dir)
    if fallback is not None and fallback.is_dir():
        return fallback
    return Path(verdict.evidence_dir) if verdict.evidence_dir else None


def _from_job(job_id: str, override: Path | None) -> list[ReportItem]:
    from redis.exceptions import RedisError
    from rq.job import JobStatus

    from worker.queue import JobNotFound, connect, fetch_job, job_state, job_verdict

    settings = load_settings()
    try:
        job = fetch_job(connect(settings), job_id)
        state = job_state(job)
        if state.status != JobStatus.FINISHED.value:
            err.print(f"job {escape(job_id)} is {state.status}" + (f": {escape(state.error)}" if state.error else ""))
            raise typer.Exit(1 if state.status == JobStatus.FAILED.value else 5)
        verdict = job_verdict(job)
    except JobNotFound as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(4) from None
    except RedisError as exc:
        raise redis_failure(exc, settings) from None
    if verdict is None:
        err.print(f"[red]job {escape(job_id)} finished but its result has expired[/red]")
        raise typer.Exit(4)
    fallback = settings.evidence_dir / job_id if settings.evidence_dir is not None else None
    return [ReportItem(verdict, _evidence_folder(verdict, override, fallback), name=job_id)]


@app.command()
def report(
    source: Annotated[
        str,
        typer.Argument(
            help="A verdict: a JSON file (scan --json lines, result --json, enqueue --wait --json), '-' for "
            "standard input, a JSON verdict given inline, or a job id",
            show_default=False,
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML file to write")] = Path("ralf-report.html"),
    evidence_dir: Annotated[
        Path | None,
        typer.Option(help="Where the evidence images are, if not where the scan wrote them (one verdict)"),
    ] = None,
) -> None:
    """Write one self-contained HTML report (inline CSS and images, opens offline) for a verdict."""
    items: list[ReportItem]
    try:
        if source == "-":
            verdicts = verdicts_from_json(sys.stdin.read())
        elif source.lstrip().startswith(("{", "[")):
            verdicts = verdicts_from_json(source)
        elif Path(source).is_file():
            verdicts = verdicts_from_json(Path(source).read_text(encoding="utf-8", errors="replace"))
        else:
            verdicts = []
    except ReportInputError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(EXIT_ERROR) from None
    if verdicts:
        items = [ReportItem(v, _evidence_folder(v, evidence_dir, None)) for v in verdicts]
    elif Path(source).suffix.lower() in (".json", ".jsonl", ".txt") or "/" in source:
        err.print(f"[red]no such file: {escape(source)}[/red]")
        raise typer.Exit(EXIT_ERROR)
    else:
        items = _from_job(source, evidence_dir)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(render_report(items), encoding="utf-8")
    except OSError as exc:
        err.print(f"[red]cannot write {escape(str(output))}:[/red] {escape(str(exc))}")
        raise typer.Exit(EXIT_ERROR) from None
    typer.echo(str(output))
