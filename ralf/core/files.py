"""File digests: one sha256 for weights, checkpoints, engine artifacts, validation data and videos."""

from __future__ import annotations

import hashlib
from pathlib import Path

# Read in large chunks: videos, checkpoints and engine artifacts can be gigabytes.
_CHUNK_BYTES = 16 * 1024 * 1024


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
