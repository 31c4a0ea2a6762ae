"""What the API tests share: a real `ralf-cli serve` (uvicorn) on a free 127.0.0.1 port with a test
deployment's RALF_* environment, keys made straight in the test database, and small HTTP helpers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import redis

from api.keys import KeyStore, Scope
from ralf.core.settings import Settings
from worker_testing import REDIS_URL, free_port, stop_process, wait_for

BIN = Path(sys.executable).parent


def api_env(prefix: str, media: Path, **values: str) -> dict[str, str]:
    """RALF_* of a test deployment whose uploads go to `media`/uploads (tiny random model for workers)."""
    from worker_testing import deployment_env

    return deployment_env(
        prefix, RALF_MEDIA_ROOTS=str(media), RALF_RANDOM_WEIGHTS="1", RALF_RANDOM_PRESET="tiny", **values
    )


@contextlib.contextmanager
def api_server(env: dict[str, str], log: Path) -> Iterator[str]:
    """`ralf-cli serve` on a free port; yields its base URL; stopped (SIGTERM) at the end."""
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "ralf-cli"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: process.poll() is None and _answers(base), 120, f"ralf-cli serve on {base} ({log})")
        yield base
    finally:
        stop_process(process)


@contextlib.contextmanager
def uvicorn_in_thread(application: Any) -> Iterator[str]:
    """A real uvicorn server for an application built in the test (a deliberately broken deployment)."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(application, host="127.0.0.1", port=free_port(), log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, "uvicorn in a thread")
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def settings_of(env: dict[str, str]) -> Settings:
    fields = {name.removeprefix("RALF_").lower(): value for name, value in env.items() if name.startswith("RALF_")}
    return Settings(**fields)


def make_key(env: dict[str, str], scope: Scope, name: str = "test", **limits: int) -> str:
    """A fresh key of the test deployment; returns the token (Bearer)."""
    store = KeyStore(redis.Redis.from_url(REDIS_URL), settings_of(env))
    return store.create(name, scope, **limits).token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upload(base: str, token: str, content: bytes, name: str = "clip.mp4", content_type: str = "video/mp4",
           headers: dict[str, str] | None = None, **fields: str) -> httpx.Response:  # fmt: skip
    return httpx.post(
        f"{base}/v1/scans",
        headers={**bearer(token), **(headers or {})},
        files={"file": (name, content, content_type)},
        data=fields,
        timeout=60,
    )


def is_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response is an RFC 9457 problem with `status`; returns its body."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert body["status"] == status and body["title"] and body["type"], body
    assert "Traceback" not in response.text and "/tmp" not in response.text and ".py" not in response.text
    return body


def wait_finished(base: str, token: str, job_id: str, timeout_s: float = 600) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def ended() -> bool:
        found.update(httpx.get(f"{base}/v1/scans/{job_id}", headers=bearer(token), timeout=10).json())
        return found.get("status") in ("finished", "failed")

    wait_for(ended, timeout_s, f"job {job_id}", interval_s=0.5)
    return found
