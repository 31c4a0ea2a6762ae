"""Small request bodies (JSON submissions, the desk's forms) read with a limit enforced while reading:
a client announcing or sending more is answered 413 before the rest is read."""

from __future__ import annotations

from urllib.parse import parse_qs

from starlette.requests import Request

from api.problems import Problem


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Problem(413, f"request bodies here are limited to {limit} bytes", kind="too-large")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise Problem(413, f"request bodies here are limited to {limit} bytes", kind="too-large")
    return bytes(body)


async def read_form(request: Request, limit: int = 16 * 1024) -> dict[str, str]:
    """An application/x-www-form-urlencoded body (what the desk's forms send); the first value of each field."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise Problem(415, "forms are sent as application/x-www-form-urlencoded", kind="unsupported-media-type")
    fields = parse_qs((await read_limited(request, limit)).decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}
