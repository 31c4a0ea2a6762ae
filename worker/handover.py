"""Crash-safe hand-over of jobs from the queues to workers, and the moves that put jobs back.

rq takes a job off several queues with BLPOP: between that pop and the job's entry in the
StartedJobRegistry the job id lives only in the worker's memory, so a worker killed in that gap
loses the job for good (rq's own BLMOVE into an intermediate list is used for one queue only).
Here every hand-over is an atomic move:

    queue list --claim_next (Lua: LPOP + HSET)--> claims hash of the worker
    claims hash --ScanWorker.prepare_execution (MULTI: HDEL + StartedJobRegistry add)--> started

so at every moment a job id sits in a queue, in exactly one worker's claims, in a registry, or the
job has ended. Claims of a dead worker (its liveness key expired, see worker/liveness.py) go back to
the front of their queue; a worker re-queues its own claims when it stops.

`requeue_if_orphan` (one Lua script, so nothing moves while it looks) puts a queued or started
job that sits in no queue, claim or registry back on its queue; `enqueue` uses it for a job that
already exists. `move_due_scheduled` moves jobs whose retry back-off is over from the
ScheduledJobRegistry to their queue, atomically per job, so several workers can run it at once.

The scripts touch the job hashes of the ids they handle (keys derived inside the script): fine on a
single Redis or a primary with replicas, not on Redis Cluster (neither is rq itself).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from redis import Redis
from rq.job import Job
from rq.queue import Queue
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.utils import now, utcformat

from ralf.core.settings import Settings
from worker.keys import claims_key, members_key

JOB_KEY_PREFIX = Job.redis_job_namespace_prefix  # 'rq:job:'

# KEYS[1] = claims hash of the worker; KEYS[2..] = queue keys, highest priority first.
# Returns {queue key, job id} or false.
_CLAIM = """
for i = 2, #KEYS do
  local id = redis.call('LPOP', KEYS[i])
  if id then
    redis.call('HSET', KEYS[1], id, KEYS[i])
    return {KEYS[i], id}
  end
end
return false
"""

# KEYS[1] = job hash, KEYS[2] = queue list, KEYS[3] = started registry, KEYS[4] = scheduled registry,
# KEYS[5] = claims hash the job is released from ('' for none), KEYS[6..] = every worker's claims hash.
# ARGV[1] = job id, ARGV[2] = enqueued_at (rq's format).
# Returns 1 when the job was pushed back to the front of its queue, 0 when it is tracked somewhere
# (or has ended, or vanished) and was left alone.
_REQUEUE_IF_ORPHAN = """
local id = ARGV[1]
if KEYS[5] ~= '' and redis.call('HDEL', KEYS[5], id) == 0 then
  return 0
end
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'started' then
  return 0
end
if redis.call('LPOS', KEYS[2], id) then
  return 0
end
if redis.call('ZSCORE', KEYS[4], id) then
  return 0
end
local prefix = id .. ':'
for _, member in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  if member == id or string.sub(member, 1, #prefix) == prefix then
    return 0
  end
end
for i = 6, #KEYS do
  if redis.call('HEXISTS', KEYS[i], id) == 1 then
    return 0
  end
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'enqueued_at', ARGV[2])
redis.call('LPUSH', KEYS[2], id)
return 1
"""

# KEYS[1] = scheduled registry, KEYS[2] = queue list. ARGV[1] = now (unix s), ARGV[2] = enqueued_at,
# ARGV[3] = job key prefix, ARGV[4] = most jobs to move. Returns the ids moved.
_MOVE_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[4]))
local moved = {}
for _, id in ipairs(ids) do
  if redis.call('ZREM', KEYS[1], id) == 1 then
    local job = ARGV[3] .. id
    if redis.call('EXISTS', job) == 1 then
      redis.call('HSET', job, 'status', 'queued', 'enqueued_at', ARGV[2])
      if not redis.call('LPOS', KEYS[2], id) then
        redis.call('RPUSH', KEYS[2], id)
      end
      table.insert(moved, id)
    end
  end
end
return moved
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def claim_next(connection: Redis, settings: Settings, worker_name: str, queue_keys: Sequence[str]) -> tuple[str, str] | None:
    """Move the first job id of the first non-empty queue into the worker's claims: (queue key, job id)."""
    result = connection.eval(_CLAIM, 1 + len(queue_keys), claims_key(settings, worker_name), *queue_keys)
    if not result:
        return None
    queue_key, job_id = result
    return _text(queue_key), _text(job_id)


def release_claim(connection: Redis, settings: Settings, worker_name: str, job_id: str) -> None:
    """Forget a claim whose job is now tracked elsewhere (registry) or has ended."""
    connection.hdel(claims_key(settings, worker_name), job_id)


def known_workers(connection: Redis, settings: Settings) -> list[str]:
    return sorted(_text(name) for name in connection.smembers(members_key(settings)))


def claimed_by(connection: Redis, settings: Settings, job_id: str) -> str | None:
    """The worker whose claims hold `job_id` (taken off its queue, not yet started), or None."""
    names = known_workers(connection, settings)
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hexists(claims_key(settings, name), job_id)
        held = pipe.execute()
    return next((name for name, flag in zip(names, held) if flag), None)


def requeue_if_orphan(
    connection: Redis,
    settings: Settings,
    job_id: str,
    queue: Queue,
    *,
    release_from: str | None = None,
    workers: Iterable[str] | None = None,
) -> bool:
    """Push a queued/started job that sits in no queue, claim or registry back to the front of `queue`.

    `release_from`: a worker whose claim on the job is dropped first (a dead worker, or one stopping).
    Atomic: a job that some worker holds, runs, or that waits for a retry is never pushed twice."""
    names = list(workers) if workers is not None else known_workers(connection, settings)
    keys = [
        JOB_KEY_PREFIX + job_id,
        queue.key,
        StartedJobRegistry(queue=queue).key,
        ScheduledJobRegistry(queue=queue).key,
        claims_key(settings, release_from) if release_from else "",
        *(claims_key(settings, name) for name in names),
    ]
    return bool(connection.eval(_REQUEUE_IF_ORPHAN, len(keys), *keys, job_id, utcformat(now())))


def return_claims(connection: Redis, settings: Settings, worker_name: str, queues: Iterable[Queue]) -> list[str]:
    """Give back every claim of `worker_name` (dead, or stopping): each job goes back to the front of the
    queue it came from unless it is tracked elsewhere. Returns the ids put back."""
    by_key = {queue.key: queue for queue in queues}
    claims = connection.hgetall(claims_key(settings, worker_name))
    workers = known_workers(connection, settings)
    returned = []
    for raw_id, raw_queue_key in claims.items():
        job_id, queue_key = _text(raw_id), _text(raw_queue_key)
        queue = by_key.get(queue_key)
        if queue is None:  # a queue this process does not serve: rebuild it from its key
            name = queue_key.removeprefix(Queue.redis_queue_namespace_prefix)
            queue = Queue(name, connection=connection)
        if requeue_if_orphan(connection, settings, job_id, queue, release_from=worker_name, workers=workers):
            returned.append(job_id)
    return returned


def move_due_scheduled(connection: Redis, queues: Iterable[Queue], *, batch: int = 100) -> list[str]:
    """Move jobs whose scheduled time (retry back-off) has come from the ScheduledJobRegistry to their queue."""
    moved: list[str] = []
    stamp = str(time.time())
    for queue in queues:
        registry = ScheduledJobRegistry(queue=queue)
        ids = connection.eval(
            _MOVE_DUE, 2, registry.key, queue.key, stamp, utcformat(now()), JOB_KEY_PREFIX, str(batch)
        )
        moved += [_text(job_id) for job_id in ids or []]
    return moved
