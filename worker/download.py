"""Stream an http(s) video to a local file with a size cap, a whole-download deadline and an address
policy checked on every connection (stdlib only).

Two kinds of failure, because the queue treats them differently:
`DownloadRefused` is permanent (too large, 404, redirect to another scheme, an address the policy
refuses) and becomes an `error` verdict; `DownloadFailed` is transient (deadline, connection reset,
5xx, 429) and is retried.

Where the checks sit:
- address: every connection (the first and each redirect's) resolves its host once through the
  `resolver`, refuses the whole host if any address is not allowed (ralf/core/addresses.py), and
  connects to those checked addresses only, so DNS cannot answer differently between check and
  connect. Proxies from the environment are ignored (they would make the proxy the checked peer).
- redirects: http(s) only, no credentials, at most `MAX_REDIRECTS`; their hosts go through the
  same connection check.
- deadline: `timeout_s` bounds the whole download (resolution, connect, headers, body, redirects).
  Every socket operation times out at the time left, and a watchdog shuts the sockets down at the
  deadline, so a server trickling a byte every few seconds cannot stretch it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import http.client
import os
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from ralf.core.addresses import AddressPolicy, AddressRefused, Resolver, system_resolver
from worker.sources import URL_SCHEMES, redact_url

_CHUNK = 256 * 1024
_MAX_SOCKET_TIMEOUT_S = 30.0
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
_USER_AGENT = "ralf-moderation-worker/1"
MAX_REDIRECTS = 5


class DownloadRefused(ValueError):
    """Permanent: retrying cannot help."""


class DownloadFailed(RuntimeError):
    """Transient: network trouble or a server-side error; worth retrying later."""


class _DeadlineExpired(OSError):
    pass


class _Guard:
    """One download's deadline, address policy and open sockets."""

    def __init__(self, policy: AddressPolicy, resolver: Resolver, timeout_s: float) -> None:
        self.policy = policy
        self.resolver = resolver
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(timeout_s, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Guard:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()
            self._sockets.clear()

    def _expire(self) -> None:
        """Watchdog: at the deadline, wake every blocked read or connect of this download."""
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def over(self) -> bool:
        """At (or a hair before) the deadline: a socket timeout set to the time left fires here too."""
        return self.expired or time.monotonic() >= self.deadline - 0.05

    def left_s(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0 or self.expired:
            raise _DeadlineExpired("deadline reached")
        return left

    def resolve(self, host: str, port: int) -> list[str]:
        """The checked addresses of host:port; the lookup itself is bounded by the deadline."""
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        try:
            future = pool.submit(self.policy.vet, host, port, self.resolver)
            return future.result(timeout=self.left_s())
        except concurrent.futures.TimeoutError:
            raise _DeadlineExpired(f"resolving {host!r} took past the deadline") from None
        finally:
            pool.shutdown(wait=False)

    def create_connection(
        self, address: tuple[str, int], timeout: object = None, source_address: object = None
    ) -> socket.socket:
        """Stands in for socket.create_connection in http.client: checked addresses only."""
        host, port = address
        errors: list[str] = []
        for ip in self.resolve(host, port):
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            with self._lock:
                if self.expired:
                    sock.close()
                    raise _DeadlineExpired("deadline reached")
                self._sockets.append(sock)
            try:
                sock.settimeout(min(self.left_s(), _MAX_SOCKET_TIMEOUT_S))
                sock.connect((ip, port))
                return sock
            except OSError as exc:
                # A name's addresses are not told (an allow-listed internal name's are internal).
                errors.append(f"{ip if ip == host.strip('[]') else host}: {exc.strerror or exc}")
                sock.close()
        raise OSError("; ".join(dict.fromkeys(errors)) or f"no address for {host!r}")


class _GuardedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, guard: _Guard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = guard.create_connection  # type: ignore[method-assign]


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    # HTTPSConnection.connect wraps what _create_connection returns, with SNI and certificate
    # checks against the URL's host name: only the TCP peer is chosen here.
    def __init__(self, *args: Any, guard: _Guard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = guard.create_connection  # type: ignore[method-assign]


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, guard: _Guard) -> None:
        super().__init__()
        self.guard = guard

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_GuardedHTTPConnection, guard=self.guard), req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, guard: _Guard) -> None:
        super().__init__()
        self.guard = guard

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_GuardedHTTPSConnection, guard=self.guard), req, context=self._context)


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects to http(s) URLs without credentials, at most MAX_REDIRECTS, hosts checked early."""

    max_redirections = MAX_REDIRECTS

    def __init__(self, guard: _Guard) -> None:
        super().__init__()
        self.guard = guard

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        parts = urlsplit(newurl)
        if parts.scheme.lower() not in URL_SCHEMES:
            raise DownloadRefused(f"redirect to a non-http(s) URL refused: {redact_url(newurl)}")
        if "@" in parts.netloc:
            raise DownloadRefused(f"redirect to a URL with credentials refused: {redact_url(newurl)}")
        try:
            self.guard.policy.check_host(parts.hostname or "")
        except AddressRefused as exc:
            raise DownloadRefused(f"redirect to {redact_url(newurl)} refused: {exc}") from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(guard: _Guard) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}),  # environment proxies would become the checked peer
        _GuardedHTTPHandler(guard),
        _GuardedHTTPSHandler(guard),
        _CheckedRedirects(guard),
    )


def _suffix(url: str) -> str:
    """The URL path's extension if it looks like one (helps decoders guess the container)."""
    suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
    return suffix if 1 < len(suffix) <= 6 and suffix[1:].isalnum() else ""


def _open(url: str, guard: _Guard) -> http.client.HTTPResponse:
    shown = redact_url(url)
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        return _opener(guard).open(request, timeout=min(guard.left_s(), _MAX_SOCKET_TIMEOUT_S))
    except AddressRefused as exc:
        raise DownloadRefused(f"{shown}: {exc}") from None
    except urllib.error.HTTPError as exc:
        if exc.code in _TRANSIENT_HTTP:
            raise DownloadFailed(f"HTTP {exc.code} {exc.reason} from {shown}") from None
        raise DownloadRefused(f"HTTP {exc.code} {exc.reason} from {shown}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        if guard.over() or isinstance(getattr(exc, "reason", None), _DeadlineExpired) or isinstance(exc, _DeadlineExpired):
            raise DownloadFailed(f"download of {shown} did not finish within {guard.timeout_s:g} s") from None
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, AddressRefused):
            raise DownloadRefused(f"{shown}: {reason}") from None
        raise DownloadFailed(f"cannot reach {shown}: {reason}") from None


def download(
    url: str,
    dest_dir: Path | None,
    *,
    max_bytes: int,
    timeout_s: float,
    policy: AddressPolicy | None = None,
    resolver: Resolver | None = None,
) -> Path:
    """Download `url` into a new file in `dest_dir` (system temp dir if None); the caller deletes it.

    `policy`: which addresses may be reached (default: public ones only). `resolver`: host, port ->
    addresses (default: the system's getaddrinfo)."""
    if urlsplit(url).scheme.lower() not in URL_SCHEMES:
        raise DownloadRefused(f"only http(s) URLs can be downloaded, not {redact_url(url)!r}")
    if "@" in urlsplit(url).netloc:
        raise DownloadRefused(f"URL with credentials refused: {redact_url(url)}")
    with _Guard(policy or AddressPolicy(), resolver or system_resolver, timeout_s) as guard:
        response = _open(url, guard)
        with response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise DownloadRefused(
                    f"download too large: {redact_url(url)} declares {int(declared)} bytes, the cap is {max_bytes}"
                )
            if dest_dir is not None:
                dest_dir.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(prefix="ralf-download-", suffix=_suffix(url), dir=dest_dir)
            path = Path(name)
            try:
                with os.fdopen(handle, "wb") as out:
                    _copy_capped(response, out, url=redact_url(url), max_bytes=max_bytes, guard=guard)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
    return path


def _copy_capped(response: http.client.HTTPResponse, out: BinaryIO, *, url: str, max_bytes: int, guard: _Guard) -> None:
    received = 0
    late = DownloadFailed(f"download of {url} did not finish within {guard.timeout_s:g} s")
    while True:
        try:
            left = guard.left_s()
            if response.fp is not None and getattr(response.fp, "raw", None) is not None:
                with contextlib.suppress(OSError, AttributeError):
                    response.fp.raw._sock.settimeout(min(left, _MAX_SOCKET_TIMEOUT_S))  # type: ignore[union-attr]
            chunk = response.read1(_CHUNK)  # returns what one receive brings: the deadline is looked at often
        except _DeadlineExpired:
            raise late from None
        except (TimeoutError, OSError, http.client.HTTPException, ValueError) as exc:
            if guard.over():
                raise late from None
            raise DownloadFailed(f"download of {url} broke off after {received} bytes: {exc}") from None
        if not chunk:
            if guard.expired:  # the watchdog shut the socket: EOF here is the deadline, not the end
                raise late
            break
        received += len(chunk)
        if received > max_bytes:
            raise DownloadRefused(f"download too large: {url} exceeds the cap of {max_bytes} bytes")
        out.write(chunk)
    if received == 0:
        raise DownloadRefused(f"empty download (0 bytes) from {url}")
