"""Who submitted which job, under which name, and the Idempotency-Key records.

A job is shared by everyone who submits the same content (or URL) with the same options, as with
`enqueue`; each key keeps its own record of it (the file name it uploaded, or its URL), and sees only
that. Keys in Redis (all under `<prefix>:api:`):
- `owners:<job>`: set of key ids that submitted the job;
- `owned:<key>`: sorted set of job ids by first submission time (the key's listing);
- `own:<key>`: hash job id -> `Ownership` JSON;
- `idem:<key>:<sha256 of the Idempotency-Key>`: `IdempotencyRecord` JSON, expiring."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel
from redis import Redis

from ralf.core.settings import Settings

SourceKind = Literal["upload", "url"]


class Ownership(BaseModel):
    job_id: str
    kind: SourceKind
    source: str | None  # the uploaded file's name or the URL, as this key gave it; None once deleted
    content: str  # sha256:<hex> or the URL: what every submitter of the job knows
    upload_path: str | None = None  # server side only, never answered
    submitted_at: datetime
    deleted_at: datetime | None = None


class IdempotencyRecord(BaseModel):
    fingerprint: str
    job_id: str


class OwnershipStore:
    def __init__(self, connection: Redis, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings

    def _k(self, *parts: str) -> str:
        return self.settings.key("api", *parts)

    def record(self, key_id: str, ownership: Ownership) -> None:
        """Remember a submission; a later submission of the same job by the same key renews the name."""
        with self.connection.pipeline() as pipe:
            pipe.sadd(self._k("owners", ownership.job_id), key_id)
            pipe.zadd(self._k("owned", key_id), {ownership.job_id: ownership.submitted_at.timestamp()}, nx=True)
            pipe.hset(self._k("own", key_id), ownership.job_id, ownership.model_dump_json())
            if ownership.upload_path:
                pipe.sadd(self._upload_refs(ownership.upload_path), f"{key_id}:{ownership.job_id}")
            pipe.execute()

    def unreferenced(self, upload_path: str) -> bool:
        """No submission uses this stored upload (it may go)."""
        return int(self.connection.scard(self._upload_refs(upload_path))) == 0

    def _upload_refs(self, upload_path: str) -> str:
        """Set of `<key>:<job>` submissions that use one stored upload (content-addressed: one file can
        serve several keys and, with other options, several jobs)."""
        return self._k("upload-refs", hashlib.sha256(upload_path.encode()).hexdigest())

    def get(self, key_id: str, job_id: str) -> Ownership | None:
        raw = self.connection.hget(self._k("own", key_id), job_id)
        return None if raw is None else Ownership.model_validate_json(raw)

    def page(self, key_id: str, start: int, count: int) -> list[str]:
        """Job ids of this key, newest first, from position `start`."""
        ids = self.connection.zrevrange(self._k("owned", key_id), start, start + count - 1)
        return [job_id.decode() for job_id in ids]

    def total(self, key_id: str) -> int:
        return int(self.connection.zcard(self._k("owned", key_id)))

    def owners(self, job_id: str) -> set[str]:
        return {member.decode() for member in self.connection.smembers(self._k("owners", job_id))}

    def mark_deleted(self, key_id: str, ownership: Ownership) -> tuple[int, int]:
        """The key's record kept without its name (audit). Returns (owners of the job left, submissions
        left that use the same stored upload)."""
        kept = ownership.model_copy(
            update={"source": None, "upload_path": None, "deleted_at": datetime.now(timezone.utc)}
        )
        refs = self._upload_refs(ownership.upload_path or "")
        with self.connection.pipeline() as pipe:
            pipe.hset(self._k("own", key_id), ownership.job_id, kept.model_dump_json())
            pipe.srem(self._k("owners", ownership.job_id), key_id)
            pipe.srem(refs, f"{key_id}:{ownership.job_id}")
            pipe.scard(self._k("owners", ownership.job_id))
            pipe.scard(refs)
            *_, owners_left, refs_left = pipe.execute()
        return int(owners_left), int(refs_left)

    # -- Idempotency-Key ------------------------------------------------------------------------

    def _idem(self, key_id: str, idempotency_key: str) -> str:
        return self._k("idem", key_id, hashlib.sha256(idempotency_key.encode()).hexdigest())

    def idempotent(self, key_id: str, idempotency_key: str) -> IdempotencyRecord | None:
        raw = self.connection.get(self._idem(key_id, idempotency_key))
        return None if raw is None else IdempotencyRecord.model_validate_json(raw)

    def remember(self, key_id: str, idempotency_key: str, record: IdempotencyRecord) -> IdempotencyRecord:
        """Store the record unless one exists (a concurrent request won); returns the one that holds."""
        name = self._idem(key_id, idempotency_key)
        if self.connection.set(name, record.model_dump_json(), nx=True, ex=self.settings.api_idempotency_ttl_s):
            return record
        return self.idempotent(key_id, idempotency_key) or record
