"""Downloads: size cap, whole-download deadline, http(s)-only redirects, the address policy on every
connection (first and redirected); permanent vs transient failures.

Every request goes to this module's server on 127.0.0.1 (opened by the allow-list LOCAL). Other
addresses are refused before any connection; host names resolve only through the fake resolvers
below, so no lookup leaves the machine.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from ralf.core.addresses import AddressPolicy
from worker.download import DownloadFailed, DownloadRefused, download

from worker_testing import local_http_server

BODY = bytes(range(256)) * 400  # 100 KiB
LOCAL = AddressPolicy.from_entries(["127.0.0.1"])
REQUESTS: list[str] = []  # paths the server was asked for


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"unexpected DNS lookup of {host!r}")


def fake_dns(table: dict[str, list[str]], calls: list[str] | None = None):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(f"fake resolver: unknown host {host}")
        return table[host]

    return resolve


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
        REQUESTS.append(self.path)
        port = self.server.server_address[1]
        redirects = {
            "/to-loopback-2": f"http://127.0.0.2:{port}/ok.mp4",
            "/to-localhost": f"http://localhost:{port}/ok.mp4",
            "/to-ipv6-loopback": f"http://[::1]:{port}/ok.mp4",
            "/to-decimal": f"http://2130706434:{port}/ok.mp4",
            "/to-metadata": "http://169.254.169.254/latest/meta-data/",
            "/to-private": "http://10.0.0.1/x.mp4",
            "/to-gce": "http://metadata.google.internal/computeMetadata/v1/",
            "/to-name": f"http://rebind.example:{port}/ok.mp4",
            "/to-credentials": f"http://user:secret@127.0.0.1:{port}/ok.mp4",
            "/loop": "/loop",
        }
        if self.path in redirects:
            self._send(302, headers={"Location": redirects[self.path]})
            return
        if self.path == "/trickle":  # a byte every 0.2 s of a declared 100 KiB body
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            for byte in BODY:
                try:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.2)
            return
        if self.path == "/trickle-headers":  # the headers themselves never end
            self.wfile.write(b"HTTP/1.0 200 OK\r\n")
            for _ in range(200):
                try:
                    self.wfile.write(b"X: y\r\n")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.2)
            return
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
    with local_http_server(Handler) as url:
        yield url


def fetch(
    url: str,
    tmp_path: Path,
    *,
    max_bytes: int = 1024 * 1024,
    timeout_s: float = 10.0,
    policy: AddressPolicy = LOCAL,
    resolver=no_dns,  # type: ignore[no-untyped-def]
) -> Path:
    return download(url, tmp_path, max_bytes=max_bytes, timeout_s=timeout_s, policy=policy, resolver=resolver)


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


# --- addresses (SSRF) -------------------------------------------------------------------------------
def test_loopback_is_refused_by_default_before_any_request(server: str, tmp_path: Path) -> None:
    REQUESTS.clear()
    with pytest.raises(DownloadRefused, match=r"not a public address \(loopback\)"):
        fetch(f"{server}/ok.mp4", tmp_path, policy=AddressPolicy())
    assert REQUESTS == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ("/to-loopback-2", "127.0.0.2 is not a public address (loopback)"),
        ("/to-localhost", "reserved for local hosts"),
        ("/to-ipv6-loopback", "::1 is not a public address (loopback)"),
        ("/to-decimal", "127.0.0.2 is not a public address (loopback)"),  # 2130706434 == 127.0.0.2
        ("/to-metadata", "169.254.169.254 is not a public address (link-local)"),
        ("/to-private", "10.0.0.1 is not a public address (private)"),
        ("/to-gce", "reserved for local hosts"),
        ("/to-credentials", "credentials"),
    ],
)
def test_every_redirect_is_checked(server: str, tmp_path: Path, route: str, message: str) -> None:
    """The first hop is allow-listed (127.0.0.1); where it redirects is checked on its own and refused
    before any connection to it."""
    REQUESTS.clear()
    with pytest.raises(DownloadRefused, match=message.replace("(", r"\(").replace(")", r"\)")):
        fetch(f"{server}{route}", tmp_path)
    assert REQUESTS == [route]  # never the redirect target
    assert list(tmp_path.iterdir()) == []


def test_name_resolving_to_loopback_is_refused(server: str, tmp_path: Path) -> None:
    port = server.rsplit(":", 1)[1]
    calls: list[str] = []
    resolver = fake_dns({"rebind.example": ["127.0.0.1"]}, calls)
    # the message says the address is not allowed, never what the name resolves to (an internal address)
    with pytest.raises(DownloadRefused, match=r"rebind.example.*its address is not allowed") as refused:
        fetch(f"http://rebind.example:{port}/ok.mp4", tmp_path, policy=AddressPolicy(), resolver=resolver)
    assert "127.0.0.1" not in str(refused.value)
    # ... and through a redirect from an allowed host, checked at connection time
    with pytest.raises(DownloadRefused, match="its address is not allowed") as refused:
        fetch(f"{server}/to-name", tmp_path, resolver=fake_dns({"rebind.example": ["127.0.0.2"]}))
    assert "127.0.0.2" not in str(refused.value)
    # one public and one internal answer: the name is refused as a whole
    with pytest.raises(DownloadRefused, match="its address is not allowed") as refused:
        fetch("http://mixed.example/x.mp4", tmp_path, resolver=fake_dns({"mixed.example": ["93.184.216.34", "10.1.2.3"]}))
    assert "10.1.2.3" not in str(refused.value) and "93.184.216.34" not in str(refused.value)
    assert calls == ["rebind.example"]


def test_allowed_name_connects_to_the_address_it_was_checked_with(server: str, tmp_path: Path) -> None:
    """The host is resolved once per connection and the socket goes to that address: no second lookup
    that a rebinding DNS server could answer differently."""
    port = server.rsplit(":", 1)[1]
    calls: list[str] = []
    resolver = fake_dns({"media.example": ["127.0.0.1"]}, calls)
    path = fetch(f"http://media.example:{port}/ok.mp4", tmp_path, resolver=resolver)  # LOCAL opens 127.0.0.1
    assert path.read_bytes() == BODY and calls == ["media.example"]
    by_name = AddressPolicy.from_entries(["media.example"])
    assert fetch(f"http://media.example:{port}/ok.mp4", tmp_path, policy=by_name, resolver=resolver).read_bytes() == BODY


def test_a_failed_connection_to_a_name_does_not_tell_its_address(tmp_path: Path) -> None:
    """An allow-listed internal name that does not answer: the message names the host, not the address
    it resolved to."""
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    policy = AddressPolicy.from_entries(["media.corp.internal"])
    resolver = fake_dns({"media.corp.internal": ["127.0.0.1"]})
    with pytest.raises(DownloadFailed, match="media.corp.internal: Connection refused") as failed:
        fetch(f"http://media.corp.internal:{port}/a.mp4", tmp_path, policy=policy, resolver=resolver)
    assert "127.0.0.1" not in str(failed.value)


def test_credentials_are_refused_and_not_repeated(tmp_path: Path) -> None:
    with pytest.raises(DownloadRefused, match="credentials") as info:
        fetch("http://user:secret@127.0.0.1/x.mp4", tmp_path)
    assert "secret" not in str(info.value)


def test_redirect_loops_end(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadRefused, match="HTTP 302"):
        fetch(f"{server}/loop", tmp_path)


# --- the deadline is for the whole download ---------------------------------------------------------
@pytest.mark.parametrize("route", ["/trickle", "/trickle-headers"])
def test_deadline_ends_a_trickling_download(server: str, tmp_path: Path, route: str) -> None:
    """A byte every 0.2 s keeps every single read alive; the deadline still ends the download."""
    started = time.monotonic()
    with pytest.raises(DownloadFailed, match="did not finish within 1.5 s"):
        fetch(f"{server}{route}", tmp_path, timeout_s=1.5)
    assert time.monotonic() - started < 3.0
    assert list(tmp_path.iterdir()) == []


def test_deadline_ends_a_silent_server(tmp_path: Path) -> None:
    """Accepts the connection, never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(DownloadFailed, match="did not finish within 1 s"):
            fetch(f"http://127.0.0.1:{port}/x.mp4", tmp_path, timeout_s=1.0)
        assert time.monotonic() - started < 2.5
