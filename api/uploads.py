"""Multipart uploads streamed to the media root: the size cap is enforced while reading (the request
is cut off as soon as the file passes it, never after it was stored), the content is hashed on the way,
and the file lands under its content hash, so the same content is one file and one job.

Parts: `file` (the video; its part's Content-Type must be a video type or application/octet-stream)
and optional small text fields (`options`, `priority`, `callback_url`)."""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from anyio import to_thread
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from api.problems import Problem
from ralf.core.settings import Settings

FIELD_LIMIT = 64 * 1024  # all text fields together
FILE_FIELD = "file"
TEXT_FIELDS = frozenset({"options", "priority", "callback_url"})
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".gif", ".webp"}
)
ACCEPTED_TYPES = ("video/", "application/octet-stream", "image/gif", "image/webp")


class UploadAborted(Exception):
    """The client went away mid-upload; nothing was kept."""


def upload_dir(settings: Settings) -> Path:
    """Where uploads go: RALF_API_UPLOAD_DIR, else <first media root>/uploads; it must lie under a media
    root (the workers read only files there)."""
    if settings.api_upload_dir is not None:
        folder = settings.api_upload_dir.expanduser().resolve()
    elif settings.media_roots:
        folder = settings.media_roots[0] / "uploads"
    else:
        raise ValueError("uploads need RALF_MEDIA_ROOTS (or RALF_API_UPLOAD_DIR under one of them)")
    if not any(folder.is_relative_to(root) for root in settings.media_roots):
        raise ValueError(f"RALF_API_UPLOAD_DIR {folder} is not under any of RALF_MEDIA_ROOTS")
    return folder


def max_upload_bytes(settings: Settings) -> int:
    return settings.api_max_upload_bytes or settings.max_file_bytes


@dataclass
class ReceivedUpload:
    path: Path
    sha256: str
    size: int
    filename: str
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    content_type: str = ""
    text: bytearray = field(default_factory=bytearray)


class _StreamingForm:
    """python-multipart callbacks: file bytes go to `pending` (written by the caller off the event loop),
    text fields are kept in memory up to FIELD_LIMIT."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.part = _Part()
        self.header_name = b""
        self.header_value = b""
        self.headers: dict[bytes, bytes] = {}
        self.pending: list[bytes] = []
        self.file_bytes = 0
        self.file_seen = False
        self.file_done = False
        self.filename = ""
        self.fields: dict[str, str] = {}
        self.text_bytes = 0
        self.ended = False

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": lambda d, s, e: self._add("header_name", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("header_value", d[s:e]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_end": self.on_end,
        }

    def _add(self, name: str, data: bytes) -> None:
        setattr(self, name, getattr(self, name) + data)
        if len(self.header_name) + len(self.header_value) > 8192:
            raise Problem(400, "a multipart header is too long", kind="bad-upload")

    def on_part_begin(self) -> None:
        self.part = _Part()
        self.headers = {}

    def on_header_end(self) -> None:
        self.headers[self.header_name.strip().lower()] = self.header_value.strip()
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.part.name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options:
            self.part.filename = options[b"filename"].decode("utf-8", "replace")
        self.part.content_type = self.headers.get(b"content-type", b"").decode("latin-1").lower()
        if self.part.name == FILE_FIELD:
            self._start_file()
        elif self.part.name not in TEXT_FIELDS:
            raise Problem(400, f"unexpected form field {self.part.name[:40]!r}", kind="bad-upload")

    def _start_file(self) -> None:
        if self.file_seen:
            raise Problem(400, "one file per request", kind="bad-upload")
        if not self.part.content_type.startswith(ACCEPTED_TYPES):
            raise Problem(
                415,
                f"the file's Content-Type {self.part.content_type or 'none'!r} is not a video type "
                "(video/*, application/octet-stream)",
                kind="unsupported-media-type",
            )
        self.file_seen = True
        self.filename = PurePath((self.part.filename or "upload").replace("\\", "/")).name[:200] or "upload"

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part.name == FILE_FIELD:
            self.file_bytes += end - start
            if self.file_bytes > self.limit:
                raise Problem(413, f"the file is larger than the limit of {self.limit} bytes", kind="too-large")
            self.pending.append(bytes(data[start:end]))
            return
        self.text_bytes += end - start
        if self.text_bytes > FIELD_LIMIT:
            raise Problem(413, f"form fields larger than {FIELD_LIMIT} bytes", kind="too-large")
        self.part.text.extend(data[start:end])

    def on_part_end(self) -> None:
        if self.part.name == FILE_FIELD:
            self.file_done = True
        else:
            self.fields[self.part.name] = self.part.text.decode("utf-8", "replace")

    def on_end(self) -> None:
        self.ended = True


def _boundary(request: Request) -> bytes:
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise Problem(400, "multipart/form-data without a boundary", kind="bad-upload")
    return boundary


def _check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + FIELD_LIMIT:
        raise Problem(413, f"the request is larger than the upload limit of {limit} bytes", kind="too-large")


async def receive_upload(request: Request, settings: Settings) -> ReceivedUpload:
    """Stream the multipart body into `<upload dir>/<sha256><suffix>`; raises Problem (400/413/415) or
    UploadAborted, leaving no file behind in either case."""
    limit = max_upload_bytes(settings)
    _check_declared_length(request, limit)
    folder = upload_dir(settings)
    await to_thread.run_sync(lambda: folder.mkdir(parents=True, exist_ok=True))
    form = _StreamingForm(limit)
    parser = MultipartParser(_boundary(request), form.callbacks())  # type: ignore[arg-type]
    incoming = folder / f".incoming-{uuid.uuid4().hex}"
    digest = hashlib.sha256()
    handle = await to_thread.run_sync(lambda: incoming.open("wb"))
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if form.pending:
                data, form.pending = b"".join(form.pending), []
                digest.update(data)
                await to_thread.run_sync(handle.write, data)
        parser.finalize()
        await to_thread.run_sync(handle.close)
        if not form.file_seen or not form.file_done or not form.ended:
            raise Problem(400, "the multipart body has no complete 'file' part", kind="bad-upload")
        if form.file_bytes == 0:
            raise Problem(400, "the uploaded file is empty", kind="bad-upload")
        final = folder / (digest.hexdigest() + _suffix(form.filename))
        await to_thread.run_sync(os.replace, incoming, final)
    except ClientDisconnect:
        raise UploadAborted() from None
    except FormParserError:
        raise Problem(400, "the multipart body is malformed", kind="bad-upload") from None
    finally:
        handle.close()
        incoming.unlink(missing_ok=True)
    return ReceivedUpload(final, digest.hexdigest(), form.file_bytes, form.filename, form.fields)


def _suffix(filename: str) -> str:
    suffix = PurePath(filename).suffix.lower()
    return suffix if suffix in VIDEO_SUFFIXES else ".bin"
