"""What may be enqueued: a local file under a media root, or an http(s) URL. Everything else is refused.

The same check runs twice: at enqueue (clear refusal for the user) and in the worker (the payload
came through Redis, so the worker trusts only its own media roots).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

SourceKind = Literal["file", "url"]
URL_SCHEMES = ("http", "https")
_HASH_CHUNK = 1024 * 1024
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


def check_url(url: str) -> Source:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in URL_SCHEMES:
        raise SourceRefused(
            f"unsupported URL scheme {scheme + '://'!r} in {url!r}: "
            "only http:// and https:// URLs and local files under the media roots are accepted"
        )
    if not parts.hostname:
        raise SourceRefused(f"URL without a host: {url!r}")
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


def check_source(text: str, media_roots: list[Path]) -> Source:
    """Classify and validate one enqueue argument."""
    if not text.strip():
        raise SourceRefused("empty input")
    if has_url_scheme(text):
        return check_url(text)
    return check_local_path(text, media_roots)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (videos can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
