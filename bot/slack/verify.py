"""Slack request signatures (v0, HMAC-SHA256, 300 s window), with the reason for every refusal."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping

MAX_AGE_SECONDS = 300
_UNIX_TIME = re.compile(r"[0-9]{1,12}")  # ASCII digits only: str.isdigit() also takes "²" and "٣"


class VerificationFailed(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # missing_headers | malformed_timestamp | stale_timestamp | bad_signature
        self.detail = detail


def compute_signature(secret: str, timestamp: str, body: bytes) -> str:
    base = b"v0:" + timestamp.encode("ascii") + b":" + body
    return "v0=" + hmac.new(secret.encode("utf-8"), base, hashlib.sha256).hexdigest()


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None) -> None:
    """Raise `VerificationFailed` unless `body` carries a fresh, valid Slack signature."""
    timestamp = headers.get("x-slack-request-timestamp")
    signature = headers.get("x-slack-signature")
    if not timestamp or not signature:
        raise VerificationFailed("missing_headers", "X-Slack-Request-Timestamp or X-Slack-Signature missing")
    if not _UNIX_TIME.fullmatch(timestamp):
        raise VerificationFailed("malformed_timestamp", "X-Slack-Request-Timestamp is not a Unix time "
                                 "(1 to 12 ASCII digits)")
    age = abs((now if now is not None else time.time()) - int(timestamp))
    if age > MAX_AGE_SECONDS:
        raise VerificationFailed("stale_timestamp",
                                 f"timestamp is {int(age)} s away from now (limit {MAX_AGE_SECONDS} s)")
    expected = compute_signature(secret, timestamp, body)
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8", "replace")):
        raise VerificationFailed("bad_signature", "signature does not match the body (wrong secret or tampered body)")
