"""End to end against a real Redis and real `rq worker` / `ralf-cli worker` processes (tiny model, CPU).

Isolation: Redis database 13 at 127.0.0.1:6379, and queue names, job ids and worker names carrying a
per-session prefix; teardown deletes only keys containing that prefix. The Redis-restart test runs
its own redis-server.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest
import redis
import torch
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry
from rq.serializers import JSONSerializer
from rq.worker import Worker
from typer.testing import CliRunner

from cli.main import app
from pipeline import synthetic
from pipeline.scan import Scanner
from ralf.config import RALFConfig
from ralf.model import RALF
from ralf.weights import save_weights
from worker.jobs import ScanOverrides
from worker.queue import all_queues, connect, delete_prefixed_keys, enqueue_scan, fetch_job, job_verdict
from worker.settings import Settings, settings_env_names

REDIS_URL = "redis://127.0.0.1:6379/13"
BIN = Path(sys.executable).parent
PREFIX = f"t{uuid.uuid4().hex[:10]}"
runner = CliRunner()


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


# Skipped only on a developer machine without Redis; under CI (.ci/run starts one) a missing Redis fails.
pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and not redis_answers(REDIS_URL), reason="no Redis at 127.0.0.1:6379 (.ci/run starts one)"
)


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


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
    values = {
        "RALF_REDIS_URL": REDIS_URL,
        "RALF_KEY_PREFIX": PREFIX,
        "RALF_QUEUE_HIGH": f"{PREFIX}-high",
        "RALF_QUEUE_DEFAULT": f"{PREFIX}-default",
        "RALF_QUEUE_LOW": f"{PREFIX}-low",
        "RALF_MEDIA_ROOTS": str(media),
        "RALF_WEIGHTS": str(weights),
        "RALF_DEVICE": "cpu",
        "RALF_DECODER": "pyav",
        "RALF_MAX_FRAMES": "2",
        "RALF_TORCH_THREADS": "1",
        "RALF_RETRY_MAX": "1",
        "RALF_RETRY_INTERVALS_S": "0",
        "RALF_WORKER_LIVENESS_TTL_S": "3",
        "RALF_DOWNLOAD_MAX_BYTES": "1000000",
        "RALF_DOWNLOAD_TIMEOUT_S": "5",
        "RALF_URL_ALLOW": "127.0.0.1",  # this module's HTTP server; every other internal address stays refused
    }
    with pytest.MonkeyPatch.context() as patch:
        for name in settings_env_names():
            patch.delenv(name, raising=False)
        for key, value in values.items():
            patch.setenv(key, value)
        yield {**os.environ, **values, "OMP_NUM_THREADS": "1"}
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


class WorkerProcess:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path, name: str) -> None:
        self.name = name
        self.log = log
        self.process = subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)

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


@pytest.fixture(scope="module")
def http_files(media: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    served = tmp_path_factory.mktemp("served")
    (served / "big.mp4").write_bytes(os.urandom(2_000_000))  # over the 1 MB cap
    shutil.copy(media / "face.mp4", served / "face.mp4")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None  # type: ignore[assignment]
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


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
    assert worker.wait(180) == 0, worker.tail()

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        assert worker.wait(180) == 0, worker.tail()
        jobs = Job.fetch_many(job_ids, connection=connection, serializer=JSONSerializer)
        assert [job.get_status().value for job in jobs] == ["finished"] * 3
        assert "jobs run in this process" in worker.log.read_text()
    finally:
        server.kill()
        server.wait()
