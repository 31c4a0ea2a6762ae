"""URLs as messages, listings and stored records may show them: credentials and query strings
masked. A Redis URL carries its password (`redis://:secret@host`, or `?password=`), and a callback
or download URL often carries a token in its query; neither may reach an error message, `ralf-cli
config` or a record someone else can read. Standard library only (the core is torch-free)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

MASK = "***"


def mask_url(url: str) -> str:
    """`url` with any `user:password@` replaced by `***@`, and a query or fragment by `***`; scheme,
    host, port and path kept. A URL that cannot be parsed is not shown at all."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    shown = urlunsplit(
        parts._replace(netloc=netloc, query=MASK if parts.query else "", fragment=MASK if parts.fragment else "")
    )
    if not netloc and url.startswith(f"{parts.scheme}://"):  # unix:///path keeps its empty host
        shown = shown.replace(f"{parts.scheme}:", f"{parts.scheme}://", 1)
    return shown


def mask_urls_in(text: str, urls: list[str]) -> str:
    """`text` with each of `urls` that occurs in it replaced by its masked form (messages built by
    code that did not know the URL was secret, e.g. a library's exception text)."""
    for url in sorted(urls, key=len, reverse=True):
        if url:
            text = text.replace(url, mask_url(url))
    return text
