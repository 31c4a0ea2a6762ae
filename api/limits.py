"""Per-key rate limit (requests per minute, fixed windows) and daily submission quota (UTC days),
counted in Redis so that every API process shares them; a refusal says when to come back."""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis import Redis

from api.keys import KeyRecord
from ralf.core.settings import Settings

_DAY = 86400


@dataclass(frozen=True)
class Refusal:
    detail: str
    retry_after_s: int


def _count(connection: Redis, key: str, ttl_s: int) -> int:
    with connection.pipeline() as pipe:
        pipe.incr(key)
        pipe.expire(key, ttl_s, nx=True)
        value, _ = pipe.execute()
    return int(value)


def check_rate(connection: Redis, settings: Settings, record: KeyRecord, now: float | None = None) -> Refusal | None:
    now = time.time() if now is None else now
    window = int(now // 60)
    used = _count(connection, settings.key("api", "rate", record.key_id, str(window)), 120)
    if used <= record.rate_per_minute:
        return None
    wait = max(1, 60 - int(now % 60))
    return Refusal(f"rate limit of {record.rate_per_minute} requests per minute reached", wait)


def take_quota(connection: Redis, settings: Settings, record: KeyRecord, now: float | None = None) -> Refusal | None:
    now = time.time() if now is None else now
    day = int(now // _DAY)
    used = _count(connection, settings.key("api", "quota", record.key_id, str(day)), 2 * _DAY)
    if used <= record.daily_quota:
        return None
    wait = max(1, _DAY - int(now % _DAY))
    return Refusal(f"daily quota of {record.daily_quota} submissions reached (resets at 00:00 UTC)", wait)
