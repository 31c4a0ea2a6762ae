"""File digests (one sha256 for weights, checkpoints, engine artifacts, validation data and videos),
and file names as text every output can carry."""

from __future__ import annotations

import hashlib
from pathlib import Path

# Read in large chunks: videos, checkpoints and engine artifacts can be gigabytes.
_CHUNK_BYTES = 16 * 1024 * 1024


def printable_text(text: str) -> str:
    """`text` as valid UTF-8: bytes of a file name that are not UTF-8 (Python keeps them as surrogate
    escapes, which JSON and UTF-8 output cannot encode) are written as `\\xNN`; valid text is unchanged."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
