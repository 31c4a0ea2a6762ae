"""The whole flow with a real worker: uploads scanned into verdicts, reports with evidence, the label
filter, readiness, the review desk (sessions, CSRF, the append-only trail; in a real browser too),
the review metrics, export -> calibrate, and deleting a scan while its verdict is kept."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import torch
from typer.testing import CliRunner

from api.keys import KeyStore
from api_testing import BIN, api_env, api_server, bearer, is_problem, make_key, settings_of, upload, wait_finished
from browser_testing import browser, require_chromium
from cli.main import app
from pipeline import synthetic
from ralf.config import RALFConfig
from ralf.model import RALF
from ralf.weights import save_weights
from worker_testing import REDIS_URL, deployment_environment, requires_redis, wait_for
from worker.housekeeping import delete_prefixed_keys

pytestmark = [requires_redis, pytest.mark.slow]
PREFIX = f"apr{uuid.uuid4().hex[:8]}"
CLIPS = 4


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("review-media")


@pytest.fixture(scope="module")
def env(media: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    values = api_env(
        PREFIX, media,
        RALF_EVIDENCE_DIR=str(tmp_path_factory.mktemp("review-evidence")),
        RALF_REVIEW_UNCERTAIN_MARGIN="1.0",  # every 'real' verdict with a face joins the queue
        RALF_WORKER_LIVENESS_TTL_S="5",
    )  # fmt: skip
    yield values
    delete_prefixed_keys(redis.Redis.from_url(REDIS_URL), PREFIX)


@pytest.fixture(scope="module")
def base(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with api_server(env, tmp_path_factory.mktemp("review-log") / "serve.log") as url:
        yield url


@pytest.fixture(scope="module")
def worker(
    env: dict[str, str], base: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[bytes]]:
    log = tmp_path_factory.mktemp("review-worker") / "worker.log"
    with deployment_environment(env) as environment:
        process = subprocess.Popen(
            [str(BIN / "ralf-cli"), "worker", "--name", f"{PREFIX}-w", "--no-warm-up"],
            env=environment, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(
            lambda: process.poll() is None and httpx.get(f"{base}/readyz").status_code == 200,
            600,
            f"a live worker ({log})",
        )
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def owner(env: dict[str, str]) -> str:
    return make_key(env, "submit", "uploader")


@pytest.fixture(scope="module")
def reviewer(env: dict[str, str]) -> str:
    return make_key(env, "review", "moderator-1")


@pytest.fixture(scope="module")
def scans(
    base: str, owner: str, worker: subprocess.Popen[bytes], tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("review-clips")
    jobs = []
    for seed in range(CLIPS):
        clip = synthetic.write_face_clip(
            folder / f"clip{seed}.mp4", codec="h264", num_frames=6, size=(320, 240), fps=6.0, seed=seed
        )
        answer = upload(base, owner, clip.read_bytes(), name=f"my-upload-{seed}.mp4")
        assert answer.status_code == 202, answer.text
        jobs.append(answer.json()["id"])
    return [wait_finished(base, owner, job_id) for job_id in jobs]


def test_verdicts_reports_and_the_label_filter(
    base: str, owner: str, scans: list[dict[str, Any]], media: Path, env: dict[str, str]
) -> None:
    for number, scan in enumerate(scans):
        assert scan["status"] == "finished", scan
        verdict = scan["verdict"]
        assert verdict["path"] == f"my-upload-{number}.mp4" and verdict["evidence_dir"] is None
        assert scan["label"] in ("fake", "real") and verdict["counts"]["faces"] > 0, verdict
        text = json.dumps(scan)
        assert str(media) not in text and env["RALF_EVIDENCE_DIR"] not in text
    report = httpx.get(f"{base}/v1/scans/{scans[0]['id']}/report", headers=bearer(owner))
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert report.headers["content-security-policy"].startswith("default-src 'none'")
    assert "my-upload-0.mp4" in report.text and "data:image/png;base64," in report.text  # evidence inline
    assert str(media) not in report.text and env["RALF_EVIDENCE_DIR"] not in report.text
    for label in ("fake", "real"):
        listed = httpx.get(f"{base}/v1/scans", headers=bearer(owner), params={"label": label}).json()["items"]
        assert sorted(i["id"] for i in listed) == sorted(s["id"] for s in scans if s["label"] == label)


def test_readiness_with_a_live_worker(base: str, worker: subprocess.Popen[bytes]) -> None:
    ready = httpx.get(f"{base}/readyz").json()
    assert ready["status"] == "ok" and ready["workers"] >= 1 and ready["redis"] is True


def _login(base: str, token: str) -> httpx.Client:
    client = httpx.Client(base_url=base, follow_redirects=False, timeout=30)
    form = client.get("/review/login")
    csrf = form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    answer = client.post("/review/login", data={"csrf": csrf, "key": token})
    assert answer.status_code == 303 and answer.headers["location"] == "/review/queue", answer.text
    cookie = answer.headers["set-cookie"]
    assert (
        "ralf_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    )
    return client


def _csrf(html: str) -> str:
    return html.split('name="csrf" value="', 1)[1].split('"', 1)[0]


def test_the_desk_needs_a_session_and_csrf_and_keeps_every_decision(
    base: str, env: dict[str, str], reviewer: str, owner: str, scans: list[dict[str, Any]]
) -> None:
    anonymous = httpx.Client(base_url=base, follow_redirects=False)
    for path in ("/review/queue", f"/review/jobs/{scans[0]['id']}", f"/review/jobs/{scans[0]['id']}/report"):
        assert anonymous.get(path).headers["location"] == "/review/login"
    assert (
        anonymous.post(f"/review/jobs/{scans[0]['id']}/decisions", data={"outcome": "unsure"}).headers["location"]
        == "/review/login"
    )
    login = anonymous.get("/review/login")
    assert "form-action 'self'" in login.headers["content-security-policy"]
    refused = anonymous.post("/review/login", data={"csrf": _csrf(login.text), "key": owner})  # a submit key
    assert refused.status_code == 401 and "no review scope" in refused.text
    is_problem(anonymous.post("/review/login", data={"csrf": "forged", "key": reviewer}), 403)

    desk = _login(base, reviewer)
    queue = desk.get("/review/queue")
    assert queue.status_code == 200 and all(s["id"] in queue.text for s in scans)
    assert "default-src 'none'" in queue.headers["content-security-policy"]
    only_fake = desk.get("/review/queue", params={"label": "fake"}).text
    assert all((s["id"] in only_fake) == (s["label"] == "fake") for s in scans)
    middle = sorted(s["score"] for s in scans)[1]
    band = desk.get("/review/queue", params={"min_score": middle, "max_score": 1}).text
    assert all((s["id"] in band) == (s["score"] >= middle) for s in scans)
    assert desk.get("/review/queue", params={"since": "2999-01-01"}).text.count("<tr data-job") == 0
    assert desk.get("/review/queue", params={"until": "2999-01-01"}).text.count("<tr data-job") == CLIPS
    assert desk.get("/review/queue", params={"reviewed": "yes"}).text.count("<tr data-job") == 0
    is_problem(desk.get("/review/queue", params={"since": "yesterday"}), 400)
    job = scans[0]["id"]
    page = desk.get(f"/review/jobs/{job}")
    csrf = _csrf(page.text)
    is_problem(desk.post(f"/review/jobs/{job}/decisions", data={"outcome": "unsure"}), 403)  # no token
    is_problem(desk.post(f"/review/jobs/{job}/decisions", data={"outcome": "unsure", "csrf": csrf},
                         headers={"Origin": "https://evil.example"}), 403)  # fmt: skip
    first = desk.post(
        f"/review/jobs/{job}/decisions", data={"outcome": "unsure", "note": "<b>blurry</b>", "csrf": csrf}
    )
    assert first.status_code == 303
    desk.post(f"/review/jobs/{job}/decisions", data={"outcome": "confirm_fake", "note": "second look", "csrf": csrf})
    is_problem(
        desk.post(f"/review/jobs/{job}/decisions", data={"outcome": "unsure", "csrf": csrf, "note": "x" * 20000}), 413
    )
    trail = desk.get(f"/review/jobs/{job}").text.split('id="trail"', 1)[1]
    assert trail.index("unsure") < trail.index("confirm fake")  # the earlier decision is still there, first
    assert "&lt;b&gt;blurry&lt;/b&gt;" in trail and "<b>blurry" not in trail and "moderator-1" in trail
    assert desk.get("/review/queue", params={"reviewed": "no"}).text.count(job) == 0
    assert job in desk.get("/review/queue", params={"reviewed": "yes"}).text
    assert "data:image/png" in desk.get(f"/review/jobs/{job}/report").text
    # A revoked key's session ends with it; signing out ends a session too.
    temporary = make_key(env, "review", "temporary")
    other_desk = _login(base, temporary)
    assert other_desk.get("/review/queue").status_code == 200
    KeyStore(redis.Redis.from_url(REDIS_URL), settings_of(env)).revoke(temporary.split("_")[1])
    assert other_desk.get("/review/queue").headers["location"] == "/review/login"
    csrf = _csrf(desk.get("/review/queue").text)
    assert desk.post("/review/logout", data={"csrf": csrf}).headers["location"] == "/review/login"
    assert desk.get("/review/queue").headers["location"] == "/review/login"


def test_the_review_desk_in_a_real_browser(
    base: str, reviewer: str, scans: list[dict[str, Any]], tmp_path: Path
) -> None:
    require_chromium()
    job = scans[1]["id"]
    profile = tmp_path / "profile"
    with browser(profile) as page:
        page.goto(f"{base}/review/queue")  # no session: sent to the login form
        page.wait("location.pathname === '/review/login' && document.getElementById('key') !== null")
        page.evaluate(f"document.getElementById('key').value = {json.dumps(reviewer)}")
        page.click("#signin")
        page.wait("location.pathname === '/review/queue' && document.getElementById('queue') !== null")
        page.screenshot(tmp_path / "queue.png")
        cookies = {c["name"]: c for c in page.call("Network.getCookies", urls=[base])["cookies"]}
        assert cookies["ralf_session"]["httpOnly"] and cookies["ralf_session"]["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""  # invisible to scripts
        page.click(f'tr[data-job="{job}"] a')
        page.wait(f"location.pathname === '/review/jobs/{job}' && document.getElementById('decide') !== null")
        page.evaluate("document.getElementById('outcome-overturn_real').checked = true")
        page.evaluate("document.getElementById('note').value = 'looked real in the browser'")
        page.click("#record")
        page.wait("document.querySelectorAll('#trail tr.decision').length === 1")
        page.goto(f"{base}/review/jobs/{job}")  # read it back from the server
        last = page.wait("document.querySelector('#trail tr.decision:last-child')?.innerText")
        assert "overturn to real" in last and "looked real in the browser" in last and "moderator-1" in last
        page.screenshot(tmp_path / "decision.png")
        page.click("#report")
        page.wait("document.title.startsWith('RALF report')")
        images = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        assert images and all(images)  # the evidence, inline
    assert (tmp_path / "decision.png").stat().st_size > 1000
    assert page.requests and all(url.startswith(base) or url.startswith("data:") for url in page.requests), (
        page.requests
    )


def _scrape(base: str) -> dict[str, float]:
    values = {}
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def _decided(base: str, reviewer: str, job: str, outcome: str) -> None:
    """`job` carries a decision: the browser test records this one where chromium runs; without chromium it is
    recorded here over HTTP, so the tests after it find the same desk whether the browser test ran or not."""
    desk = _login(base, reviewer)
    if job in desk.get("/review/queue", params={"reviewed": "yes"}).text:
        return
    csrf = _csrf(desk.get(f"/review/jobs/{job}").text)
    assert desk.post(f"/review/jobs/{job}/decisions", data={"outcome": outcome, "csrf": csrf}).status_code == 303


def test_review_metrics(base: str, reviewer: str, scans: list[dict[str, Any]]) -> None:
    _decided(base, reviewer, scans[1]["id"], "overturn_real")
    metrics = _scrape(base)
    assert metrics['ralf_review_decisions_total{outcome="unsure"}'] == 1
    assert metrics['ralf_review_decisions_total{outcome="confirm_fake"}'] == 1
    assert metrics['ralf_review_decisions_total{outcome="overturn_real"}'] == 1
    assert metrics["ralf_review_backlog"] == CLIPS - 2
    assert metrics["ralf_review_oldest_unreviewed_seconds"] > 0
    expected = [(scans[0]["label"] != "fake"), (scans[1]["label"] != "real")]
    assert metrics["ralf_review_overturn_ratio"] == pytest.approx(sum(expected) / 2)


def test_export_then_calibrate(
    base: str, env: dict[str, str], reviewer: str, scans: list[dict[str, Any]], tmp_path: Path
) -> None:
    _decided(base, reviewer, scans[1]["id"], "overturn_real")
    desk = _login(base, reviewer)
    for scan, outcome in zip(scans[2:], ("confirm_fake", "overturn_real"), strict=True):
        csrf = _csrf(desk.get(f"/review/jobs/{scan['id']}").text)
        assert (
            desk.post(f"/review/jobs/{scan['id']}/decisions", data={"outcome": outcome, "csrf": csrf}).status_code
            == 303
        )
    out = tmp_path / "reviewed"
    runner = CliRunner()
    with deployment_environment(env):
        exported = runner.invoke(app, ["reviews", "export", str(out)])
        assert exported.exit_code == 0, exported.output
        assert "2 real, 2 fake" in exported.stdout
        rows = (out / "manifest.csv").read_text().splitlines()
        assert rows[0].startswith("file,label,split,method,kind,job_id,model_label,model_score")
        by_job = {row.split(",")[5]: row.split(",") for row in rows[1:]}
        assert by_job[scans[0]["id"]][1] == "fake" and by_job[scans[1]["id"]][1] == "real"
        assert by_job[scans[0]["id"]][6] == scans[0]["label"]
        assert len(list((out / "real").iterdir())) == 2 and len(list((out / "fake").iterdir())) == 2
        assert any((out / "crops" / "fake").iterdir())
        weights = tmp_path / "tiny.safetensors"
        with torch.random.fork_rng():  # seeded: some random models rank no fake above every real
            torch.manual_seed(0)
            save_weights(weights, RALF(RALFConfig.tiny()).eval())
        calibrated = runner.invoke(app, [
            "calibrate", str(weights), "--data", str(out), "--level", "video", "--min-per-class", "1",
            "--device", "cpu", "--decoder", "pyav", "--max-frames", "2", "--target-fpr", "0.5",
        ])  # fmt: skip
        evaluated = runner.invoke(app, [
            "evaluate", str(weights), str(out / "crops"), "--device", "cpu", "--num-workers", "0", "--no-progress", "--json",
        ])  # fmt: skip
    assert calibrated.exit_code == 0, calibrated.output
    assert "threshold" in calibrated.output.lower()
    assert evaluated.exit_code == 0, evaluated.output
    assert "auc" in evaluated.stdout.lower()


def test_deleting_a_scan_keeps_its_verdict_without_the_path(
    base: str, owner: str, scans: list[dict[str, Any]], media: Path, env: dict[str, str]
) -> None:
    job = scans[3]["id"]
    stored = list((media / "uploads").iterdir())
    evidence = Path(env["RALF_EVIDENCE_DIR"]) / job
    assert evidence.is_dir()
    assert httpx.delete(f"{base}/v1/scans/{job}", headers=bearer(owner)).status_code == 204
    assert len(list((media / "uploads").iterdir())) == len(stored) - 1 and not evidence.exists()
    kept = httpx.get(f"{base}/v1/scans/{job}", headers=bearer(owner)).json()
    assert kept["status"] == "deleted" and kept["source"] is None and kept["deleted_at"]
    assert kept["verdict"]["path"].startswith("sha256:") and kept["verdict"]["label"] == scans[3]["label"]
    assert "my-upload-3" not in json.dumps(kept)
    is_problem(httpx.get(f"{base}/v1/scans/{job}/report", headers=bearer(owner)), 404)
