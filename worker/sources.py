"""What may be enqueued: a local file under a media root, or an http(s) URL. Everything else is refused.

The same check runs twice: at enqueue (clear refusal for the user) and in the worker (the payload
came through Redis, so the worker trusts only its own media roots and its own address policy).
URLs: http(s) only, no credentials (`user:pass@` would be stored in Redis, job descriptions and
verdicts), and a host that is public or allow-listed (ralf/core/addresses.py); at download time the
address actually connected to is checked again (worker/download.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from ralf.core.addresses import AddressPolicy, AddressRefused, Resolver

SourceKind = Literal["file", "url"]
URL_SCHEMES = ("http", "https")
_URL_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class SourceRefused(ValueError):
    """The input cannot be enqueued; the message says why and what is accepted."""


@dataclass(frozen=True)
class Source:
    kind: SourceKind
    location: str  # resolved absolute path, or the URL as given


def has_url_scheme(text: str) -> bool:
    """True for 'scheme://…'; anything else is taken as a local path."""
    return _URL_PREFIX.match(text) is not None


def redact_url(url: str) -> str:
    """The URL with any `user:password@` replaced by `***@`, for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def check_url(url: str, policy: AddressPolicy | None = None, resolver: Resolver | None = None) -> Source:
    """An http(s) URL without credentials whose host `policy` allows (public addresses by default).

    With a `resolver`, a host name is also resolved and every address checked (enqueue does this for
    an early, clear refusal; the download checks the address it connects to in any case)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise SourceRefused(f"malformed URL {redact_url(url)!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in URL_SCHEMES:
        raise SourceRefused(
            f"unsupported URL scheme {scheme + '://'!r} in {redact_url(url)!r}: "
            "only http:// and https:// URLs and local files under the media roots are accepted"
        )
    if "@" in parts.netloc:
        raise SourceRefused(
            f"URL with credentials refused: {redact_url(url)!r} (they would be stored with the job and its verdict; "
            "give a URL that needs no user:password, e.g. a pre-signed one)"
        )
    if not parts.hostname:
        raise SourceRefused(f"URL without a host: {url!r}")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise SourceRefused(f"URL with spaces or control characters: {url!r}")
    policy = policy or AddressPolicy()
    try:
        if resolver is None:
            policy.check_host(parts.hostname)
        else:
            policy.vet(parts.hostname, port or (443 if scheme == "https" else 80), resolver)
    except AddressRefused as exc:
        raise SourceRefused(f"{url!r}: {exc}") from None
    except OSError:
        pass  # not resolvable from here: the worker resolves (and checks) it again when it downloads
    return Source("url", url)


def within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_local_path(text: str | Path, media_roots: list[Path]) -> Source:
    """The resolved regular file `text` names, if it lies under one of `media_roots` (symlinks resolved)."""
    if not media_roots:
        raise SourceRefused(
            f"local path {str(text)!r} refused: no media roots are configured "
            "(set RALF_MEDIA_ROOTS to the shared directories workers can read)"
        )
    path = Path(text).expanduser()
    try:
        resolved = path.resolve(strict=True)
    except FileNotFoundError:
        raise SourceRefused(f"no such file: {str(text)!r}") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: symlink loop
        raise SourceRefused(f"cannot resolve {str(text)!r}: {exc}") from None
    roots = [root.resolve() for root in media_roots]
    if not any(within(resolved, root) for root in roots):
        shown = ", ".join(str(r) for r in roots)
        raise SourceRefused(f"{str(text)!r} (resolves to {resolved}) is outside the media roots: {shown}")
    if not resolved.is_file():
        raise SourceRefused(f"not a regular file: {resolved}")
    return Source("file", str(resolved))


def check_source(
    text: str, media_roots: list[Path], policy: AddressPolicy | None = None, resolver: Resolver | None = None
) -> Source:
    """Classify and validate one enqueue argument."""
    if not text.strip():
        raise SourceRefused("empty input")
    if has_url_scheme(text):
        return check_url(text, policy, resolver)
    return check_local_path(text, media_roots)
