"""What the worker tests share: the Redis database they use, the skip marker, waiting, free ports,
local HTTP servers, and the settings and RALF_* environment of a test deployment whose queue names
and job ids start with its own prefix (so `worker.queue.delete_prefixed_keys`, its teardown, deletes
only its own keys).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis

from ralf.core.settings import Settings, settings_env_names
from worker.housekeeping import delete_prefixed_keys

REDIS_URL = "redis://127.0.0.1:6379/13"


def redis_answers(url: str = REDIS_URL) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


# Skipped only on a developer machine without Redis; under CI (.ci/run starts one) a missing Redis fails.
requires_redis = pytest.mark.skipif(
    not os.environ.get("CI") and not redis_answers(), reason="no Redis at 127.0.0.1:6379 (.ci/run starts one)"
)


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate a test's child process, killing it when it does not end within 20 s."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def local_http_server(handler: Callable[..., BaseHTTPRequestHandler]) -> Iterator[str]:
    """`handler` served on 127.0.0.1 from a daemon thread; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def own_connection(prefix: str) -> Iterator[redis.Redis]:
    """A client of the test database; the keys named with `prefix` are deleted when it closes."""
    connection = redis.Redis.from_url(REDIS_URL)
    try:
        yield connection
    finally:
        delete_prefixed_keys(connection, prefix)


def deployment_settings(prefix: str, **fields: Any) -> Settings:
    """Settings of a deployment under `prefix` on the test database; `fields` add to them."""
    return Settings(
        redis_url=REDIS_URL,
        key_prefix=prefix,
        queue_high=f"{prefix}-high",
        queue_default=f"{prefix}-default",
        queue_low=f"{prefix}-low",
        **fields,
    )


def deployment_env(prefix: str, **values: str) -> dict[str, str]:
    """RALF_* of a small CPU deployment under `prefix` (tiny jobs, one retry at once, 127.0.0.1 open
    for the tests' own HTTP servers); `values` add to or replace them."""
    return {
        "RALF_REDIS_URL": REDIS_URL,
        "RALF_KEY_PREFIX": prefix,
        "RALF_QUEUE_HIGH": f"{prefix}-high",
        "RALF_QUEUE_DEFAULT": f"{prefix}-default",
        "RALF_QUEUE_LOW": f"{prefix}-low",
        "RALF_DEVICE": "cpu",
        "RALF_DECODER": "pyav",
        "RALF_MAX_FRAMES": "2",
        "RALF_TORCH_THREADS": "1",
        "RALF_RETRY_MAX": "1",
        "RALF_RETRY_INTERVALS_S": "0",
        "RALF_DOWNLOAD_TIMEOUT_S": "5",
        "RALF_URL_ALLOW": "127.0.0.1",  # the tests' servers; every other internal address stays refused
        **values,
    }


@contextlib.contextmanager
def deployment_environment(values: dict[str, str]) -> Iterator[dict[str, str]]:
    """`values` as the only RALF_* in os.environ (for CliRunner and Settings()) while it lasts;
    yields the environment for worker processes (one OpenMP thread each)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in settings_env_names():
            patch.delenv(name, raising=False)
        for key, value in values.items():
            patch.setenv(key, value)
        yield {**os.environ, **values, "OMP_NUM_THREADS": "1"}
