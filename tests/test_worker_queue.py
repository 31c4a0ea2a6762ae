"""End to end against a real Redis and real `rq worker` / `ralf-cli worker` processes (tiny model, CPU).

Isolation: Redis database 13 at 127.0.0.1:6379, and queue names, job ids and worker names carrying a
per-session prefix; teardown deletes only keys named with that prefix. The Redis-restart test runs
its own redis-server.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import psutil
import pytest
import redis
import torch
from rq import Callback, Queue, Retry
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry
from rq.serializers import JSONSerializer
from rq.webhook import Webhook
from rq.worker import Worker
from typer.testing import CliRunner
from worker_testing import (
    REDIS_URL,
    deployment_env,
    deployment_environment,
    free_port,
    local_http_server,
    redis_answers,
    requires_redis,
    wait_for,
)

from cli.main import app
from pipeline import synthetic
from pipeline.scan import Scanner
from ralf.config import RALFConfig
from ralf.core.settings import Settings
from ralf.model import RALF
from ralf.weights import save_weights
from worker.housekeeping import delete_prefixed_keys
from worker.jobs import JOB_FUNCTION, ScanJob, ScanOverrides, job_id_for
from worker.keys import claims_key, members_key
from worker.queue import (
    all_queues,
    build_scan_job,
    connect,
    enqueue_scan,
    failure_reason,
    fetch_job,
    job_verdict,
    model_version,
)

BIN = Path(sys.executable).parent
PREFIX = f"t{uuid.uuid4().hex[:10]}"
runner = CliRunner()

pytestmark = requires_redis


# --- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("queue-media")
    small = {"codec": "h264", "size": (160, 120), "fps": 6.0}
    synthetic.write_face_clip(root / "face.mp4", num_frames=6, **small)
    for seed in range(40):  # distinct content: distinct job ids
        synthetic.write_face_clip(root / f"many{seed:02d}.mp4", num_frames=2, seed=seed + 1, **small)
    synthetic.write_face_clip(root / "long.mp4", codec="h264", num_frames=96, size=(320, 240), fps=12.0)
    synthetic.write_text_as_video(root / "corrupt.mp4")
    synthetic.write_truncated_copy(root / "long.mp4", root / "truncated.mp4", 0.5)
    return root


@pytest.fixture(scope="module")
def env(media: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """RALF_* for this session, set in os.environ (for CliRunner) and passed to worker processes."""
    torch.manual_seed(0)
    weights = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights(weights, RALF(RALFConfig.tiny()).eval())
    values = deployment_env(
        PREFIX,
        RALF_MEDIA_ROOTS=str(media),
        RALF_WEIGHTS=str(weights),
        RALF_WORKER_LIVENESS_TTL_S="3",
        RALF_DOWNLOAD_MAX_BYTES="1000000",
    )
    with deployment_environment(values) as environment:
        yield environment
    for worker in SPAWNED:  # a failed test may have left its worker running
        if worker.alive():
            worker.kill_tree()
    delete_own_keys(redis.Redis.from_url(REDIS_URL))


def delete_own_keys(connection: redis.Redis) -> None:
    """Only keys that carry this session's prefix (queue names, job ids and worker names all do)."""
    delete_prefixed_keys(connection, PREFIX)


@pytest.fixture(scope="module")
def settings(env: dict[str, str]) -> Settings:
    return Settings()


@pytest.fixture(scope="module")
def connection(settings: Settings) -> redis.Redis:
    return connect(settings)


SPAWNED: list[WorkerProcess] = []  # every worker process a test started; the module's teardown ends them


class WorkerProcess:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path, name: str) -> None:
        self.name = name
        self.log = log
        self.process = subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        SPAWNED.append(self)

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout_s: float) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker {self.name} still running; log:\n{self.tail()}") from None

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)  # warm shutdown
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill_tree(self) -> None:
        """SIGKILL the worker and its work horse, as a lost node would."""
        parent = psutil.Process(self.process.pid)
        for process in [*parent.children(recursive=True), parent]:
            process.kill()
        self.process.wait()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def rq_worker(
    env: dict[str, str], tmp: Path, name: str, *, burst: bool, url: str | None = None, queues: list[str] | None = None
) -> WorkerProcess:
    """The documented plain rq command (as compose.yaml's rq-worker runs it): rq worker <queues> --url ...
    --serializer rq.serializers.JSONSerializer --worker-class worker.workers.ScanWorker --with-scheduler."""
    argv = [str(BIN / "rq"), "worker", *(queues or [f"{PREFIX}-high", f"{PREFIX}-default", f"{PREFIX}-low"])]
    argv += ["--url", url or env["RALF_REDIS_URL"], "--serializer", "rq.serializers.JSONSerializer", "--name", name]
    argv += ["--worker-class", "worker.workers.ScanWorker", "--with-scheduler"]
    return WorkerProcess(argv + (["--burst"] if burst else []), env, tmp / f"{name}.log", name)


def ralf_worker(env: dict[str, str], tmp: Path, name: str, *, burst: bool = False) -> WorkerProcess:
    argv = [str(BIN / "ralf-cli"), "worker", "--name", name] + (["--burst"] if burst else [])
    return WorkerProcess(argv, env, tmp / f"{name}.log", name)


@pytest.fixture(scope="module")
def pool(
    env: dict[str, str], connection: redis.Redis, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[WorkerProcess]]:
    """Two long-running `ralf-cli worker` processes (preloaded model, forked horses)."""
    logs = tmp_path_factory.mktemp("worker-logs")
    workers = [ralf_worker(env, logs, f"{PREFIX}-w{i}") for i in (1, 2)]
    queue = all_queues(Settings(), connection)[1]
    try:
        wait_for(lambda: len(Worker.all(queue=queue)) == 2, 120, "two registered workers")
    except AssertionError:
        for w in workers:
            print(w.tail())
            w.stop()
        raise
    yield workers
    for w in workers:
        w.stop()


SERVER_HITS: list[str] = []  # "METHOD path" of every request the module's HTTP server got


class MediaHandler(SimpleHTTPRequestHandler):
    """Serves the `served` folder, plus a redirect to an internal address, a trickle and a webhook sink."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        SERVER_HITS.append(f"GET {self.path}")
        port = self.server.server_address[1]
        if self.path == "/redirect-internal.mp4":  # allowed host (127.0.0.1) -> another loopback address
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.2:{port}/face.mp4")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/trickle.mp4":  # one byte every 0.5 s of a declared 200 KB body
            self.send_response(200)
            self.send_header("Content-Length", "200000")
            self.end_headers()
            for _ in range(240):
                try:
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.5)
            return
        super().do_GET()

    def do_POST(self) -> None:  # noqa: N802 - a webhook would land here
        SERVER_HITS.append(f"POST {self.path}")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def http_files(media: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    served = tmp_path_factory.mktemp("served")
    (served / "big.mp4").write_bytes(os.urandom(2_000_000))  # over the 1 MB cap
    shutil.copy(media / "face.mp4", served / "face.mp4")
    shutil.copy(media / "corrupt.mp4", served / "corrupt.mp4")
    with local_http_server(functools.partial(MediaHandler, directory=str(served))) as url:
        yield url


def finished(connection: redis.Redis, job_ids: list[str]) -> Callable[[], bool]:
    def check() -> bool:
        jobs = Job.fetch_many(job_ids, connection=connection, serializer=JSONSerializer)
        return all(job is not None and job.get_status(refresh=False).value in ("finished", "failed") for job in jobs)

    return check


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


# --- tests ----------------------------------------------------------------------------------------
def test_bad_inputs_are_refused_at_enqueue(
    env: dict[str, str], media: Path, tmp_path: Path, connection: redis.Redis,
) -> None:
    outside = synthetic.write_face_clip(tmp_path / "outside.mp4", codec="h264", num_frames=2, size=(160, 120))
    escape = media / "escape.mp4"
    escape.symlink_to(outside)
    code, output = invoke(
        "enqueue", str(media / "missing.mp4"), str(outside), str(escape), "ftp://example.com/a.mp4", f"file://{outside}"
    )
    assert code == 2
    assert "no such file" in output and output.count("outside the media roots") == 2
    assert "unsupported URL scheme 'ftp://'" in output and "unsupported URL scheme 'file://'" in output
    assert all(queue.count == 0 for queue in all_queues(Settings(), connection))


def test_worker_verdict_equals_scan(
    env: dict[str, str], media: Path, settings: Settings, connection: redis.Redis, tmp_path: Path,
) -> None:
    clip = media / "face.mp4"
    code, output = invoke("enqueue", str(clip), "--json")
    assert code == 0, output
    job_id = json.loads(output)["jobs"][0]["job_id"]

    # idempotent: same video, same model -> same job, unless --force
    code, output = invoke("enqueue", str(clip), "--json")
    again = json.loads(output)["jobs"][0]
    assert again["job_id"] == job_id and again["created"] is False

    # the payload travels as JSON (rq compresses the job's data field with zlib), never pickle
    stored = json.loads(zlib.decompress(connection.hget(f"rq:job:{job_id}", "data")))
    assert stored[0] == "worker.jobs.run_scan_job" and stored[2][0]["source"] == str(clip)

    worker = rq_worker(env, tmp_path, f"{PREFIX}-plain", burst=True)
    assert worker.wait(300) == 0, worker.tail()

    code, output = invoke("result", job_id, "--json")
    assert code == 0, output
    from_queue = json.loads(output)
    direct = Scanner(settings.scan_options(), settings.weights).scan(clip)
    assert from_queue["label"] == direct.label and from_queue["score"] == pytest.approx(direct.score, abs=1e-6)
    assert from_queue["model_version"] == direct.model_version
    assert [t["num_faces"] for t in from_queue["tracks"]] == [t.num_faces for t in direct.tracks]

    # the stored result is JSON as well
    entry = connection.xrevrange(f"rq:results:{job_id}", count=1)[0][1]
    assert json.loads(base64.b64decode(entry[b"return_value"]))["label"] == direct.label

    code, output = invoke("status", job_id, "--json")
    assert json.loads(output)["status"] == "finished"
    code, output = invoke("enqueue", str(clip), "--force", "--json")
    assert json.loads(output)["jobs"][0]["created"] is True


def test_forty_jobs_two_workers_each_exactly_once(
    pool: list[WorkerProcess], media: Path, settings: Settings, connection: redis.Redis,
) -> None:
    clips = sorted(media.glob("many*.mp4"))
    assert len(clips) == 40
    job_ids = [enqueue_scan(connection, settings, str(clip)).job_id for clip in clips]
    assert len(set(job_ids)) == 40
    wait_for(finished(connection, job_ids), 150, "40 jobs")

    jobs = Job.fetch_many(job_ids, connection=connection, serializer=JSONSerializer)
    assert [job.get_status(refresh=False).value for job in jobs] == ["finished"] * 40
    assert [len(job.results()) for job in jobs] == [1] * 40  # one execution result each: none ran twice
    assert {job.worker_name for job in jobs} == {w.name for w in pool}  # both workers took jobs
    assert all(job_verdict(job).label in ("real", "fake") for job in jobs)
    queue = all_queues(settings, connection)[1]
    assert queue.count == 0 and FailedJobRegistry(queue=queue).count == 0
    assert set(job_ids) <= set(FinishedJobRegistry(queue=queue).get_job_ids())


def test_bad_inputs_give_error_verdicts_and_workers_keep_running(
    pool: list[WorkerProcess], media: Path, settings: Settings, connection: redis.Redis, http_files: str
) -> None:
    cases = {
        str(media / "corrupt.mp4"): "not a readable video",
        str(media / "truncated.mp4"): "truncated",
        f"{http_files}/big.mp4": "download too large",
        f"{http_files}/missing.mp4": "HTTP 404",
        f"{http_files}/corrupt.mp4": f"not a readable video file (unrecognised format, or truncated/corrupt container): "
        f"{http_files}/corrupt.mp4",  # named by its URL, not by the worker's temporary file
    }
    job_ids = {text: enqueue_scan(connection, settings, text).job_id for text in cases}
    good = enqueue_scan(connection, settings, f"{http_files}/face.mp4").job_id
    wait_for(finished(connection, [*job_ids.values(), good]), 90, "bad-input jobs")
    for text, expected in cases.items():
        job = fetch_job(connection, job_ids[text])
        verdict = job_verdict(job)
        assert job.get_status().value == "finished" and verdict is not None, text
        assert verdict.label == "error" and expected in (verdict.error or ""), (text, verdict.error)
        assert len(job.results()) == 1  # permanent errors are not retried
    assert job_verdict(fetch_job(connection, good)).label in ("real", "fake")
    assert all(w.alive() for w in pool)


def test_unreachable_download_is_retried_then_listed_as_failed(
    pool: list[WorkerProcess], settings: Settings, connection: redis.Redis,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    job_id = enqueue_scan(connection, settings, f"http://127.0.0.1:{port}/gone.mp4").job_id
    wait_for(finished(connection, [job_id]), 60, "unreachable download")
    job = fetch_job(connection, job_id)
    # tried twice (RALF_RETRY_MAX=1; rq records a result only for the final attempt)
    assert job.get_status().value == "failed" and job.retries_left == 0
    code, output = invoke("jobs", "--failed", "--json")
    failed = {s["job_id"]: s for s in json.loads(output)}
    assert job_id in failed and "cannot reach" in failed[job_id]["error"]
    code, output = invoke("result", job_id)
    assert code == 1 and "cannot reach" in output


class PickleBomb:
    """Runs a shell command when unpickled: what a pickle-serializer worker would execute."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, (self.command,))


def test_workers_run_only_the_scan_function(
    pool: list[WorkerProcess], media: Path, settings: Settings, connection: redis.Redis, tmp_path: Path, http_files: str,
) -> None:
    """Anyone who can write to Redis can name any function in a job; `ralf-cli worker` runs only the scan."""
    marker = tmp_path / "pwned"
    queue = all_queues(settings, connection)[1]
    payload, _ = build_scan_job(str(media / "face.mp4"), settings, version=model_version(settings))
    good = payload.model_dump(mode="json")
    SERVER_HITS.clear()
    hooks = [Webhook(f"{http_files}/hook", "finished"), Webhook(f"{http_files}/hook", "failed")]
    jobs = {
        "function": queue.enqueue("os.system", f"touch {marker}-system", job_id=f"{PREFIX}-evil-system",
                                  retry=Retry(max=3)),
        "exec": queue.enqueue("builtins.exec", f"open({str(marker) + '-exec'!r}, 'w')", job_id=f"{PREFIX}-evil-exec"),
        "callback": queue.enqueue(JOB_FUNCTION, good, on_success=Callback("os.system"), job_id=f"{PREFIX}-evil-cb"),
        "webhook": queue.enqueue(JOB_FUNCTION, good, webhooks=hooks, job_id=f"{PREFIX}-evil-hook"),
        "payload": queue.enqueue(JOB_FUNCTION, {**good, "detector_weights": "/tmp/x.pt"}, job_id=f"{PREFIX}-evil-pl"),
    }
    # a job whose data is a pickle that runs a command when loaded (never pushed through rq's client)
    pickled = queue.create_job(JOB_FUNCTION, args=(good,), job_id=f"{PREFIX}-evil-pickle")
    pickled.save()
    connection.hset(pickled.key, mapping={
        "data": zlib.compress(pickle.dumps(PickleBomb(f"touch {marker}-pickle"))), "status": "queued",
        "origin": queue.name,
    })
    connection.rpush(queue.key, pickled.id)
    jobs["pickle"] = pickled

    wait_for(finished(connection, [job.id for job in jobs.values()]), 120, "the refused jobs")
    expected = {
        "function": "runs only worker.jobs.run_scan_job, not 'os.system'",
        "exec": "not 'builtins.exec'",
        "callback": "no callbacks (on_success set)",
        "webhook": "no webhooks",
        "payload": "invalid scan job payload: detector_weights: Extra inputs are not permitted",
        "pickle": "cannot be read as a JSON rq job",
    }
    for kind, job in jobs.items():
        job = fetch_job(connection, job.id)
        reason = failure_reason(job) or ""
        assert job.get_status().value == "failed" and expected[kind] in reason, (kind, reason)
        assert "errors.pydantic.dev" not in reason
    assert fetch_job(connection, f"{PREFIX}-evil-system").retries_left == 0  # refused, not retried
    assert list(tmp_path.glob("pwned*")) == [] and SERVER_HITS == []
    code, output = invoke("status", f"{PREFIX}-evil-system", "--json")
    assert "JobRefused: refused: this worker runs only" in json.loads(output)["error"]
    assert all(w.alive() for w in pool)


def test_job_taken_by_a_killed_worker_runs_once(
    pool: list[WorkerProcess], media: Path, settings: Settings, connection: redis.Redis,
) -> None:
    """A worker SIGKILLed after taking a job off the queue and before starting it leaves the job in its
    claims hash, nowhere else. The live workers' reaper puts it back; it runs once, uncharged."""
    clip = synthetic.write_face_clip(media / "claimed.mp4", codec="h264", num_frames=2, size=(160, 120), seed=101)
    payload, _ = build_scan_job(str(clip), settings, version=model_version(settings))
    queue = all_queues(settings, connection)[1]
    job = queue.create_job(JOB_FUNCTION, args=(payload.model_dump(mode="json"),), job_id=job_id_for(payload, PREFIX),
                           result_ttl=600, retry=Retry(max=1))
    job.save()
    job.set_status(JobStatus.QUEUED)
    ghost = f"{PREFIX}-ghost"
    with connection.pipeline() as pipe:  # the state the kill left: a liveness member without a live key
        pipe.sadd(members_key(settings), ghost)
        pipe.hset(claims_key(settings, ghost), job.id, queue.key)
        pipe.execute()
    wait_for(finished(connection, [job.id]), 120, "the claimed job to be re-queued and run")
    job = fetch_job(connection, job.id)
    assert job.get_status().value == "finished" and len(job.results()) == 1
    assert job.worker_name in {w.name for w in pool} and job.retries_left == 1
    assert connection.hlen(claims_key(settings, ghost)) == 0 and not connection.sismember(members_key(settings), ghost)


def test_rq_command_refuses_other_functions_and_enqueue_requeues_orphans(
    env: dict[str, str], media: Path, connection: redis.Redis, tmp_path: Path,
) -> None:
    """The documented `rq worker ... --worker-class worker.workers.ScanWorker` refuses too; and a job that an
    older worker popped and lost (queued, in no list) is put back by the next enqueue of the same video."""
    name = f"{PREFIX}-rqcmd"
    own = Settings(queue_default=name)
    queue = Queue(name, connection=connection, serializer=JSONSerializer)
    marker = tmp_path / "pwned"
    evil = queue.enqueue("os.system", f"touch {marker}", job_id=f"{PREFIX}-rq-evil", retry=Retry(max=2))
    clip = synthetic.write_face_clip(media / "orphan.mp4", codec="h264", num_frames=2, size=(160, 120), seed=102)
    first = enqueue_scan(connection, own, str(clip))
    connection.lrem(queue.key, 0, first.job_id)  # popped by BLPOP, its worker killed before it registered the job
    again = enqueue_scan(connection, own, str(clip))
    assert again.job_id == first.job_id and not again.created and again.requeued and again.status == "queued"
    assert enqueue_scan(connection, own, str(clip)).requeued is False  # queued now: left alone
    assert [v.decode() for v in connection.lrange(queue.key, 0, -1)] == [first.job_id, evil.id]  # back in front

    worker = rq_worker(env, tmp_path, f"{PREFIX}-rqcmd-w", burst=True, queues=[name])
    assert worker.wait(300) == 0, worker.tail()
    evil = fetch_job(connection, evil.id)
    assert evil.get_status().value == "failed" and "runs only worker.jobs.run_scan_job" in failure_reason(evil)
    assert evil.retries_left == 0 and not marker.exists()
    orphan = fetch_job(connection, first.job_id)
    assert orphan.get_status().value == "finished" and len(orphan.results()) == 1
    assert "rq's scheduler is not started" in worker.log.read_text()


def test_downloads_never_reach_internal_addresses(
    pool: list[WorkerProcess], settings: Settings, connection: redis.Redis, http_files: str,
) -> None:
    port = http_files.rsplit(":", 1)[1]
    # refused at enqueue (RALF_URL_ALLOW opens 127.0.0.1 only, for this module's server)
    internal = [
        f"http://127.0.0.2:{port}/face.mp4", "http://localhost:6379/", "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/a.mp4", "http://0.0.0.0/a.mp4", "http://2130706434/a.mp4", "http://10.0.0.1/a.mp4",
        "http://metadata.google.internal/computeMetadata/v1/", f"http://user:pw@127.0.0.1:{port}/face.mp4",
    ]
    code, output = invoke("enqueue", *internal, "--json")
    answer = json.loads(output[output.index("{"):])
    assert code == 2 and answer["jobs"] == [] and len(answer["refused"]) == len(internal)
    assert all("pw@" not in r["error"] for r in answer["refused"])

    # ... and by the worker, for payloads written straight into Redis, on every redirect
    queue = all_queues(settings, connection)[1]
    cases = {
        f"http://127.0.0.2:{port}/face.mp4": "127.0.0.2 is not a public address (loopback)",
        f"{http_files}/redirect-internal.mp4": "redirect to http://127.0.0.2",
        f"http://user:pw@127.0.0.1:{port}/face.mp4": "URL with credentials refused",
    }
    SERVER_HITS.clear()
    job_ids = {}
    for n, url in enumerate(cases):
        raw = ScanJob(source=url, kind="url", model_version=model_version(settings)).model_dump(mode="json")
        job_ids[url] = queue.enqueue(JOB_FUNCTION, raw, job_id=f"{PREFIX}-ssrf-{n}").id
    wait_for(finished(connection, list(job_ids.values())), 120, "the internal-address jobs")
    for url, expected in cases.items():
        job = fetch_job(connection, job_ids[url])
        verdict = job_verdict(job)
        assert verdict is not None and verdict.label == "error" and expected in verdict.error, (url, verdict)
        assert "pw@" not in job.latest_result().return_value.__repr__()
    assert SERVER_HITS == ["GET /redirect-internal.mp4"]  # the redirect target was never requested


def test_download_deadline_holds_in_the_worker(
    pool: list[WorkerProcess], settings: Settings, connection: redis.Redis, http_files: str,
) -> None:
    """A server sending a byte every 0.5 s: each attempt ends at RALF_DOWNLOAD_TIMEOUT_S (5 s), not at the
    job timeout (an hour for URL jobs)."""
    started = time.monotonic()
    job_id = enqueue_scan(connection, settings, f"{http_files}/trickle.mp4").job_id
    wait_for(finished(connection, [job_id]), 120, "the trickled download to give up")
    job = fetch_job(connection, job_id)
    assert job.get_status().value == "failed" and job.retries_left == 0  # two attempts (RALF_RETRY_MAX=1)
    assert "did not finish within 5 s" in failure_reason(job)
    assert time.monotonic() - started < 90  # two 5 s attempts plus scheduling, far below the hour


def test_non_utf8_metadata_scans_and_enqueue_answers_every_input(
    pool: list[WorkerProcess], media: Path, settings: Settings, connection: redis.Redis,
) -> None:
    cafe = synthetic.write_latin1_metadata_copy(media / "face.mp4", media / "cafe.mp4")
    inputs = [str(media / "many38.mp4"), str(cafe), str(media / "missing.mp4"), str(media / "many39.mp4")]
    code, output = invoke("enqueue", *inputs, "--json")
    answer = json.loads(output[output.index("{"):])
    assert code == 2  # one refused (missing); the others enqueued and printed
    assert [job["source"] for job in answer["jobs"]] == [inputs[0], inputs[1], inputs[3]]
    assert [r["input"] for r in answer["refused"]] == [inputs[2]]
    job_ids = [job["job_id"] for job in answer["jobs"]]
    wait_for(finished(connection, job_ids), 180, "the jobs")
    verdict = job_verdict(fetch_job(connection, job_ids[1]))
    assert verdict.label in ("real", "fake") and verdict.counts.frames_decoded == 2, verdict


def test_messages_name_what_the_user_gave(settings: Settings, connection: redis.Redis) -> None:
    for command in ("status", "result"):
        code, output = invoke(command, "bad.id")
        assert code == 4 and "is not a job id" in output and "Traceback" not in output


def test_retries_come_back_on_time_when_the_scheduler_holder_was_killed(
    pool: list[WorkerProcess], media: Path, settings: Settings, connection: redis.Redis,
) -> None:
    """rq's scheduler lock outlives a SIGKILLed holder by a minute, and rq's scheduler moves due retries only
    under that lock. The workers' liveness threads move them (atomically per job) whoever holds it."""
    for queue in all_queues(settings, connection):  # the lock a killed worker's scheduler leaves behind
        connection.set(f"rq:scheduler-lock:{queue.name}", "scheduler-of-a-killed-worker", ex=61)
    clip = synthetic.write_face_clip(media / "retry.mp4", codec="h264", num_frames=2, size=(160, 120), seed=103)
    payload, _ = build_scan_job(str(clip), settings, version=model_version(settings))
    queue = all_queues(settings, connection)[1]
    job = queue.create_job(JOB_FUNCTION, args=(payload.model_dump(mode="json"),), job_id=job_id_for(payload, PREFIX),
                           result_ttl=600)
    due = time.time() + 2
    queue.schedule_job(job, datetime.fromtimestamp(due, timezone.utc))  # what a retry with a 2 s back-off does
    wait_for(finished(connection, [job.id]), 90, "the retried job")
    job = fetch_job(connection, job.id)
    assert job.get_status().value == "finished" and job.started_at.timestamp() - due < 15  # rq's lock: 61 s
    assert connection.get(f"rq:scheduler-lock:{queue.name}") == b"scheduler-of-a-killed-worker"


def test_shared_results_name_content_not_another_submitters_path(
    pool: list[WorkerProcess], media: Path, settings: Settings, connection: redis.Redis,
) -> None:
    """Two users enqueue the same video from different paths: one job (keyed by content), and neither sees
    the other's path in status, result or the stored verdict; each one's --wait report shows their own."""
    first = synthetic.write_face_clip(media / "alice-private-name.mp4", codec="h264", num_frames=2, size=(160, 120),
                                      seed=104)
    second = media / "bob-copy.mp4"
    shutil.copy(first, second)
    code, output = invoke("enqueue", str(first), "--json")
    job_id = json.loads(output)["jobs"][0]["job_id"]
    code, output = invoke("enqueue", str(second), "--wait", "--json")
    waited = json.loads(output[output.index("{"):])
    assert code == 0 and waited["jobs"][0]["job_id"] == job_id
    assert waited["jobs"][0]["verdict"]["path"] == str(second)  # bob's own path in bob's report
    for command in ("status", "result"):
        code, output = invoke(command, job_id, "--json")
        assert code == 0 and "alice-private-name" not in output and "bob-copy" not in output, output
    stored = job_verdict(fetch_job(connection, job_id))
    assert stored.path == f"sha256:{payload_hash(first)}"
    assert "alice" not in fetch_job(connection, job_id).description


def payload_hash(path: Path) -> str:
    from ralf.core.files import file_sha256

    return file_sha256(path)


def test_killed_worker_job_is_rerun_by_the_other(
    pool: list[WorkerProcess], media: Path, settings: Settings, connection: redis.Redis,
) -> None:
    job_id = enqueue_scan(connection, settings, str(media / "long.mp4"), overrides=ScanOverrides(every_n=1)).job_id
    job = fetch_job(connection, job_id)

    def scanning() -> bool:
        job.refresh()
        return job.get_status().value == "started" and (job.meta.get("progress") or {}).get("frames_done", 0) > 0

    wait_for(scanning, 60, "the long job to start scanning", interval_s=0.05)
    victim = next(w for w in pool if w.name == job.worker_name)
    survivor = next(w for w in pool if w is not victim)
    victim.kill_tree()

    wait_for(finished(connection, [job_id]), 90, "the re-run of the killed job")
    job.refresh()
    assert job.get_status().value == "finished", survivor.tail()
    assert job.worker_name == survivor.name and len(job.results()) == 1
    verdict = job_verdict(job)
    assert verdict.label in ("real", "fake") and verdict.counts.frames_decoded == 96
    assert survivor.alive()


def start_redis(port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir), "--save", "",
         "--appendonly", "yes", "--appendfsync", "always"],
        stdout=subprocess.DEVNULL,
    )
    wait_for(lambda: redis_answers(f"redis://127.0.0.1:{port}/0"), 20, "own redis-server")
    return server


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_nothing_lost_when_redis_restarts(env: dict[str, str], media: Path, tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    server = start_redis(port, data_dir)
    try:
        own = Settings(redis_url=url)
        connection = connect(own)
        clips = [media / "face.mp4", media / "many00.mp4", media / "many01.mp4"]
        job_ids = [enqueue_scan(connection, own, str(clip)).job_id for clip in clips]
        server.kill()  # a crash, not a clean shutdown: only the append-only file keeps the jobs
        server.wait()
        server = start_redis(port, data_dir)
        assert all_queues(own, connection)[1].count == 3
        # in-process mode (what CUDA workers use), here on CPU
        worker_env = {**env, "RALF_REDIS_URL": url, "RALF_WORKER_MODE": "in-process"}
        worker = rq_worker(worker_env, tmp_path, f"{PREFIX}-restart", burst=True, url=url)
        assert worker.wait(300) == 0, worker.tail()
        jobs = Job.fetch_many(job_ids, connection=connection, serializer=JSONSerializer)
        assert [job.get_status().value for job in jobs] == ["finished"] * 3
        assert "jobs run in this process" in worker.log.read_text()
    finally:
        server.kill()
        server.wait()
