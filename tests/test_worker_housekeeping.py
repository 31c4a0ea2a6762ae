"""Queue housekeeping against the real Redis (database 13), no worker processes: `list_jobs` pages
through the queues and rq's registries with pipelines, and `delete_prefixed_keys` takes only the
keys whose names start with the prefix. Every key written here carries this module's own prefix,
or (the neighbours that must survive) a second prefix of its own, deleted by name at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry
from rq.results import Result

from pipeline.verdict import Verdict
from worker.jobs import JOB_FUNCTION
from worker.housekeeping import delete_prefixed_keys
from worker.queue import all_queues, iter_jobs, list_jobs

from worker_testing import deployment_settings, own_connection, requires_redis

PREFIX = f"k{uuid.uuid4().hex[:10]}"
SETTINGS = deployment_settings(PREFIX)
pytestmark = requires_redis


@pytest.fixture()
def connection() -> Iterator[redis.Redis]:
    with own_connection(PREFIX) as connection:
        yield connection


def payload(n: int) -> dict[str, Any]:
    return {"source": f"/media/{n}.mp4", "kind": "file", "content_hash": f"{n:064x}", "model_version": "ralf-tiny-1"}


def put(queue: Queue, n: int) -> Job:
    return queue.enqueue(JOB_FUNCTION, payload(n), job_id=f"{PREFIX}-{n}")


def finish(queue: Queue, job: Job, label: str) -> None:
    """What a worker leaves for a finished job: status, result stream, finished registry."""
    queue.remove(job)
    verdict = Verdict(
        path=f"sha256:{job.id}", label=label, threshold=0.5, threshold_source="test", model_version="ralf-tiny-1"
    )
    job.set_status(JobStatus.FINISHED)
    Result.create(job, Result.Type.SUCCESSFUL, ttl=600, return_value=verdict.model_dump(mode="json"))
    FinishedJobRegistry(queue=queue).add(job, ttl=600)


def fail(queue: Queue, job: Job, reason: str) -> None:
    queue.remove(job)
    job.set_status(JobStatus.FAILED)
    Result.create(job, Result.Type.FAILED, ttl=600, exc_string=f"Traceback (most recent call last):\n  ...\n{reason}\n")
    FailedJobRegistry(queue=queue).add(job, ttl=600)


def count_round_trips(connection: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every command sent alone, and every pipeline, appended as it goes to Redis."""
    sent: list[str] = []
    command = connection.execute_command

    def one(*args: Any, **options: Any) -> Any:
        sent.append(str(args[0]))
        return command(*args, **options)

    pipeline = connection.pipeline

    def piped(*args: Any, **options: Any) -> Any:
        pipe = pipeline(*args, **options)
        execute: Callable[..., Any] = pipe.execute

        def counted(*a: Any, **k: Any) -> Any:
            sent.append("pipeline")
            return execute(*a, **k)

        pipe.execute = counted  # type: ignore[method-assign]
        return pipe

    monkeypatch.setattr(connection, "execute_command", one)
    monkeypatch.setattr(connection, "pipeline", piped)
    return sent


def test_jobs_are_listed_page_by_page_once_each(connection: redis.Redis) -> None:
    high, default, low = all_queues(SETTINGS, connection)
    queued = [put(high, n) for n in range(3)] + [put(default, n) for n in range(3, 10)]
    done = [put(default, n) for n in range(10, 15)]
    for n, job in enumerate(done):
        finish(default, job, "fake" if n % 2 else "real")
    failed = [put(low, n) for n in range(15, 18)]
    for job in failed:
        fail(low, job, f"ValueError: broken {job.id}")
    scheduled = low.enqueue_in(timedelta(hours=1), JOB_FUNCTION, payload(18), job_id=f"{PREFIX}-18")
    twice = put(default, 19)  # in the queue and (moving) already in the finished registry: listed once
    FinishedJobRegistry(queue=default).add(twice, ttl=600)

    paged = list(iter_jobs(connection, SETTINGS, page_size=3))
    everything = list_jobs(connection, SETTINGS)
    assert [s.model_dump() for s in paged] == [s.model_dump() for s in everything]
    ids = [s.job_id for s in paged]
    assert len(ids) == len(set(ids)) == 20
    # queue by queue (high, default, low), each queue before its registries
    assert ids[:3] == [job.id for job in queued[:3]]
    assert ids[3:11] == [job.id for job in queued[3:]] + [twice.id]
    by_id = {s.job_id: s for s in paged}
    assert [by_id[job.id].verdict_label for job in done] == ["real", "fake", "real", "fake", "real"]
    assert all(by_id[job.id].status == "finished" and by_id[job.id].error is None for job in done)
    assert [by_id[job.id].error for job in failed] == [f"ValueError: broken {job.id}" for job in failed]
    assert by_id[scheduled.id].status == "scheduled" and by_id[queued[0].id].status == "queued"
    assert by_id[queued[0].id].source == f"sha256:{0:064x}" and by_id[queued[0].id].queue == f"{PREFIX}-high"

    only_failed = list(iter_jobs(connection, SETTINGS, failed=True, page_size=2))
    assert [s.job_id for s in only_failed] == [job.id for job in failed]
    listed = list_jobs(connection, SETTINGS, failed=True)
    assert [s.model_dump() for s in only_failed] == [s.model_dump() for s in listed]


def test_listing_costs_round_trips_per_page_not_per_job(connection: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    default = all_queues(SETTINGS, connection)[1]
    for n in range(120):
        finish(default, put(default, n), "real")

    sent = count_round_trips(connection, monkeypatch)
    states = list(iter_jobs(connection, SETTINGS, page_size=50))
    assert len(states) == 120 and {s.verdict_label for s in states} == {"real"}
    # Three pages of 50 ids, each read and then two pipelines (hashes, latest results), plus a fixed
    # cost per queue and registry; one read per job, as listing once cost, would be 120 and more.
    assert sent.count("pipeline") == 6
    assert len(sent) < 50, sent


def test_only_keys_whose_names_start_with_the_prefix_are_deleted(connection: redis.Redis) -> None:
    other = f"x{PREFIX}"  # holds the prefix, but does not start with it: another deployment's
    mine = [
        f"{PREFIX}:webhooks:due",
        f"rq:job:{PREFIX}-1",
        f"rq:results:{PREFIX}-1",
        f"rq:execution:{PREFIX}-1:e1",
        f"rq:queue:{PREFIX}-default",
        f"rq:wip:{PREFIX}-default",
        f"rq:worker:{PREFIX}-w",
    ]
    theirs = [
        f"{other}:webhooks:due",
        f"rq:job:{other}-1",
        f"rq:queue:{other}-default",
        f"rq:job:{other}:{PREFIX}-1",  # the prefix after a second colon is not the job id's start
        f"{other}{PREFIX}",
    ]
    locks = {  # scheduler locks are named by uuid: whose they are, their queues say
        f"rq:scheduler:{uuid.uuid4().hex}": f"{PREFIX}-high,{PREFIX}-default",
        f"rq:scheduler:{uuid.uuid4().hex}": f"{other}-default",
    }
    shared = {
        "rq:queues": [f"rq:queue:{PREFIX}-default", f"rq:queue:{other}-default"],
        "rq:workers": [f"rq:worker:{PREFIX}-w", f"rq:worker:{other}-w"],
    }
    try:
        for key in mine + theirs:
            connection.set(key, "1")
        for key, queues in locks.items():
            connection.hset(key, "queues", queues)
        for key, members in shared.items():
            connection.sadd(key, *members)

        delete_prefixed_keys(connection, PREFIX)

        assert [key for key in mine if connection.exists(key)] == []
        assert [key for key in theirs if not connection.exists(key)] == []
        assert [bool(connection.exists(key)) for key in locks] == [False, True]
        for key, (own_member, other_member) in shared.items():
            assert not connection.sismember(key, own_member) and connection.sismember(key, other_member)
    finally:
        connection.delete(*theirs, *locks)
        for key, members in shared.items():
            connection.srem(key, *members)


def test_a_prefix_is_matched_literally(connection: redis.Redis) -> None:
    odd = f"{PREFIX}*?["
    kept = [f"{PREFIX}zz?[x", f"rq:job:{PREFIX}-x"]
    try:
        for key in [f"{odd}:a", f"rq:job:{odd}-1", *kept]:
            connection.set(key, "1")
        delete_prefixed_keys(connection, odd)
        assert not connection.exists(f"{odd}:a", f"rq:job:{odd}-1")
        assert connection.exists(*kept) == 2
    finally:
        connection.delete(*kept)
