"""Stream an http(s) video to a local file with a size cap and a deadline (stdlib only).

Two kinds of failure, because the queue treats them differently:
`DownloadRefused` is permanent (too large, 404, redirect to another scheme) and becomes an `error`
verdict; `DownloadFailed` is transient (timeout, connection reset, 5xx, 429) and is retried.
"""

from __future__ import annotations

import http.client
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import urlsplit

from worker.sources import URL_SCHEMES

_CHUNK = 256 * 1024
_MAX_SOCKET_TIMEOUT_S = 30.0
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
_USER_AGENT = "ralf-moderation-worker/1"


class DownloadRefused(ValueError):
    """Permanent: retrying cannot help."""


class DownloadFailed(RuntimeError):
    """Transient: network trouble or a server-side error; worth retrying later."""


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    # urllib would follow a redirect to ftp://; only http(s) targets are allowed.
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if urlsplit(newurl).scheme.lower() not in URL_SCHEMES:
            raise DownloadRefused(f"redirect to a non-http(s) URL refused: {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_HttpOnlyRedirects())


def _suffix(url: str) -> str:
    """The URL path's extension if it looks like one (helps decoders guess the container)."""
    suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
    return suffix if 1 < len(suffix) <= 6 and suffix[1:].isalnum() else ""


def _open(url: str, timeout_s: float) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        return _opener().open(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code in _TRANSIENT_HTTP:
            raise DownloadFailed(f"HTTP {exc.code} {exc.reason} from {url}") from None
        raise DownloadRefused(f"HTTP {exc.code} {exc.reason} from {url}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadFailed(f"cannot reach {url}: {reason}") from None


def download(url: str, dest_dir: Path | None, *, max_bytes: int, timeout_s: float) -> Path:
    """Download `url` into a new file in `dest_dir` (system temp dir if None); the caller deletes it."""
    if urlsplit(url).scheme.lower() not in URL_SCHEMES:
        raise DownloadRefused(f"only http(s) URLs can be downloaded, not {url!r}")
    deadline = time.monotonic() + timeout_s
    response = _open(url, min(timeout_s, _MAX_SOCKET_TIMEOUT_S))
    with response:
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise DownloadRefused(f"download too large: {url} declares {int(declared)} bytes, the cap is {max_bytes}")
        if dest_dir is not None:
            dest_dir.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix="ralf-download-", suffix=_suffix(url), dir=dest_dir)
        path = Path(name)
        try:
            with os.fdopen(handle, "wb") as out:
                _copy_capped(response, out, url=url, max_bytes=max_bytes, deadline=deadline, timeout_s=timeout_s)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
    return path


def _copy_capped(
    response: http.client.HTTPResponse, out: BinaryIO, *, url: str, max_bytes: int, deadline: float, timeout_s: float
) -> None:
    received = 0
    while True:
        if time.monotonic() > deadline:
            raise DownloadFailed(f"download of {url} did not finish within {timeout_s:g} s")
        try:
            chunk = response.read(_CHUNK)
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise DownloadFailed(f"download of {url} broke off after {received} bytes: {exc}") from None
        if not chunk:
            break
        received += len(chunk)
        if received > max_bytes:
            raise DownloadRefused(f"download too large: {url} exceeds the cap of {max_bytes} bytes")
        out.write(chunk)
    if received == 0:
        raise DownloadRefused(f"empty download (0 bytes) from {url}")
