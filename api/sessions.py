"""Review desk sessions: a random token in an HttpOnly, SameSite=Strict cookie; Redis keeps only its
SHA-256 with the key it was opened with and the CSRF token every form must carry."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timezone

from pydantic import BaseModel
from redis import Redis

from ralf.core.settings import Settings

SESSION_COOKIE = "ralf_session"
LOGIN_COOKIE = "ralf_login"  # the login form's CSRF token (double submit; there is no session yet)


class Session(BaseModel):
    key_id: str
    key_name: str
    csrf: str
    created_at: datetime


def same_token(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


class SessionStore:
    def __init__(self, connection: Redis, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings

    def _k(self, token: str) -> str:
        return self.settings.key("api", "session", hashlib.sha256(token.encode()).hexdigest())

    def open(self, key_id: str, key_name: str) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        session = Session(
            key_id=key_id, key_name=key_name, csrf=secrets.token_urlsafe(32), created_at=datetime.now(timezone.utc)
        )
        self.connection.set(self._k(token), session.model_dump_json(), ex=self.settings.api_session_ttl_s)
        return token, session

    def get(self, token: str | None) -> Session | None:
        if not token or len(token) > 100:
            return None
        raw = self.connection.get(self._k(token))
        return None if raw is None else Session.model_validate_json(raw)

    def close(self, token: str | None) -> None:
        if token and len(token) <= 100:
            self.connection.delete(self._k(token))
