"""The ASGI application: `create_app(settings)`; `ralf-cli serve` runs it with uvicorn.

FastAPI (on Starlette) because the API's pydantic models (the `Verdict` included) become its OpenAPI
schema and its request validation with no second description to keep in step; Starlette underneath
gives the raw request stream the uploads are parsed from."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api import desk, health, scans
from api.context import Services
from api.metrics import review_registry
from api.models import ScanRequest
from api.problems import install_problem_handlers
from ralf.core.settings import Settings
from worker.queue import connect

DESCRIPTION = (
    "Submit videos for deepfake detection (a URL or an upload), read their verdicts and reports. "
    "Every score is P(fake). Authentication: `Authorization: Bearer <key>` (`ralf-cli keys create`)."
)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="RALF video moderation API",
        version="1",
        description=DESCRIPTION,
        docs_url=None,  # /docs is rendered here, offline (api/health.py)
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    connection = connect(settings)
    app.state.services = Services.build(settings, connection)
    app.state.metrics_registry = review_registry(connection, settings)
    install_problem_handlers(app)
    app.include_router(health.router)
    app.include_router(scans.router)
    app.include_router(desk.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the models of the POST body, which the upload handler parses itself."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        body = ScanRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        schema.setdefault("components", {}).setdefault("schemas", {}).update(
            {**body.pop("$defs", {}), "ScanRequest": body}
        )
        app.openapi_schema = schema
    return app.openapi_schema
