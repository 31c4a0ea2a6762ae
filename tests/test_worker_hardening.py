"""Hardening, round two, against a real Redis and real `ralf-cli worker` processes (tiny model, CPU):
nothing named in Redis runs wherever a job hash is read, unreadable input is an `error` verdict that
names no path, `enqueue --wait` answers a Redis loss, a burst worker finishes its due retries, and
concurrent `enqueue --force` of one file make one job.

Isolation: Redis database 13 at 127.0.0.1:6379, queue names, job ids and worker names carrying a
per-session prefix; teardown deletes only keys named with that prefix. The Redis-loss test runs its
own redis-server. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis
import torch
from rq import Callback, Queue, Retry
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from typer.testing import CliRunner
from worker_testing import (
    REDIS_URL,
    deployment_env,
    deployment_environment,
    free_port,
    redis_answers,
    requires_redis,
    wait_for,
)

from cli.main import app
from pipeline import synthetic
from ralf.config import RALFConfig
from ralf.core.settings import Settings
from ralf.model import RALF
from ralf.weights import save_weights
from worker.housekeeping import delete_prefixed_keys
from worker.jobs import JOB_FUNCTION
from worker.queue import all_queues, connect, enqueue_scan, failure_reason, fetch_job, job_verdict

BIN = Path(sys.executable).parent
PREFIX = f"r{uuid.uuid4().hex[:10]}"
PLANTED = f"ralf_planted_{PREFIX}"  # a module whose import (let alone call) leaves a marker file
runner = CliRunner()

pytestmark = requires_redis


# --- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hardening-media")
    for seed in range(4):
        synthetic.write_face_clip(root / f"clip{seed}.mp4", codec="h264", num_frames=2, size=(160, 120), seed=seed + 1)
    return root


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the planted module; importing it writes `imported`, calling `hit` writes `called`."""
    folder = tmp_path_factory.mktemp("planted")
    (folder / f"{PLANTED}.py").write_text(
        "from pathlib import Path\n"
        f"HERE = Path({str(folder)!r})\n"
        "(HERE / 'imported').write_text('the name was imported')\n"
        "def hit(*args, **kwargs):\n"
        "    (HERE / 'called').write_text('the name was called')\n"
        "    raise RuntimeError('planted callback ran')\n"
    )
    return folder


@pytest.fixture(scope="module")
def env(media: Path, plant: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    torch.manual_seed(0)
    weights = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights(weights, RALF(RALFConfig.tiny()).eval())
    values = deployment_env(PREFIX, RALF_MEDIA_ROOTS=str(media), RALF_WEIGHTS=str(weights), RALF_WORKER_LIVENESS_TTL_S="3")
    with deployment_environment(values) as environment:
        # the planted module is importable by the workers (and by this process): nothing may import it
        path = os.pathsep.join(p for p in (str(plant), environment.get("PYTHONPATH", "")) if p)
        yield {**environment, "PYTHONPATH": path}
    for worker in SPAWNED:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    delete_prefixed_keys(redis.Redis.from_url(REDIS_URL), PREFIX)


@pytest.fixture(scope="module")
def settings(env: dict[str, str]) -> Settings:
    return Settings()


@pytest.fixture(scope="module")
def connection(settings: Settings) -> redis.Redis:
    return connect(settings)


SPAWNED: list[subprocess.Popen[bytes]] = []


def start_worker(
    env: dict[str, str], log: Path, name: str, *args: str, prefix: list[str] | None = None
) -> subprocess.Popen[bytes]:
    argv = [*(prefix or []), str(BIN / "ralf-cli"), "worker", "--name", name, "--no-warm-up", *args]
    process = subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    SPAWNED.append(process)
    return process


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def ended(connection: redis.Redis, job_ids: list[str]) -> Callable[[], bool]:
    def check() -> bool:
        statuses = [connection.hget(f"rq:job:{job_id}", "status") for job_id in job_ids]
        return all(status in (b"finished", b"failed") for status in statuses)

    return check


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output + (repr(result.exception) if result.exception else "")


def payload(settings: Settings, clip: Path) -> dict[str, object]:
    from ralf.core.files import file_sha256
    from worker.queue import model_version

    return {"source": str(clip), "kind": "file", "content_hash": file_sha256(clip), "model_version": model_version(settings)}


def plant_started(
    connection: redis.Redis, queue: Queue, name: str, score: float, *, job_hash: dict[str, str] | None = None, **kwargs: object
) -> str:
    """A job hash in rq's started-job registry (`rq:wip:<queue>`), in none of the queues, as an attacker
    writes it: with `job_hash` the raw fields, else a scan job enqueued with `kwargs` (callbacks...)."""
    job_id = f"{PREFIX}-{name}"
    if job_hash is None:
        queue.enqueue(JOB_FUNCTION, kwargs.pop("data"), job_id=job_id, **kwargs)
        connection.lrem(queue.key, 0, job_id)
        connection.hset(f"rq:job:{job_id}", "status", "started")
    else:
        connection.hset(f"rq:job:{job_id}", mapping=job_hash)
    connection.zadd(StartedJobRegistry(queue=queue).key, {f"{job_id}:planted-execution": score})
    return job_id


def planted_callbacks() -> dict[str, Callback]:
    hit = f"{PLANTED}.hit"
    return {"on_success": Callback(hit), "on_failure": Callback(hit), "on_stopped": Callback(hit)}


# --- 1. nothing named in Redis is imported or called ---------------------------------------------
def test_jobs_listing_calls_nothing_a_planted_job_names(
    env: dict[str, str], plant: Path, media: Path, settings: Settings, connection: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """rq cleans the started registry when it is listed, calling an expired job's failure callback."""
    monkeypatch.syspath_prepend(str(plant))  # the name resolves in this process too: it must not be used
    queue = all_queues(settings, connection)[1]
    job_id = plant_started(connection, queue, "listed", 1, data=payload(settings, media / "clip0.mp4"),
                           **planted_callbacks())
    code, output = invoke("jobs", "--json")
    assert code == 0, output
    listed = {state["job_id"]: state for state in json.loads(output)}
    assert listed[job_id]["status"] == "failed" and "no callbacks" in listed[job_id]["error"]
    assert sorted(p.name for p in plant.iterdir()) == [f"{PLANTED}.py"]


def test_worker_maintenance_and_reaper_call_nothing_a_planted_job_names(
    env: dict[str, str], plant: Path, media: Path, settings: Settings, connection: redis.Redis, tmp_path: Path,
) -> None:
    """Expired started entries (the worker's start-up maintenance) and an entry of a dead worker (the
    liveness reaper): failed as refused or unreadable, nothing imported, the worker keeps running and
    rq's maintenance lock is released."""
    queue = all_queues(settings, connection)[1]
    clip = media / "clip1.mp4"
    expired = plant_started(connection, queue, "expired", 1, data=payload(settings, clip), retry=Retry(max=2),
                            **planted_callbacks())
    garbage = plant_started(connection, queue, "garbage", 1, job_hash={
        "status": "started", "data": "not zlib, not json", "created_at": "yesterday", "origin": queue.name,
        "failure_callback_name": f"{PLANTED}.hit",
    })
    ghost = f"{PREFIX}-ghost"
    dead = plant_started(connection, queue, "dead", time.time() + 3600, data=payload(settings, clip),
                         **planted_callbacks())
    connection.hset(f"rq:job:{dead}", "worker_name", ghost)
    connection.sadd(settings.key("liveness-workers"), ghost)  # published liveness once, key expired since

    worker = start_worker(env, tmp_path / "w.log", f"{PREFIX}-maint")
    try:
        wait_for(ended(connection, [expired, garbage, dead]), 120, "the planted jobs to be failed")
        time.sleep(2)  # a worker whose maintenance raised would be exiting now
        assert worker.poll() is None, (tmp_path / "w.log").read_text()
    finally:
        stopping = time.monotonic()
        code = stop(worker)
    log = (tmp_path / "w.log").read_text(errors="replace")
    assert code == 0 and "Traceback" not in log, log
    assert time.monotonic() - stopping < 10, log  # warm shutdown of an idle worker: no minute-long wait
    assert sorted(p.name for p in plant.iterdir()) == [f"{PLANTED}.py"], log
    for job_id in (expired, dead):
        job = fetch_job(connection, job_id)
        assert job.get_status() == JobStatus.FAILED and job.retries_left in (0, None), job_id
        assert "JobRefused: refused: scan jobs carry no callbacks" in (failure_reason(job) or ""), job_id
    assert connection.hget(f"rq:job:{garbage}", "status") == b"failed"
    assert "cannot be read" in connection.hget(f"rq:job:{garbage}", "exc_info").decode()
    assert connection.zcard(StartedJobRegistry(queue=queue).key) == 0
    assert not connection.exists(f"rq:clean_registries:{queue.name}")  # the maintenance lock


# --- 3. unreadable input: an error verdict naming no path ------------------------------------------
@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None, reason="root reads any file without setpriv")
def test_unreadable_input_is_an_error_verdict_naming_no_path(
    env: dict[str, str], media: Path, settings: Settings, connection: redis.Redis, tmp_path: Path,
) -> None:
    """The worker cannot read the file (mode 000; as root, the worker runs without the capabilities
    that bypass file modes): an `error` verdict, not a retried traceback, and neither submitter's path
    in what both can read."""
    private = media / "alice-private-name.mp4"
    shutil.copy(media / "clip2.mp4", private)
    shutil.copy(media / "clip2.mp4", media / "bob-copy.mp4")
    job_id = enqueue_scan(connection, settings, str(private)).job_id
    assert enqueue_scan(connection, settings, str(media / "bob-copy.mp4")).job_id == job_id  # shared by content
    private.chmod(0)
    (media / "bob-copy.mp4").chmod(0)
    capless = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    worker = start_worker(env, tmp_path / "w.log", f"{PREFIX}-perm", "--burst", prefix=capless)
    try:
        assert worker.wait(300) == 0, (tmp_path / "w.log").read_text()
    finally:
        private.chmod(0o644)
        (media / "bob-copy.mp4").chmod(0o644)
    job = fetch_job(connection, job_id)
    verdict = job_verdict(job)
    assert job.get_status() == JobStatus.FINISHED and len(job.results()) == 1
    assert verdict is not None and verdict.label == "error" and "cannot read" in (verdict.error or "")
    shown = [invoke("status", job_id, "--json")[1], invoke("result", job_id, "--json")[1], invoke("jobs", "--json")[1],
             (tmp_path / "w.log").read_text(errors="replace")]
    for text in shown[:3]:
        assert "alice-private-name" not in text and "bob-copy" not in text and str(media) not in text, text
    assert "Traceback" not in shown[3], shown[3]


# --- 7. enqueue --wait when Redis goes away --------------------------------------------------------
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_enqueue_wait_answers_a_lost_redis_with_exit_3(env: dict[str, str], media: Path, tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: redis_answers(f"redis://127.0.0.1:{port}/0"), 20, "own redis-server")
        enqueue_env = {**env, "RALF_REDIS_URL": f"redis://:sesame-{PREFIX}@127.0.0.1:{port}/0", "RALF_REDIS_RETRIES": "1"}
        redis.Redis(port=port).config_set("requirepass", f"sesame-{PREFIX}")
        client = subprocess.Popen(
            [str(BIN / "ralf-cli"), "enqueue", str(media / "clip3.mp4"), "--wait"],
            env=enqueue_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        wait_for(lambda: redis.Redis(port=port, password=f"sesame-{PREFIX}").dbsize() > 0, 60, "the job to be enqueued")
        time.sleep(1)  # waiting now
        server.kill()
        server.wait()
        out, err = client.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    text = (out + err).decode(errors="replace")
    assert client.returncode == 3, text
    assert "cannot talk to Redis" in text and "Traceback" not in text, text
    assert f"sesame-{PREFIX}" not in text and "redis://***@127.0.0.1" in text, text


# --- 8. a burst worker finishes due retries --------------------------------------------------------
def test_burst_worker_runs_retries_that_fall_due_and_names_later_ones(
    env: dict[str, str], media: Path, settings: Settings, connection: redis.Redis, tmp_path: Path,
) -> None:
    queue = all_queues(settings, connection)[0]
    soon = queue.create_job(JOB_FUNCTION, args=(payload(settings, media / "clip0.mp4"),), job_id=f"{PREFIX}-soon",
                            result_ttl=600)
    later = queue.create_job(JOB_FUNCTION, args=(payload(settings, media / "clip1.mp4"),), job_id=f"{PREFIX}-later",
                             result_ttl=600)
    queue.schedule_job(soon, datetime.now(timezone.utc) + timedelta(seconds=4))  # what a retry's back-off does
    queue.schedule_job(later, datetime.now(timezone.utc) + timedelta(hours=2))
    worker = start_worker({**env, "RALF_BURST_RETRY_WAIT_S": "30"}, tmp_path / "w.log", f"{PREFIX}-burst", "--burst")
    assert worker.wait(300) == 0, (tmp_path / "w.log").read_text()
    log = (tmp_path / "w.log").read_text(errors="replace")
    assert fetch_job(connection, soon.id).get_status() == JobStatus.FINISHED, log
    assert fetch_job(connection, later.id).get_status() == JobStatus.SCHEDULED
    assert "1 retry still waits" in log and "next due at" in log, log


# --- 9. concurrent enqueue --force of one file -----------------------------------------------------
def test_concurrent_force_enqueues_make_one_job_and_no_internal_error(
    env: dict[str, str], media: Path, settings: Settings, connection: redis.Redis,
) -> None:
    clip = str(media / "clip3.mp4")
    answers: list[object] = []

    def force() -> None:
        try:
            answers.append(enqueue_scan(redis.Redis.from_url(REDIS_URL), settings, clip, force=True).job_id)
        except Exception as exc:  # noqa: BLE001 - what this test looks for
            answers.append(exc)

    for _ in range(5):
        threads = [threading.Thread(target=force) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    errors = [a for a in answers if isinstance(a, Exception)]
    assert errors == [] and len(set(answers)) == 1, errors
    queued = [v.decode() for v in connection.lrange(all_queues(settings, connection)[1].key, 0, -1)]
    assert queued.count(answers[0]) == 1
    assert Job.fetch(str(answers[0]), connection=connection, serializer=JSONSerializer).get_status() == JobStatus.QUEUED


# --- 4. secrets masked wherever shown or stored for display ------------------------------------------
def test_config_masks_the_redis_password_and_the_callback_token(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RALF_REDIS_URL", f"redis://:sesame-{PREFIX}@127.0.0.1:6379/13")
    monkeypatch.setenv("RALF_CALLBACK_URL", f"https://hooks.example/ralf?token=tok-{PREFIX}")
    monkeypatch.setenv("RALF_WEBHOOK_SECRET", f"hook-{PREFIX}")
    for args in (["config", "--json"], ["config"]):
        code, output = invoke(*args)
        assert code == 0, output
        for secret in (f"sesame-{PREFIX}", f"tok-{PREFIX}", f"hook-{PREFIX}"):  # password, token, webhook secret
            assert secret not in output, output
    shown = json.loads(invoke("config", "--json")[1])["settings"]
    assert shown["redis_url"] == "redis://***@127.0.0.1:6379/13"
    assert shown["callback_url"] == "https://hooks.example/ralf?***"


def test_a_callback_token_never_reaches_last_error(
    env: dict[str, str], media: Path, connection: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`status` shows each delivery's last error to anyone holding the job id: the receiver's query
    (tokens) must not be in it, whatever the failure (here: nothing listens on the port)."""
    from worker.webhooks import WebhookSender, register_callback

    monkeypatch.setenv("RALF_WEBHOOK_SECRET", f"hook-{PREFIX}")
    settings = Settings()
    job = all_queues(settings, connection)[1].enqueue(JOB_FUNCTION, payload(settings, media / "clip2.mp4"),
                                                      job_id=f"{PREFIX}-hooked")
    job.set_status(JobStatus.FAILED)
    url = f"http://127.0.0.1:{free_port()}/hook?token=tok-{PREFIX}"
    assert register_callback(connection, settings, job.id, url)  # ended already: scheduled at once
    sender = WebhookSender(connection, settings)
    assert sender.deliver_due() == 1
    code, output = invoke("status", job.id, "--json")
    (delivery,) = json.loads(output)["webhooks"]
    assert code == 0 and delivery["last_error"].startswith(f"cannot reach {url.split('/hook')[0]}:"), output
    assert f"tok-{PREFIX}" not in output and "/hook" not in output, output
