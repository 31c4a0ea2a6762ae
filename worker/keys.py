"""Names of this project's own Redis keys for workers (under RALF_KEY_PREFIX). The bottom of
worker/: the hand-over, the liveness reaper and the workers all name the same keys, and none of
them needs another's code for it."""

from __future__ import annotations

from ralf.core.settings import Settings


def claims_key(settings: Settings, worker_name: str) -> str:
    """Hash job id -> queue key of the jobs `worker_name` has taken off a queue and not yet started."""
    return settings.key("claims", worker_name)


def alive_key(settings: Settings, worker_name: str) -> str:
    """Short-TTL key a live worker refreshes (worker/liveness.py)."""
    return settings.key("alive", worker_name)


def members_key(settings: Settings) -> str:
    """Set of worker names that publish liveness (only their absence means death)."""
    return settings.key("liveness-workers")


def process_key(settings: Settings, worker_name: str) -> str:
    """'<host> <pid> <start time>' of a worker's main process (no TTL; removed when it stops cleanly)."""
    return settings.key("worker-process", worker_name)


def reaper_lock_key(settings: Settings) -> str:
    """Lock that keeps concurrent liveness reapers from racing."""
    return settings.key("reaper-lock")
