"""The crash-safe hand-over (worker/handover.py) and the job guard, against a real Redis, without worker
processes: every state a worker killed at any moment can leave, and what puts each job back.

Isolation: Redis database 13 at 127.0.0.1:6379, queue names, job ids and worker names carrying a
per-session prefix; teardown deletes only keys named with that prefix.
"""

from __future__ import annotations

import os
import pickle
import time
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from rq import Callback, Queue
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.webhook import Webhook
from worker_testing import REDIS_URL, deployment_settings, own_connection, requires_redis

from ralf.core.settings import Settings
from worker.handover import claim_next, move_due_scheduled, requeue_if_orphan, return_claims
from worker.jobs import JOB_FUNCTION, job_refusal
from worker.keys import alive_key, claims_key, members_key
from worker.liveness import LivenessBeat, requeue_abandoned

PREFIX = f"h{uuid.uuid4().hex[:10]}"

pytestmark = requires_redis

PAYLOAD = {"source": "/media/a.mp4", "kind": "file", "content_hash": "ab" * 32, "model_version": "ralf-tiny-1"}


@pytest.fixture()
def connection() -> Iterator[redis.Redis]:
    with own_connection(PREFIX) as connection:
        yield connection


@pytest.fixture()
def settings() -> Settings:
    return deployment_settings(PREFIX, worker_liveness_ttl_s=3)


def queues(settings: Settings, connection: redis.Redis) -> list[Queue]:
    return [Queue(name, connection=connection, serializer=JSONSerializer) for name in settings.queue_names]


def put(queue: Queue, name: str, **kwargs: Any) -> Job:
    return queue.enqueue(JOB_FUNCTION, PAYLOAD, job_id=f"{PREFIX}-{name}", **kwargs)


def ids(connection: redis.Redis, key: str) -> list[str]:
    return [v.decode() for v in connection.lrange(key, 0, -1)]


def test_claims_take_high_first_and_move_atomically(settings: Settings, connection: redis.Redis) -> None:
    high, default, low = queues(settings, connection)
    put(low, "l1"), put(default, "d1"), put(high, "h1"), put(default, "d2")
    keys = [q.key for q in (high, default, low)]
    order = [claim_next(connection, settings, "w1", keys) for _ in range(5)]
    assert order == [(high.key, f"{PREFIX}-h1"), (default.key, f"{PREFIX}-d1"), (default.key, f"{PREFIX}-d2"),
                     (low.key, f"{PREFIX}-l1"), None]
    # every job is now in exactly one place: the claims hash, with the queue it came from
    claims = {k.decode(): v.decode() for k, v in connection.hgetall(claims_key(settings, "w1")).items()}
    assert claims == {f"{PREFIX}-h1": high.key, f"{PREFIX}-d1": default.key, f"{PREFIX}-d2": default.key,
                      f"{PREFIX}-l1": low.key}
    assert all(connection.llen(key) == 0 for key in keys)


def test_dead_workers_claims_go_back_to_the_front(settings: Settings, connection: redis.Redis) -> None:
    """A worker killed between taking a job and starting it: the job is neither queued nor started.
    The liveness reaper of any live worker puts it back at the front of its queue, uncharged."""
    high, default, low = queues(settings, connection)
    put(default, "lost"), put(default, "next")
    assert claim_next(connection, settings, "victim", [q.key for q in (high, default, low)])[1] == f"{PREFIX}-lost"
    LivenessBeat(connection, settings, "victim").beat()  # it had published liveness...
    assert requeue_abandoned(connection, settings, [high, default, low]) == []  # ...and is alive: untouched
    connection.delete(alive_key(settings, "victim"))  # ...then its key expired: dead

    assert requeue_abandoned(connection, settings, [high, default, low]) == [f"{PREFIX}-lost"]
    assert ids(connection, default.key) == [f"{PREFIX}-lost", f"{PREFIX}-next"]
    assert connection.hlen(claims_key(settings, "victim")) == 0
    assert not connection.sismember(members_key(settings), "victim")  # forgotten once handled
    job = Job.fetch(f"{PREFIX}-lost", connection=connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.QUEUED and job.retries_left is None


def test_a_starved_worker_on_this_host_is_not_dead(settings: Settings, connection: redis.Redis) -> None:
    """A worker's key can expire because its process got no CPU (a loaded node) or was stopped; while the
    process exists on this host its claims stay: giving them back would run the job twice."""
    import socket

    import psutil

    from worker.keys import process_key

    high, default, low = queues(settings, connection)
    put(default, "held")
    claim_next(connection, settings, "starved", [q.key for q in (high, default, low)])
    connection.sadd(members_key(settings), "starved")
    me = f"{socket.gethostname()} {os.getpid()} {psutil.Process().create_time():.3f}"
    connection.set(process_key(settings, "starved"), me)
    assert requeue_abandoned(connection, settings, [high, default, low]) == []
    assert connection.hlen(claims_key(settings, "starved")) == 1 and connection.llen(default.key) == 0
    # the same pid number reused by another process later does not count
    connection.set(process_key(settings, "starved"), f"{socket.gethostname()} {os.getpid()} 12.000")
    assert requeue_abandoned(connection, settings, [high, default, low]) == [f"{PREFIX}-held"]


def test_give_back_never_duplicates(settings: Settings, connection: redis.Redis) -> None:
    """A claim is pushed back only when nothing else holds the job: not when it is queued again
    (--force), claimed by another worker, started, waiting for a retry, or ended."""
    high, default, low = queues(settings, connection)
    job = put(default, "j")
    keys = [q.key for q in (high, default, low)]
    claim_next(connection, settings, "dead", keys)
    for name in ("dead", "alive"):
        connection.sadd(members_key(settings), name)

    # queued again meanwhile: the stale claim is dropped, the job stays queued once
    connection.rpush(default.key, job.id)
    assert return_claims(connection, settings, "dead", [high, default, low]) == []
    assert ids(connection, default.key) == [job.id] and connection.hlen(claims_key(settings, "dead")) == 0

    # held by a live worker
    claim_next(connection, settings, "alive", keys)
    connection.hset(claims_key(settings, "dead"), job.id, default.key)
    assert return_claims(connection, settings, "dead", [high, default, low]) == []
    assert connection.llen(default.key) == 0

    # started (StartedJobRegistry holds "<job id>:<execution id>")
    connection.hdel(claims_key(settings, "alive"), job.id)
    connection.zadd(StartedJobRegistry(queue=default).key, {f"{job.id}:exec1": time.time() + 60})
    connection.hset(claims_key(settings, "dead"), job.id, default.key)
    assert return_claims(connection, settings, "dead", [high, default, low]) == []
    connection.delete(StartedJobRegistry(queue=default).key)

    # waiting for a retry
    connection.zadd(ScheduledJobRegistry(queue=default).key, {job.id: time.time() + 60})
    connection.hset(claims_key(settings, "dead"), job.id, default.key)
    assert return_claims(connection, settings, "dead", [high, default, low]) == []
    connection.delete(ScheduledJobRegistry(queue=default).key)

    # finished
    job.set_status(JobStatus.FINISHED)
    connection.hset(claims_key(settings, "dead"), job.id, default.key)
    assert return_claims(connection, settings, "dead", [high, default, low]) == []
    assert connection.llen(default.key) == 0

    # and finally really orphaned: back, once, even when two reapers race
    job.set_status(JobStatus.QUEUED)
    connection.hset(claims_key(settings, "dead"), job.id, default.key)
    assert return_claims(connection, settings, "dead", [high, default, low]) == [job.id]
    assert return_claims(connection, settings, "dead", [high, default, low]) == []
    assert ids(connection, default.key) == [job.id]


def test_orphan_requeue_for_enqueue(settings: Settings, connection: redis.Redis) -> None:
    """What rq's BLPOP over three queues could leave: a queued job in no list. enqueue puts it back."""
    _, default, _ = queues(settings, connection)
    job = put(default, "orphan")
    assert requeue_if_orphan(connection, settings, job.id, default) is False  # queued: fine as it is
    connection.lrem(default.key, 0, job.id)  # popped by a worker that died before registering it
    assert requeue_if_orphan(connection, settings, job.id, default) is True
    assert requeue_if_orphan(connection, settings, job.id, default) is False
    assert ids(connection, default.key) == [job.id]


def test_due_retries_move_once(settings: Settings, connection: redis.Redis) -> None:
    _, default, _ = queues(settings, connection)
    due, later = put(default, "due"), put(default, "later")
    connection.delete(default.key)
    registry = ScheduledJobRegistry(queue=default)
    connection.zadd(registry.key, {due.id: time.time() - 1, later.id: time.time() + 60})
    for job in (due, later):
        job.set_status(JobStatus.SCHEDULED)
    assert move_due_scheduled(connection, [default]) == [due.id]
    assert move_due_scheduled(connection, [default]) == []  # a second mover finds nothing
    assert ids(connection, default.key) == [due.id]
    assert Job.fetch(due.id, connection=connection, serializer=JSONSerializer).get_status() == JobStatus.QUEUED
    assert registry.get_job_ids() == [later.id]


def test_concurrent_claims_never_lose_or_duplicate(settings: Settings, connection: redis.Redis) -> None:
    """The claim is one script, applied (and written to the append-only file) whole or not at all:
    four clients draining one queue at once take every id exactly once."""
    import threading

    _, default, _ = queues(settings, connection)
    job_ids = [put(default, f"m{i}").id for i in range(60)]
    taken: list[str] = []
    lock = threading.Lock()

    def drain(worker: str) -> None:
        own = redis.Redis.from_url(REDIS_URL)
        while (claimed := claim_next(own, settings, worker, [default.key])) is not None:
            with lock:
                taken.append(claimed[1])

    threads = [threading.Thread(target=drain, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == sorted(job_ids)
    held = sum(connection.hlen(claims_key(settings, f"w{i}")) for i in range(4))
    assert held == 60


def test_scan_worker_builds_the_class_of_its_mode(settings: Settings, connection: redis.Redis) -> None:
    import torch
    from rq import SimpleWorker, Worker
    from rq.utils import import_worker_class

    from worker.worker_base import ScanWorkerBase
    from worker.worker_classes import WORKER_CLASSES, ForkScanWorker, InProcessScanWorker
    from worker.workers import ScanWorker

    _, default, _ = queues(settings, connection)
    fork = ScanWorker([default], connection=connection, name=f"{PREFIX}-f", mode="fork")
    in_process = ScanWorker([default], connection=connection, name=f"{PREFIX}-i", mode="in-process")
    assert type(fork) is ForkScanWorker and isinstance(fork, Worker) and fork.mode == "fork"
    assert type(in_process) is InProcessScanWorker and isinstance(in_process, SimpleWorker)
    auto = ScanWorker([default], connection=connection, name=f"{PREFIX}-a", mode="auto")
    assert type(auto) is WORKER_CLASSES["in-process" if torch.cuda.is_available() else "fork"]
    # Nothing heartbeats while an in-process job runs: its entry outlives the job timeout.
    job = put(default, "ttl", job_timeout=600)
    assert in_process.get_heartbeat_ttl(job) == 660
    with pytest.raises(ValueError, match="runs jobs fork, not in-process"):
        ForkScanWorker([default], connection=connection, name=f"{PREFIX}-x", mode="in-process")
    # `rq worker --worker-class ...` accepts every documented name
    for name in ("workers.ScanWorker", "worker_classes.ForkScanWorker", "worker_classes.InProcessScanWorker"):
        assert issubclass(import_worker_class(f"worker.{name}"), ScanWorkerBase)


def test_start_releases_the_claim_in_the_same_transaction(settings: Settings, connection: redis.Redis) -> None:
    from worker.workers import ClaimLost, ScanWorker

    _, default, _ = queues(settings, connection)
    worker = ScanWorker([default], connection=connection, name=f"{PREFIX}-w", mode="fork")
    worker.settings = settings
    job = put(default, "start")
    claim_next(connection, settings, worker.name, [default.key])
    worker.prepare_execution(Job.fetch(job.id, connection=connection, serializer=JSONSerializer))
    assert connection.hlen(claims_key(settings, worker.name)) == 0
    assert StartedJobRegistry(queue=default).get_job_ids() == [job.id]

    # the claim was given back while the worker was silent (presumed dead): it must not start the job,
    # which is queued again and may already run elsewhere
    other = put(default, "given-back")
    claim_next(connection, settings, worker.name, [default.key])
    assert return_claims(connection, settings, worker.name, [default]) == [other.id]
    with pytest.raises(ClaimLost):
        worker.prepare_execution(Job.fetch(other.id, connection=connection, serializer=JSONSerializer))
    assert StartedJobRegistry(queue=default).get_job_ids() == [job.id] and ids(connection, default.key) == [other.id]


# --- the job guard --------------------------------------------------------------------------------
def test_only_scan_jobs_pass_the_guard(settings: Settings, connection: redis.Redis) -> None:
    _, default, _ = queues(settings, connection)
    good = put(default, "good")
    assert job_refusal(good) is None
    cases = {
        default.enqueue("os.system", "touch /tmp/never", job_id=f"{PREFIX}-sys"): "runs only worker.jobs.run_scan_job",
        put(default, "cb", on_success=Callback("os.system")): "no callbacks (on_success set)",
        put(default, "fail-cb", on_failure=Callback("builtins.exec")): "no callbacks (on_failure set)",
        put(default, "hook", webhooks=[Webhook("http://127.0.0.1:9/hook", "finished")]): "no webhooks",
        default.enqueue(JOB_FUNCTION, {"source": 1}, job_id=f"{PREFIX}-payload"): "invalid scan job payload: source",
        default.enqueue(JOB_FUNCTION, PAYLOAD, 2, job_id=f"{PREFIX}-args"): "exactly one positional argument",
        default.enqueue(JOB_FUNCTION, PAYLOAD, extra=1, job_id=f"{PREFIX}-kwargs"): "exactly one positional argument",
    }
    for job, expected in cases.items():
        fetched = Job.fetch(job.id, connection=connection, serializer=JSONSerializer)
        assert expected in (job_refusal(fetched) or ""), job.id
    assert "errors.pydantic.dev" not in job_refusal(
        Job.fetch(f"{PREFIX}-payload", connection=connection, serializer=JSONSerializer)
    )


class _Boom:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch /tmp/ralf-test-unpickled",))


def test_pickled_job_data_is_refused_without_unpickling(settings: Settings, connection: redis.Redis) -> None:
    """A job written by a pickle-serializer client (or an attacker): read as JSON, never unpickled."""
    _, default, _ = queues(settings, connection)
    job = put(default, "pickled")
    connection.hset(job.key, "data", zlib.compress(pickle.dumps(("os.system", None, ["x"], {}))))
    fetched = Job.fetch(job.id, connection=connection, serializer=JSONSerializer)
    assert "cannot be read as a JSON rq job" in (job_refusal(fetched) or "")
    connection.hset(job.key, "data", zlib.compress(pickle.dumps(_Boom())))
    fetched = Job.fetch(job.id, connection=connection, serializer=JSONSerializer)
    assert job_refusal(fetched) is not None and not os.path.exists("/tmp/ralf-test-unpickled")


def test_guard_refuses_dependencies_and_repeats(settings: Settings, connection: redis.Redis) -> None:
    """A finished job would release the jobs that depend on it, and a repeated one would run again."""
    from rq import Repeat

    _, default, _ = queues(settings, connection)
    first = put(default, "first")
    cases = {
        put(default, "dependent", depends_on=first).id: "scan jobs depend on no other job",
        put(default, "repeated", repeat=Repeat(times=2)).id: "scan jobs are not repeated",
    }
    for job_id, expected in cases.items():
        assert expected in (job_refusal(Job.fetch(job_id, connection=connection, serializer=JSONSerializer)) or "")


@pytest.fixture()
def planted(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An importable module whose import leaves `imported` in tmp_path (its name is what a job names)."""
    name = f"planted_{PREFIX}"
    (tmp_path / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(tmp_path)!r}, 'imported').write_text('x')\n"
        "def hit(*args, **kwargs):\n    raise RuntimeError('called')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path, f"{name}.hit"


def test_guarded_jobs_import_nothing_they_name(settings: Settings, connection: redis.Redis, planted: Any) -> None:
    from rq.timeouts import UnixSignalDeathPenalty

    from worker.stored import GuardedJob, JobRefused

    folder, hit = planted
    _, default, _ = queues(settings, connection)
    job = put(default, "named", on_success=Callback(hit), on_failure=Callback(hit), on_stopped=Callback(hit))
    fetched = GuardedJob.fetch(job.id, connection=connection, serializer=JSONSerializer)
    assert fetched.success_callback is None and fetched.failure_callback is None and fetched.stopped_callback is None
    fetched.execute_success_callback(UnixSignalDeathPenalty, None)
    fetched.execute_failure_callback(UnixSignalDeathPenalty, RuntimeError, RuntimeError(), None)
    fetched.execute_stopped_callback(UnixSignalDeathPenalty)
    other = default.enqueue(hit, job_id=f"{PREFIX}-other-func")
    with pytest.raises(JobRefused, match="runs only worker.jobs.run_scan_job"):
        _ = GuardedJob.fetch(other.id, connection=connection, serializer=JSONSerializer).func
    assert not (folder / "imported").exists()


def test_started_registry_cleanup_calls_nothing(settings: Settings, connection: redis.Redis, planted: Any) -> None:
    """rq's cleanup calls an abandoned job's failure callback; ours retries a scan job with retries
    left, fails the others, fails as refused what is not a plain scan job, and a hash it cannot read
    by hand, without importing anything."""
    from rq import Retry

    from worker.stored import clean_started_registry

    folder, hit = planted
    _, default, _ = queues(settings, connection)
    registry = StartedJobRegistry(queue=default)
    jobs = {
        "retried": put(default, "retried", retry=Retry(max=1)),
        "abandoned": put(default, "abandoned"),
        "named": put(default, "named", on_failure=Callback(hit), retry=Retry(max=3)),
    }
    connection.hset(f"rq:job:{PREFIX}-garbage", mapping={"status": "started", "data": "x", "created_at": "never"})
    connection.delete(default.key)
    for job_id in [*(job.id for job in jobs.values()), f"{PREFIX}-garbage", f"{PREFIX}-vanished"]:
        connection.zadd(registry.key, {f"{job_id}:exec": 1})
    connection.zadd(registry.key, {f"{PREFIX}-running:exec": time.time() + 600})  # not expired: untouched
    failed: list[str] = []
    handled = clean_started_registry(default, 600, on_failed=failed.append)
    assert sorted(handled) == sorted([*(job.id for job in jobs.values()), f"{PREFIX}-garbage"])
    assert failed == [jobs["abandoned"].id]  # only a scan job failed for good gets its webhooks
    status = {kind: Job.fetch(job.id, connection=connection, serializer=JSONSerializer) for kind, job in jobs.items()}
    assert status["retried"].get_status() == JobStatus.QUEUED and ids(connection, default.key) == [jobs["retried"].id]
    assert status["abandoned"].get_status() == JobStatus.FAILED
    assert status["named"].get_status() == JobStatus.FAILED and status["named"].retries_left == 0
    assert "no callbacks (on_failure set)" in (status["named"].latest_result().exc_string or "")
    assert connection.hget(f"rq:job:{PREFIX}-garbage", "status") == b"failed"
    assert registry.get_job_ids(cleanup=False) == [f"{PREFIX}-running"]
    assert not (folder / "imported").exists()
