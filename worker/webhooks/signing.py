"""Webhook signatures, as payment APIs sign theirs.

`X-RALF-Timestamp: <unix seconds>` and `X-RALF-Signature: v1=<hex HMAC-SHA256 of "<timestamp>." +
body under RALF_WEBHOOK_SECRET>`. A receiver recomputes it over the raw body (`verify_signature`)
and rejects old timestamps (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping

SIGNATURE_HEADER = "X-RALF-Signature"
TIMESTAMP_HEADER = "X-RALF-Timestamp"
DELIVERY_HEADER = "X-RALF-Delivery"
EVENT_HEADER = "X-RALF-Event"
JOB_HEADER = "X-RALF-Job-Id"
SIGNATURE_TOLERANCE_S = 300
_CANONICAL_TIMESTAMP = re.compile(r"0|[1-9][0-9]*", re.ASCII)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: v1=<hex HMAC-SHA256 of '<timestamp>.' + body>."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify_signature(
    secret: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """What a receiver does: the signature matches the raw body and the timestamp is recent."""
    lowered = {k.lower(): v for k, v in headers.items()}
    timestamp, signature = lowered.get(TIMESTAMP_HEADER.lower()), lowered.get(SIGNATURE_HEADER.lower())
    # Only the form `sign` writes: ASCII digits without a leading zero (str.isdigit takes '²' and other
    # scripts' digits, and int() reads '0123' as the timestamp of '123', signed over other bytes).
    if not timestamp or not signature or not _CANONICAL_TIMESTAMP.fullmatch(timestamp):
        return False
    if abs((now if now is not None else time.time()) - int(timestamp)) > tolerance_s:
        return False
    expected = sign(secret, int(timestamp), body)
    return any(hmac.compare_digest(expected, part.strip()) for part in signature.split(","))
