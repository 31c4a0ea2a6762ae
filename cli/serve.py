"""`ralf-cli serve` (the HTTP API and review desk), `ralf-cli keys create|list|revoke` and
`ralf-cli reviews export`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from redis.exceptions import RedisError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from api.keys import KeyStore, Scope
from cli.app import app
from cli.common import fail, load_settings
from worker.queue import connect

out = Console()
err = Console(stderr=True)
keys_app = typer.Typer(
    help="API keys of the HTTP API and the review desk (stored hashed; shown once).", no_args_is_help=True
)
reviews_app = typer.Typer(help="Moderators' decisions from the review desk.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(reviews_app, name="reviews")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (default: $RALF_API_HOST, else 127.0.0.1)")] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port (default: $RALF_API_PORT, else 8000)")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes")] = 1,
    proxy_headers: Annotated[
        bool, typer.Option(help="Trust X-Forwarded-Proto/For from the proxy in front (https cookies)")
    ] = False,
) -> None:
    """Serve the HTTP API (/v1/scans, /docs, /openapi.json, /healthz, /readyz, /metrics) and the review
    desk (/review). The model is never loaded here: scans run on the queue workers."""
    import uvicorn

    settings = load_settings()
    try:
        connect(settings).ping()
    except RedisError:
        err.print("[yellow]warning: Redis does not answer yet; /readyz says so until it does[/yellow]")
    uvicorn.run(
        "api.app:create_app", factory=True, host=host or settings.api_host, port=port or settings.api_port,
        workers=workers, proxy_headers=proxy_headers, forwarded_allow_ips="*" if proxy_headers else None,
        server_header=False, log_level="info",
    )  # fmt: skip


def _store() -> KeyStore:
    settings = load_settings()
    return KeyStore(connect(settings), settings)


@keys_app.command("create")
def keys_create(
    scope: Annotated[Scope, typer.Option(help="submit | review | admin")],
    name: Annotated[str, typer.Option(help="Who or what uses the key (shown in lists and the review trail)")],
    rate_per_minute: Annotated[
        int | None, typer.Option(min=1, help="Requests a minute (default: $RALF_API_RATE_PER_MINUTE)")
    ] = None,
    daily_quota: Annotated[
        int | None, typer.Option(min=1, help="Submissions a UTC day (default: $RALF_API_DAILY_QUOTA)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create a key and print it once (only its hash is stored: it cannot be shown again)."""
    if not name.strip() or len(name) > 100:
        fail("--name must be 1 to 100 characters")
    try:
        created = _store().create(name.strip(), scope, rate_per_minute=rate_per_minute, daily_quota=daily_quota)
    except RedisError as exc:
        fail(f"cannot talk to Redis: {type(exc).__name__}")
    if as_json:
        listing = created.record.model_dump(mode="json", exclude={"secret_sha256"})
        sys.stdout.write(json.dumps({**listing, "key": created.token}) + "\n")
        return
    err.print(
        f"key {created.record.key_id} ({scope}) for {escape(created.record.name)}; store it now, it is not shown again:"
    )
    typer.echo(created.token)


@keys_app.command("list")
def keys_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every key: id, name, scope, limits, created, revoked (never the secret)."""
    try:
        listing = _store().list()
    except RedisError as exc:
        fail(f"cannot talk to Redis: {type(exc).__name__}")
    if as_json:
        sys.stdout.write(json.dumps([k.model_dump(mode="json") for k in listing], indent=2) + "\n")
        return
    table = Table("id", "name", "scope", "rate/min", "quota/day", "created", "revoked")
    for k in listing:
        revoked = k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else ""
        table.add_row(k.key_id, escape(k.name), k.scope, str(k.rate_per_minute), str(k.daily_quota),
                      k.created_at.strftime("%Y-%m-%d %H:%M"), revoked)  # fmt: skip
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (keys list)")]) -> None:
    """Revoke a key: it is refused from the next request on (its jobs and review decisions stay)."""
    try:
        record = _store().revoke(key_id)
    except RedisError as exc:
        fail(f"cannot talk to Redis: {type(exc).__name__}")
    if record is None:
        fail(f"no key {key_id!r}")
    typer.echo(f"revoked {record.key_id} ({record.scope}, {record.name})")


@reviews_app.command("export")
def reviews_export(
    out_dir: Annotated[Path, typer.Argument(help="A new folder: real/ and fake/ links, manifest.csv, crops/")],
) -> None:
    """Write the reviewed videos, labelled by the moderators' latest decision, as a set that
    `ralf-cli calibrate WEIGHTS --data OUT` takes (manifest.csv has the model's verdict and score beside)."""
    from api.exports import ExportError, export_reviews

    settings = load_settings()
    try:
        summary = export_reviews(connect(settings), settings, out_dir)
    except ExportError as exc:
        fail(str(exc))
    except RedisError as exc:
        fail(f"cannot talk to Redis: {type(exc).__name__}")
    for job_id, why in summary.skipped.items():
        err.print(f"left out {job_id}: {escape(why)}")
    typer.echo(f"{out_dir}: {summary.real} real, {summary.fake} fake, {summary.crops} face crops")
