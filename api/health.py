"""Health, readiness, metrics and the API docs (a plain page rendered from the OpenAPI schema here:
no CDN, no script, opens offline)."""

from __future__ import annotations

import html
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from api.context import Ctx, Services
from api.models import Health
from worker.liveness import alive_key, members_key

router = APIRouter(tags=["health"])
DOCS_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


@router.get("/healthz", response_model=Health, response_model_exclude_none=True)
def healthz() -> Health:
    """The process is up (nothing else is checked)."""
    return Health(status="ok")


def live_workers(ctx: Services) -> int:
    """Workers whose short liveness key is still fresh (worker/liveness.py)."""
    names = [member.decode() for member in ctx.connection.smembers(members_key(ctx.settings))]
    if not names:
        return 0
    return int(ctx.connection.exists(*(alive_key(ctx.settings, name) for name in names)))


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(ctx: Ctx) -> Response:
    """Ready when Redis answers and at least one worker is alive; 503 otherwise."""
    try:
        ctx.connection.ping()
        workers = live_workers(ctx)
    except RedisError:
        body = Health(status="unavailable", redis=False, detail="Redis does not answer")
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503, headers={"Retry-After": "5"})
    if workers == 0:
        body = Health(status="unavailable", redis=True, workers=0, detail="no live worker")
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503, headers={"Retry-After": "5"})
    return JSONResponse(Health(status="ok", redis=True, workers=workers).model_dump(exclude_none=True))


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)


def _schema_name(schema: dict[str, Any] | None) -> str:
    if not schema:
        return "-"
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if schema.get("type") == "array":
        return f"list of {_schema_name(schema.get('items'))}"
    return str(schema.get("type", "object"))


def _operation(path: str, method: str, op: dict[str, Any]) -> str:
    e = html.escape
    params = "".join(
        f"<li><code>{e(p['name'])}</code> ({e(p['in'])}{', required' if p.get('required') else ''}): "
        f"{e(_schema_name(p.get('schema')))} {e(p.get('description', ''))}</li>"
        for p in op.get("parameters", [])
    )
    body = op.get("requestBody", {}).get("content", {})
    bodies = "".join(f"<li>{e(kind)}: {e(_schema_name(c.get('schema')))}</li>" for kind, c in body.items())
    answers = "".join(
        f"<li>{e(code)}: {e(r.get('description', ''))}</li>" for code, r in op.get("responses", {}).items()
    )
    return (
        f'<section><h2><span class="m">{e(method.upper())}</span> <code>{e(path)}</code></h2>'
        f"<p>{e(op.get('summary', ''))}</p><p>{e(op.get('description', ''))}</p>"
        + (f"<h3>Parameters</h3><ul>{params}</ul>" if params else "")
        + (f"<h3>Body</h3><ul>{bodies}</ul>" if bodies else "")
        + f"<h3>Answers</h3><ul>{answers}</ul></section>"
    )


def render_docs(schema: dict[str, Any]) -> str:
    e = html.escape
    ops = "".join(_operation(path, method, op) for path, item in schema["paths"].items() for method, op in item.items())
    models = "".join(
        f"<details><summary>{e(name)}</summary><pre>{e(_fields(spec))}</pre></details>"
        for name, spec in schema.get("components", {}).get("schemas", {}).items()
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>RALF API</title>'
        "<style>body{font:15px/1.45 system-ui,sans-serif;max-width:900px;margin:24px auto;padding:0 16px}"
        "section{border-top:1px solid #ddd}.m{background:#234;color:#fff;padding:2px 6px;border-radius:4px}"
        "pre{background:#f4f5f7;padding:8px}</style></head><body>"
        f"<h1>{e(schema['info']['title'])} {e(schema['info']['version'])}</h1>"
        f"<p>{e(schema['info'].get('description', ''))}</p>"
        '<p>Machine-readable: <a href="/openapi.json">/openapi.json</a>. Errors are RFC 9457 problem details '
        "(<code>application/problem+json</code>). Authenticate with <code>Authorization: Bearer &lt;key&gt;</code>.</p>"
        f"{ops}<h2>Schemas</h2>{models}</body></html>"
    )


def _fields(spec: dict[str, Any]) -> str:
    props = spec.get("properties", {})
    required = set(spec.get("required", []))
    lines = [
        f"{name}{'' if name in required else '?'}: {_schema_name(p) if 'anyOf' not in p else ' | '.join(_schema_name(a) for a in p['anyOf'])}"
        + (f"  - {p['description']}" if p.get("description") else "")
        for name, p in props.items()
    ]
    return "\n".join(lines) or str(spec.get("enum", spec.get("type", "")))


@router.get("/docs", include_in_schema=False)
def docs(request: Request) -> HTMLResponse:
    page = render_docs(request.app.openapi())
    return HTMLResponse(page, headers={"Content-Security-Policy": DOCS_CSP, "X-Content-Type-Options": "nosniff"})
