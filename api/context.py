"""What every request handler shares: the settings, one Redis client and the stores over it, and the
authenticated key (Bearer token, rate limit and scope checked)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from redis import Redis

from api.keys import KeyRecord, KeyStore, Scope
from api.limits import check_rate
from api.ownership import OwnershipStore
from api.problems import Problem
from ralf.core.settings import Settings


@dataclass
class Services:
    settings: Settings
    connection: Redis
    keys: KeyStore
    ownership: OwnershipStore

    @classmethod
    def build(cls, settings: Settings, connection: Redis) -> Services:
        return cls(settings, connection, KeyStore(connection, settings), OwnershipStore(connection, settings))

    def scrub(self, text: str | None) -> str | None:
        """`text` without the server's own folders (media roots, evidence, downloads) in it."""
        if text is None:
            return None
        folders: list[Path] = [*self.settings.media_roots]
        for extra in (self.settings.evidence_dir, self.settings.download_dir, self.settings.api_upload_dir):
            if extra is not None:
                folders.append(extra)
        for folder in sorted({str(f) for f in folders}, key=len, reverse=True):
            text = text.replace(folder, "<media>")
        return text


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(401, "an API key is needed: Authorization: Bearer <key>", kind="unauthorized",
                      headers={"WWW-Authenticate": 'Bearer realm="ralf"'})  # fmt: skip
    return token.strip()


Ctx = Annotated[Services, Depends(services)]


def authenticated(request: Request, ctx: Ctx) -> KeyRecord:
    record = ctx.keys.authenticate(_bearer(request))
    if record is None:
        raise Problem(401, "the API key is unknown or revoked", kind="unauthorized",
                      headers={"WWW-Authenticate": 'Bearer realm="ralf", error="invalid_token"'})  # fmt: skip
    refusal = check_rate(ctx.connection, ctx.settings, record)
    if refusal is not None:
        raise Problem(429, refusal.detail, kind="rate-limited", headers={"Retry-After": str(refusal.retry_after_s)})
    return record


def require(scope: Scope):  # type: ignore[no-untyped-def]
    """A dependency: the authenticated key, which must grant `scope` (403 otherwise)."""

    def check(record: Annotated[KeyRecord, Depends(authenticated)]) -> KeyRecord:
        if not record.grants(scope):
            raise Problem(
                403, f"this key's scope ({record.scope}) does not allow this; it needs {scope}", kind="forbidden"
            )
        return record

    return check


Submitter = Annotated[KeyRecord, Depends(require("submit"))]
