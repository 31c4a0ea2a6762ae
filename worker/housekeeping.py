"""Removing what a deployment left in a shared Redis (tests, benchmarks): every key of one key prefix
and nothing else. A deployment's own keys start with its prefix; rq's keys of its jobs, queues and
workers carry it at the start of their name after the kind (`rq:job:<prefix>-...`); rq's shared
sets and scheduler locks name its queues and workers.
"""

from __future__ import annotations

from redis import Redis


def delete_prefixed_keys(connection: Redis, prefix: str) -> None:
    """Remove everything a deployment whose job ids, queue and worker names all start with `prefix`
    left in Redis (tests, benchmarks), touching no other key: its own keys (`<prefix>:...`), rq's
    keys of its jobs, queues and workers (`rq:<kind>:<prefix>...`), its entries in rq's shared sets,
    and the scheduler locks of its queues (named by uuid, so found through the queues they list)."""
    mine = prefix.encode()
    pattern = _glob_escape(prefix)
    found = [*connection.scan_iter(match=f"{pattern}*", count=1000)]
    found += [key for key in connection.scan_iter(match=f"rq:*:{pattern}*", count=1000) if _owned(key, mine)]
    for start in range(0, len(found), 1000):
        connection.delete(*found[start : start + 1000])
    for shared in ("rq:queues", "rq:workers"):
        members = [member for member in connection.smembers(shared) if _owned(member, mine)]
        if members:
            connection.srem(shared, *members)
    for key in connection.scan_iter(match="rq:scheduler:*"):
        queues = (connection.hget(key, "queues") or b"").split(b",")
        if any(name.startswith(mine) for name in queues):
            connection.delete(key)


def _owned(key: bytes, prefix: bytes) -> bool:
    """Whether a key is the deployment's: its own keys start with the prefix, and rq's carry it at
    the start of the name after their kind (`rq:job:<id>`, `rq:queue:<name>`, `rq:worker:<name>`)."""
    if key.startswith(prefix):
        return True
    if not key.startswith(b"rq:"):
        return False
    _kind, separator, name = key[3:].partition(b":")
    return bool(separator) and name.startswith(prefix)


def _glob_escape(text: str) -> str:
    """`text` matched literally in a Redis SCAN pattern."""
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)
