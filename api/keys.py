"""API keys: created by `ralf-cli keys create` (the secret is shown once), stored hashed in Redis,
presented as `Authorization: Bearer ralf_<id>_<secret>`.

A token holds 256 random bits, so its SHA-256 is a safe stored form (nothing to brute-force); the
comparison is constant-time. Scopes: `submit` (submit and read one's own scans), `review` (the review
desk), `admin` (both)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, Field
from redis import Redis

from ralf.core.settings import Settings

Scope = Literal["submit", "review", "admin"]
SCOPES: tuple[Scope, ...] = ("submit", "review", "admin")
_GRANTS: dict[Scope, frozenset[Scope]] = {
    "submit": frozenset({"submit"}),
    "review": frozenset({"review"}),
    "admin": frozenset({"submit", "review", "admin"}),
}
_TOKEN = re.compile(r"ralf_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")


class KeyRecord(BaseModel):
    """What is stored about a key (never the secret itself)."""

    key_id: str
    name: str = Field(max_length=100)
    scope: Scope
    created_at: datetime
    revoked_at: datetime | None = None
    secret_sha256: str
    rate_per_minute: int = Field(ge=1)
    daily_quota: int = Field(ge=1)

    def grants(self, needed: Scope) -> bool:
        return needed in _GRANTS[self.scope]

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class KeyListing(BaseModel):
    """A key as `keys list` shows it: everything but the hash."""

    key_id: str
    name: str
    scope: Scope
    created_at: datetime
    revoked_at: datetime | None
    rate_per_minute: int
    daily_quota: int


class CreatedKey(BaseModel):
    record: KeyRecord
    token: str  # shown once, never stored


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class KeyStore:
    def __init__(self, connection: Redis, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings

    def _key(self, key_id: str) -> str:
        return self.settings.key("api", "key", key_id)

    def _index(self) -> str:
        return self.settings.key("api", "keys")

    def create(
        self, name: str, scope: Scope, *, rate_per_minute: int | None = None, daily_quota: int | None = None
    ) -> CreatedKey:
        key_id = secrets.token_hex(8)
        token = f"ralf_{key_id}_{secrets.token_urlsafe(32)}"
        record = KeyRecord(
            key_id=key_id,
            name=name,
            scope=scope,
            created_at=datetime.now(timezone.utc),
            secret_sha256=_digest(token),
            rate_per_minute=rate_per_minute or self.settings.api_rate_per_minute,
            daily_quota=daily_quota or self.settings.api_daily_quota,
        )
        with self.connection.pipeline() as pipe:
            pipe.set(self._key(key_id), record.model_dump_json())
            pipe.sadd(self._index(), key_id)
            pipe.execute()
        return CreatedKey(record=record, token=token)

    def get(self, key_id: str) -> KeyRecord | None:
        raw = self.connection.get(self._key(key_id))
        return None if raw is None else KeyRecord.model_validate_json(raw)

    def list(self) -> list[KeyListing]:
        ids = sorted(member.decode() for member in self.connection.smembers(self._index()))
        records = [r for r in (self.get(key_id) for key_id in ids) if r is not None]
        records.sort(key=lambda r: r.created_at)
        return [KeyListing.model_validate(r.model_dump()) for r in records]

    def revoke(self, key_id: str) -> KeyRecord | None:
        record = self.get(key_id)
        if record is None:
            return None
        if record.revoked_at is None:
            record = record.model_copy(update={"revoked_at": datetime.now(timezone.utc)})
            self.connection.set(self._key(key_id), record.model_dump_json())
        return record

    def authenticate(self, token: str) -> KeyRecord | None:
        """The active key this token belongs to, or None (unknown, malformed, wrong secret, revoked)."""
        match = _TOKEN.fullmatch(token.strip())
        if match is None:
            return None
        record = self.get(match.group(1))
        if record is None or not hmac.compare_digest(record.secret_sha256, _digest(token.strip())):
            return None
        return record if record.active else None
