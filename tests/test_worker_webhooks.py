"""Webhooks, Prometheus metrics and evidence of a real `ralf-cli worker` (tiny model, CPU, forked horses).

Traffic goes to 127.0.0.1 only: a local HTTP server receives the webhooks (RALF_URL_ALLOW opens
127.0.0.1 for this module), the worker's metrics endpoint is scraped there, and Redis is database 13
at 127.0.0.1:6379 with a per-session prefix; teardown deletes only keys named with that prefix.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner
from worker_testing import (
    REDIS_URL,
    deployment_env,
    deployment_environment,
    free_port,
    local_http_server,
    requires_redis,
    wait_for,
)

from cli.main import app
from pipeline import synthetic
from pipeline.verdict import Verdict
from ralf.core.settings import Settings, settings_env_names
from worker.housekeeping import delete_prefixed_keys
from worker.queue import connect, enqueue_scan, fetch_job, job_verdict
from worker.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    CallbackRefused,
    check_callback_url,
    delivery_key,
    job_deliveries,
    sign,
    verify_signature,
)

BIN = Path(sys.executable).parent
PREFIX = f"w{uuid.uuid4().hex[:10]}"
SECRET = "test-secret-" + uuid.uuid4().hex


# --- signatures (no Redis) ---------------------------------------------------------------------
def test_signature_verifies_and_rejects_tampering_and_replays() -> None:
    body = b'{"event":"scan.finished"}'
    now = int(time.time())
    headers = {TIMESTAMP_HEADER: str(now), SIGNATURE_HEADER: sign("s3cret", now, body)}
    assert verify_signature("s3cret", body, headers)
    assert not verify_signature("s3cret", body + b" ", headers)
    assert not verify_signature("other", body, headers)
    assert not verify_signature("s3cret", body, {**headers, TIMESTAMP_HEADER: str(now - 1)})  # timestamp is signed
    assert not verify_signature("s3cret", body, headers, now=now + 3600)  # a replay an hour later
    assert verify_signature("s3cret", body, {k.lower(): v for k, v in headers.items()})  # header case


@pytest.mark.parametrize("timestamp", ["²", "0{now}", "+{now}", " {now}", "{now} ", "{now}.0", "١٢٣", "{now}\n", ""])
def test_signature_needs_the_canonical_timestamp(timestamp: str) -> None:
    """Only the form `sign` writes (ASCII digits, no leading zero): anything else is False, never an error."""
    body = b"{}"
    now = int(time.time())
    text = timestamp.format(now=now)
    signature = sign("s3cret", now, body)
    forged = "v1=" + hmac.new(b"s3cret", text.encode() + b"." + body, hashlib.sha256).hexdigest()
    for value in (signature, forged):
        assert verify_signature("s3cret", body, {TIMESTAMP_HEADER: text, SIGNATURE_HEADER: value}, now=now) is False


def test_callback_urls_obey_the_download_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in settings_env_names():
        monkeypatch.delenv(name, raising=False)
    unsigned = Settings()
    with pytest.raises(CallbackRefused, match="RALF_WEBHOOK_SECRET"):
        check_callback_url("https://example.org/hook", unsigned)
    settings = Settings(webhook_secret="x")
    fake_dns: dict[str, list[str]] = {"hooks.example.org": ["93.184.215.14"], "sneaky.example.org": ["10.1.2.3"]}

    def resolver(host: str, port: int) -> list[str]:
        return fake_dns[host]

    assert check_callback_url("https://hooks.example.org/ralf?t=1", settings, resolver)
    for url, why in [
        ("ftp://hooks.example.org/x", "unsupported URL scheme"),
        ("https://user:pw@hooks.example.org/x", "credentials"),
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://169.254.169.254/latest", "link-local"),
        ("http://localhost/hook", "local"),
        ("https://sneaky.example.org/hook", "its address is not allowed"),
    ]:
        with pytest.raises(CallbackRefused, match=why) as refused:
            check_callback_url(url, settings, resolver)
        assert "10.1.2.3" not in str(refused.value)  # what a name resolves to is not told
    allowed = Settings(webhook_secret="x", url_allow=["127.0.0.1"])
    assert check_callback_url("http://127.0.0.1:8080/hook", allowed)
    with pytest.raises(ValueError, match="http"):
        Settings(callback_url="file:///etc/passwd")


# --- a real worker -------------------------------------------------------------------------------


class Receiver(BaseHTTPRequestHandler):
    """/ok answers 204; /fail-twice answers 503 twice per delivery, then 200; /always-fail 500."""

    hits: list[dict[str, object]] = []
    failures: dict[str, int] = {}
    lock = threading.Lock()

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.lock:
            delivery = self.headers.get(DELIVERY_HEADER, "")
            code = 204
            if self.path.startswith("/fail-twice"):
                seen = self.failures.get(delivery, 0)
                self.failures[delivery] = seen + 1
                code = 503 if seen < 2 else 200
            elif self.path.startswith("/always-fail"):
                code = 500
            headers = {name.lower(): value for name, value in self.headers.items()}  # HTTP names are case-blind
            self.hits.append({"path": self.path, "headers": headers, "body": body, "code": code, "at": time.time()})
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def receiver() -> Iterator[str]:
    with local_http_server(Receiver) as url:
        yield url


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("webhook-media")
    for seed in range(4):  # distinct content: distinct jobs
        synthetic.write_face_clip(root / f"clip{seed}.mp4", codec="h264", num_frames=4, size=(160, 120), fps=6.0, seed=seed)
    return root


@pytest.fixture(scope="module")
def env(media: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    values = deployment_env(
        PREFIX,
        RALF_MEDIA_ROOTS=str(media),
        RALF_RANDOM_WEIGHTS="1",
        RALF_RANDOM_PRESET="tiny",
        RALF_WORKER_LIVENESS_TTL_S="5",
        RALF_WEBHOOK_SECRET=SECRET,
        RALF_WEBHOOK_RETRY_INTERVALS_S="0.3,0.3",
        RALF_WEBHOOK_TIMEOUT_S="5",
        RALF_EVIDENCE_DIR=str(tmp_path_factory.mktemp("evidence")),
        RALF_METRICS_PORT=str(free_port()),
        RALF_METRICS_HOST="127.0.0.1",
    )
    with deployment_environment(values) as environment:
        yield environment
    delete_prefixed_keys(redis.Redis.from_url(REDIS_URL), PREFIX)


@pytest.fixture(scope="module")
def worker(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[bytes]]:
    """One long-running `ralf-cli worker` (fork mode: every job in its own work horse)."""
    log = tmp_path_factory.mktemp("webhook-worker") / "worker.log"
    process = subprocess.Popen(
        [str(BIN / "ralf-cli"), "worker", "--name", f"{PREFIX}-w", "--no-warm-up"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{env['RALF_METRICS_PORT']}/metrics"
    try:
        wait_for(lambda: process.poll() is None and scrape(url) != "", 600, "the worker's metrics endpoint")
        process.log = log  # type: ignore[attr-defined]
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def scrape(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except OSError:
        return ""


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, value = line.rsplit(" ", 1)
        if head.split("{", 1)[0] != name:
            continue
        if all(f'{key}="{val}"' in head for key, val in labels.items()):
            return float(value)
    return 0.0


def done(connection: redis.Redis, job_id: str) -> Callable[[], bool]:
    return lambda: fetch_job(connection, job_id).get_status().value in ("finished", "failed")


@requires_redis
def test_webhooks_metrics_and_evidence_of_a_real_worker(
    env: dict[str, str], media: Path, receiver: str, worker: subprocess.Popen[bytes]
) -> None:
    settings = Settings()
    connection = connect(settings)
    try:
        _run_scenario(settings, connection, env, media, receiver)
    except AssertionError:
        print(Path(worker.log).read_text(errors="replace")[-6000:])  # type: ignore[attr-defined]
        raise


def _run_scenario(settings: Settings, connection: redis.Redis, env: dict[str, str], media: Path, receiver: str) -> None:
    metrics_url = f"http://127.0.0.1:{env['RALF_METRICS_PORT']}/metrics"
    ok = enqueue_scan(connection, settings, str(media / "clip0.mp4"), callback=f"{receiver}/ok?token=abc").job_id
    flaky = enqueue_scan(connection, settings, str(media / "clip1.mp4"), callback=f"{receiver}/fail-twice").job_id
    dead = enqueue_scan(connection, settings, str(media / "clip2.mp4"), callback=f"{receiver}/always-fail").job_id
    with socket.socket() as sock:  # a closed port: the download fails, is retried once, then fails for good
        sock.bind(("127.0.0.1", 0))
        gone_url = f"http://127.0.0.1:{sock.getsockname()[1]}/gone.mp4"
    gone = enqueue_scan(connection, settings, gone_url, callback=f"{receiver}/ok").job_id
    after = enqueue_scan(connection, settings, str(media / "clip3.mp4")).job_id  # after the failing callback's job
    for job_id in (ok, flaky, dead, gone, after):
        wait_for(done(connection, job_id), 600, f"job {job_id}")

    # 1. the round trip: a signed POST of the stored verdict
    def posts(path: str) -> list[dict[str, object]]:
        return [hit for hit in Receiver.hits if str(hit["path"]).startswith(path)]

    wait_for(lambda: len(posts("/ok?token")) == 1, 30, "the /ok webhook")
    hit = posts("/ok?token")[0]
    headers, body = hit["headers"], hit["body"]
    assert isinstance(headers, dict) and isinstance(body, bytes)
    assert verify_signature(SECRET, body, headers)
    assert not verify_signature("wrong-secret", body, headers)
    sent = json.loads(body)
    assert sent["event"] == "scan.finished" and sent["job_id"] == ok and headers["x-ralf-job-id"] == ok
    assert headers["x-ralf-event"] == "scan.finished" and headers["x-ralf-delivery"] == sent["delivery_id"]
    print("webhook request headers:", {k: v for k, v in headers.items() if k.startswith(("x-ralf", "content", "user"))})
    stored = job_verdict(fetch_job(connection, ok))
    assert stored is not None and Verdict.model_validate(sent["verdict"]) == stored
    assert headers["content-type"] == "application/json"

    # evidence of the worker's job, under RALF_EVIDENCE_DIR/<job id>/
    assert stored.evidence and stored.evidence_dir == str(Path(env["RALF_EVIDENCE_DIR"]) / ok)
    for item in stored.evidence:
        assert (Path(stored.evidence_dir) / item.crop).is_file() and (Path(stored.evidence_dir) / item.frame).is_file()

    # ... and the report of the job by its id, with the worker's evidence images inline
    page = Path(env["RALF_EVIDENCE_DIR"]).parent / "job-report.html"
    made = CliRunner().invoke(app, ["report", ok, "-o", str(page)])
    assert made.exit_code == 0, made.output
    assert page.read_text().count('<img class="') == 4 * len(stored.evidence)
    assert CliRunner().invoke(app, ["report", f"{PREFIX}-nosuchjob"]).exit_code == 4

    # 2. a receiver that fails twice gets retries, with back-off, and then the delivery
    wait_for(lambda: len(posts("/fail-twice")) == 3, 30, "three attempts at /fail-twice")
    times = [float(h["at"]) for h in posts("/fail-twice")]  # type: ignore[arg-type]
    assert all(b - a >= 0.25 for a, b in zip(times, times[1:]))
    assert {h["headers"][DELIVERY_HEADER.lower()] for h in posts("/fail-twice")} == {  # type: ignore[index]
        job_deliveries(connection, settings, flaky, fetch_job(connection, flaky).created_at)[0].delivery_id
    }
    wait_for(
        lambda: job_deliveries(connection, settings, flaky, fetch_job(connection, flaky).created_at)[0].status == "delivered",
        10,
        "delivered state",
    )

    # 3. a callback that keeps failing: retried, then given up; the job still has its result
    wait_for(
        lambda: job_deliveries(connection, settings, dead, fetch_job(connection, dead).created_at)[0].status == "failed",
        30,
        "the failing webhook given up",
    )
    state = job_deliveries(connection, settings, dead, fetch_job(connection, dead).created_at)[0]
    assert state.attempts == 3 and "HTTP 500" in (state.last_error or "") and state.url.startswith("http://127.0.0.1")
    assert len(posts("/always-fail")) == 3
    shown = CliRunner().invoke(app, ["status", dead, "--json"])
    assert shown.exit_code == 0, shown.output
    webhook = json.loads(shown.stdout)["webhooks"][0]
    assert webhook["status"] == "failed" and webhook["attempts"] == 3 and "always-fail" not in webhook["url"]  # host only
    assert job_verdict(fetch_job(connection, dead)) is not None
    assert fetch_job(connection, after).get_status().value == "finished"  # the next job ran

    # 4. a job that failed for good is announced too
    wait_for(lambda: any(json.loads(h["body"])["job_id"] == gone for h in posts("/ok")), 30, "the failure webhook")  # type: ignore[arg-type]
    failure = next(json.loads(h["body"]) for h in posts("/ok") if json.loads(h["body"])["job_id"] == gone)  # type: ignore[arg-type]
    assert failure["event"] == "scan.failed" and "cannot reach" in failure["error"] and failure["verdict"] is None

    # 5. the same job enqueued again by another submitter with another callback: told at once
    again = enqueue_scan(connection, settings, str(media / "clip0.mp4"), callback=f"{receiver}/ok?second=1")
    assert again.job_id == ok and not again.created
    wait_for(lambda: len(posts("/ok?second")) == 1, 30, "the second submitter's webhook")

    # 6. metrics, counted by the parent although every job ran in a forked horse
    text = scrape(metrics_url)
    print(text)
    labels = sum(metric(text, "ralf_jobs_total", outcome=o) for o in ("real", "fake", "no_face", "error"))
    assert labels == 4
    assert metric(text, "ralf_jobs_total", outcome="retried") == 1 and metric(text, "ralf_jobs_total", outcome="failed") == 1
    assert metric(text, "ralf_scan_seconds_count") == 4 and metric(text, "ralf_faces_per_job_count") == 4
    assert metric(text, "ralf_stage_seconds_count", stage="infer") == 4 and metric(text, "ralf_stage_seconds_sum", stage="detect") > 0
    assert metric(text, "ralf_faces_total") >= 4 and metric(text, "ralf_faces_per_second") > 0
    assert metric(text, "ralf_model_info", version="random-tiny-seed0", engine="eager", mode="fork") == 1
    assert f'ralf_queue_depth{{priority="high",queue="{PREFIX}-high"}} 0.0' in text
    assert 'ralf_retries_waiting{priority="default"}' in text
    assert metric(text, "ralf_webhook_deliveries_total", outcome="retried") >= 4
    assert metric(text, "ralf_webhook_deliveries_total", outcome="failed") == 1
    assert metric(text, "ralf_webhook_deliveries_total", outcome="delivered") >= 4

    # no delivery is left scheduled, and nothing outside this module's prefix was written
    assert connection.zcard(settings.key("webhooks", "due")) == 0
    assert connection.exists(delivery_key(settings, state.delivery_id))


@requires_redis
def test_rq_info_reads_the_queues_with_the_json_serializer(env: dict[str, str], worker: subprocess.Popen[bytes]) -> None:
    """`rq info` (rq's own tool) lists our queues and workers when given the JSON serializer, and with the
    documented queue class its registry cleanup calls nothing a planted job names (`builtins.print` would
    print the job)."""
    from rq import Callback, Queue
    from rq.registry import StartedJobRegistry
    from rq.serializers import JSONSerializer

    connection = redis.Redis.from_url(REDIS_URL)
    queue = Queue(f"{PREFIX}-default", connection=connection, serializer=JSONSerializer)
    planted = queue.enqueue("worker.jobs.run_scan_job", {}, job_id=f"{PREFIX}-planted-info",
                            on_failure=Callback("builtins.print"))
    connection.lrem(queue.key, 0, planted.id)
    connection.zadd(StartedJobRegistry(queue=queue).key, {f"{planted.id}:exec": 1})
    result = subprocess.run(
        [str(BIN / "rq"), "info", "--url", REDIS_URL, "--serializer", "rq.serializers.JSONSerializer",
         "--queue-class", "worker.stored.GuardedQueue", f"{PREFIX}-high", f"{PREFIX}-default", f"{PREFIX}-low"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"{PREFIX}-default" in result.stdout and f"{PREFIX}-w" in result.stdout
    assert "<Job " not in result.stdout + result.stderr  # what print(job, connection, ...) would write
    assert f"{planted.id}: its failure callback 'builtins.print' is not run" in result.stdout + result.stderr
