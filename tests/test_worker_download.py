"""Downloads: size cap, deadline, http(s)-only redirects; permanent vs transient failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from worker.download import DownloadFailed, DownloadRefused, download

BODY = bytes(range(256)) * 400  # 100 KiB


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # close-delimited bodies: lets a response omit Content-Length

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None, length: bool = True) -> None:
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        routes = {
            "/ok.mp4": lambda: self._send(200, BODY),
            "/big-declared": lambda: self._send(200, b"x" * 10, {"Content-Length": str(50 * 1024 * 1024)}, False),
            "/big-undeclared": lambda: self._send(200, b"x" * (2 * 1024 * 1024), length=False),
            "/missing": lambda: self._send(404, b"no"),
            "/busy": lambda: self._send(503, b"later"),
            "/to-ftp": lambda: self._send(302, headers={"Location": "ftp://127.0.0.1/x.mp4"}),
            "/to-ok": lambda: self._send(302, headers={"Location": "/ok.mp4"}),
            "/empty": lambda: self._send(200, b""),
        }
        if self.path == "/slow":
            time.sleep(2.0)
            self._send(200, BODY)
            return
        routes.get(self.path, lambda: self._send(404))()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def fetch(url: str, tmp_path: Path, *, max_bytes: int = 1024 * 1024, timeout_s: float = 10.0) -> Path:
    return download(url, tmp_path, max_bytes=max_bytes, timeout_s=timeout_s)


def test_download_ok(server: str, tmp_path: Path) -> None:
    path = fetch(f"{server}/ok.mp4", tmp_path)
    assert path.read_bytes() == BODY and path.suffix == ".mp4" and path.parent == tmp_path


def test_redirect_within_http(server: str, tmp_path: Path) -> None:
    assert fetch(f"{server}/to-ok", tmp_path).read_bytes() == BODY


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ("/big-declared", "declares 52428800 bytes"),
        ("/big-undeclared", "exceeds the cap"),
        ("/missing", "HTTP 404"),
        ("/to-ftp", "non-http"),
        ("/empty", "empty download"),
    ],
)
def test_permanent_refusals_leave_no_file(server: str, tmp_path: Path, route: str, message: str) -> None:
    with pytest.raises(DownloadRefused, match=message):
        fetch(f"{server}{route}", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cap_is_exact(server: str, tmp_path: Path) -> None:
    assert fetch(f"{server}/ok.mp4", tmp_path, max_bytes=len(BODY)).stat().st_size == len(BODY)
    with pytest.raises(DownloadRefused):
        fetch(f"{server}/ok.mp4", tmp_path, max_bytes=len(BODY) - 1)


def test_server_error_is_transient(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadFailed, match="HTTP 503"):
        fetch(f"{server}/busy", tmp_path)


def test_timeout_is_transient(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadFailed):
        fetch(f"{server}/slow", tmp_path, timeout_s=0.5)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_is_transient(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadFailed, match="cannot reach"):
        fetch(f"http://127.0.0.1:{port}/x.mp4", tmp_path)


def test_only_http_schemes(tmp_path: Path) -> None:
    with pytest.raises(DownloadRefused):
        fetch("file:///etc/hostname", tmp_path)
